"""Shard placement of a user key (docs/FORMAT.md section 6): ``fmix64(uint64(key)) % num_shards``.

Here rather than in the Beam transforms so readers (verify, inspect, a serving loader) can place
keys without importing Beam.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fmix64", "shard_of_keys"]

_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer over a uint64 array (multiplications wrap mod 2^64)."""
    k = np.array(values, dtype=np.uint64, copy=True)
    k ^= k >> _S33
    k *= _C1
    k ^= k >> _S33
    k *= _C2
    k ^= k >> _S33
    return k


def shard_of_keys(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each int64 key: ``fmix64(uint64(key)) % num_shards`` as int64.

    Negative keys are reinterpreted as their two's complement uint64, as a C cast would.
    """
    if num_shards <= 0:
        raise ValueError(f"num_shards must be > 0, got {num_shards}")
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu":
        raise TypeError(f"keys must be integers, got {keys.dtype}")
    unsigned = keys.astype(np.int64, copy=False).view(np.uint64)
    return (fmix64(unsigned) % np.uint64(num_shards)).astype(np.int64)
