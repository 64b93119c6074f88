"""Feature ids against an independent MurmurHash3_x64_128 (pure Python here, and mmh3.hash_bytes)."""
import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twml.feature_ids import feature_id, feature_ids, resolve_feature_id

_M64 = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_x64_128_h1(data: bytes, seed: int = 0) -> int:
    """h1 of MurmurHash3_x64_128 as a signed int64, written from the reference algorithm."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    blocks = len(data) // 16
    for i in range(blocks):
        k1 = int.from_bytes(data[16 * i:16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8:16 * i + 16], "little")
        h1 ^= (_rotl((k1 * c1) & _M64, 31) * c2) & _M64
        h1 = (((_rotl(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        h2 ^= (_rotl((k2 * c2) & _M64, 33) * c1) & _M64
        h2 = (((_rotl(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[16 * blocks:]
    if len(tail) > 8:
        h2 ^= (_rotl((int.from_bytes(tail[8:], "little") * c2) & _M64, 33) * c1) & _M64
    if tail:
        h1 ^= (_rotl((int.from_bytes(tail[:8], "little") * c1) & _M64, 31) * c2) & _M64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M64
    return h1 - (1 << 64) if h1 >> 63 else h1


def mmh3_h1(data: bytes) -> int:
    return int.from_bytes(mmh3.hash_bytes(data, 0)[:8], "little", signed=True)


def expected_feature_id(name: str) -> int:
    """libtwml's rule, computed with the pure-Python hash."""
    k = name.find("#")
    if k > 0:
        prefix = murmur3_x64_128_h1(name[:k].encode("utf-16-le"))
        return murmur3_x64_128_h1(prefix.to_bytes(8, "little", signed=True) + name[k + 1:].encode("utf-16-le"))
    return murmur3_x64_128_h1(name.encode("utf-16-le"))


def test_reference_hash_matches_published_vector():
    # mmh3's documented vector: hash64(b"foo") == (-2129773440516405919, 9128664383759220103).
    assert murmur3_x64_128_h1(b"foo") == -2129773440516405919
    assert murmur3_x64_128_h1(b"") == 0
    for n in range(0, 40):   # every tail length and several block counts
        data = bytes(range(n))
        assert murmur3_x64_128_h1(data) == mmh3_h1(data), n


NAMES = [
    "meta.user_id", "output", "embedding", "", "a",
    "user.embedding#dim",   # two-stage
    "a#b#c",                # only the first '#' splits
    "x#",                   # empty suffix
    "#leading",             # '#' at index 0 is an ordinary character
    "#",
    "naïve.feature", "ユーザー#埋め込み",   # non-ASCII, BMP
    "😀.emoji#🚀",          # non-BMP: surrogate pairs in UTF-16
]


@pytest.mark.parametrize("name", NAMES)
def test_known_answers(name):
    assert feature_id(name) == expected_feature_id(name)


def test_two_stage_rule_spelled_out():
    p = mmh3_h1("user.embedding".encode("utf-16-le"))
    want = mmh3_h1(p.to_bytes(8, "little", signed=True) + "dim".encode("utf-16-le"))
    assert feature_id("user.embedding#dim") == want
    assert feature_id("#leading") == mmh3_h1("#leading".encode("utf-16-le"))
    assert feature_id("user.embedding#dim") != mmh3_h1("user.embedding#dim".encode("utf-16-le"))
    # non-BMP characters are two UTF-16 code units
    assert len("😀".encode("utf-16-le")) == 4


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_random_names(name):
    assert feature_id(name) == expected_feature_id(name)


def test_vectorised_form():
    ids = feature_ids(NAMES)
    assert ids.dtype == np.int64 and ids.shape == (len(NAMES),)
    assert ids.tolist() == [expected_feature_id(n) for n in NAMES]
    assert feature_ids([]).shape == (0,)


def test_resolve_feature_id():
    assert resolve_feature_id("output") == feature_id("output")
    assert resolve_feature_id(np.int64(-5)) == -5
    assert resolve_feature_id((1 << 63) - 1) == (1 << 63) - 1
    with pytest.raises(ValueError, match="does not fit in int64"):
        resolve_feature_id(1 << 63)
    with pytest.raises(TypeError, match="bool"):
        resolve_feature_id(True)
    with pytest.raises(TypeError):
        resolve_feature_id(1.5)
    with pytest.raises(TypeError):
        feature_id(b"bytes")
