"""Feature ids: the int64 that twml and libtwml use in place of a feature's name.

``feature_id(name)`` is the first 64 bits (h1, read little-endian as a signed int64) of
MurmurHash3_x64_128 with seed 0 over the name's UTF-16LE code units. A name whose first '#'
sits at index k > 0 hashes in two stages, as libtwml's ``twml_get_feature_id`` does
(src/lib/functions.cpp): p = h1(UTF16LE(name[:k])), then h1(8-byte little-endian p ++
UTF16LE(name[k+1:])). A '#' at index 0 is an ordinary character.
"""
from __future__ import annotations

import functools
from typing import Iterable, Union

import mmh3
import numpy as np

__all__ = ["feature_id", "feature_ids", "resolve_feature_id", "string_key_ids"]


def _h1(data: bytes) -> int:
    # mmh3.hash64 returns (h1, h2) of MurmurHash3_x64_128; h1 is the first 8 digest bytes.
    return mmh3.hash64(data, 0, True, True)[0]


@functools.lru_cache(maxsize=65536)
def feature_id(name: str) -> int:
    """Return the int64 feature id of ``name`` exactly as libtwml computes it."""
    if not isinstance(name, str):
        raise TypeError(f"feature name must be str, got {type(name).__name__}: {name!r}")
    return _feature_id(name)


def _feature_id(name: str) -> int:
    k = name.find("#")
    if k > 0:
        prefix = _h1(name[:k].encode("utf-16-le"))
        return _h1(prefix.to_bytes(8, "little", signed=True) + name[k + 1:].encode("utf-16-le"))
    return _h1(name.encode("utf-16-le"))


def feature_ids(names: Iterable[str]) -> np.ndarray:
    """Vectorised ``feature_id``: an int64 array, one id per name, in the given order."""
    return np.fromiter((feature_id(n) for n in names), dtype=np.int64)


def resolve_feature_id(key: Union[str, int, np.integer]) -> int:
    """A feature given by name (hashed) or by id (checked to fit int64) -> its int64 id."""
    if isinstance(key, str):
        return feature_id(key)
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"feature key must be a name or an int64 id, got bool {key!r}")
    if isinstance(key, (int, np.integer)):
        value = int(key)
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"feature id {value} does not fit in int64")
        return value
    raise TypeError(f"feature key must be a name or an int64 id, got {type(key).__name__}: {key!r}")


def string_key_ids(keys: Iterable[Union[str, bytes]]) -> np.ndarray:
    """The int64 id of each string user key: ``feature_id(key)``, the function twml uses for
    feature names, so any twml install (``twml_get_feature_id``) derives the same id from the
    string. ``bytes`` keys are UTF-8 (a key that is not raises UnicodeDecodeError). Not cached:
    user keys are mostly seen once."""
    hash64 = mmh3.hash64
    ids = []
    for key in keys:
        text = key.decode("utf-8") if isinstance(key, (bytes, bytearray)) else key
        if "#" in text[1:]:
            ids.append(_feature_id(text))   # the two-stage rule
        else:
            ids.append(hash64(text.encode("utf-16-le"), 0, True, True)[0])
    return np.array(ids, dtype=np.int64)
