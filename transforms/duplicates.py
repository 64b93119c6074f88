"""Count user keys that the export writes more than once (they are exported as they come).

A duplicate key is not an error the job can resolve (which row is right?), but the manifest must
say how many there are. Every batch's keys are split into buckets by ``fmix64(key) % buckets``
(the shard hash, so all copies of a key meet in one bucket whatever the shard placement); one
step per bucket counts them in one sort. Only the keys cross the shuffle, 8 bytes a row, and a
bucket holds about ``KEYS_PER_BUCKET`` keys in memory. (A runner that keeps its shuffle in memory,
as Beam's local FnApiRunner does, holds every key until the count: 8 bytes a row, twice that
while it hands the buckets on.) String keys are bucketed by their
int64 ids and their strings travel along: a key is its string, and an id shared by different
strings (a hash collision) is reported for the manifest.
"""
from __future__ import annotations

import collections
import math
from typing import Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from transforms.elements import EmbeddedBatch
from transforms.partition import split_by_shard
from twml.sharding import shard_of_keys

__all__ = ["CountDuplicateKeys", "duplicate_counts", "bucket_count", "KEYS_PER_BUCKET", "Collision",
           "DuplicateCounts"]

KEYS_PER_BUCKET = 1 << 20
"""About 8 MiB of keys a bucket (with 4M-key buckets a 10^7-row export's peak RSS grew by 32%)."""


def bucket_count(total_rows: Optional[int]) -> int:
    """Buckets for about KEYS_PER_BUCKET keys each (16 when the row count is not known)."""
    if total_rows is None:
        return 16
    return max(1, math.ceil(total_rows / KEYS_PER_BUCKET))


Collision = Tuple[int, Tuple[str, ...]]
"""A string-key id shared by different keys: (key id, the keys, sorted)."""
DuplicateCounts = Tuple[int, int, Tuple[Collision, ...]]
"""(keys that occur more than once, rows beyond the first of each key, key-id collisions)."""


def duplicate_counts(keys: np.ndarray, strings: Optional[np.ndarray] = None) -> DuplicateCounts:
    """(keys that occur more than once, rows beyond the first of each key, collisions).

    With ``strings`` (string keys: ``keys`` are their int64 ids) a key is its string: rows with
    one id but different strings are different users whose ids collide (a 64-bit hash
    collision), listed in ``collisions`` (docs/FORMAT.md section 5), not counted as duplicates.
    """
    if len(keys) == 0:
        return 0, 0, ()
    keys = np.asarray(keys, dtype=np.int64)
    if strings is None:  # one sorted copy, no inverse and counts arrays of the keys' length
        ordered = np.sort(keys)
        same = ordered[1:] == ordered[:-1]  # a row whose key the row before it has: an extra copy
        if not same.any():
            return 0, 0, ()
        starts = same & ~np.concatenate(([False], same[:-1]))  # the first extra copy of each key
        return int(starts.sum()), int(same.sum()), ()
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    repeated = counts[counts > 1]
    if strings is None or not len(repeated):
        return int(len(repeated)), int((repeated - 1).sum()), ()
    # Only the rows of repeated ids (few) are looked at by string.
    duplicated = rows = 0
    collisions: List[Collision] = []
    inverse = inverse.reshape(-1)
    for group in np.flatnonzero(counts > 1).tolist():
        per_key = collections.Counter(strings[inverse == group].tolist())
        duplicated += sum(1 for n in per_key.values() if n > 1)
        rows += sum(n - 1 for n in per_key.values())
        if len(per_key) > 1:
            collisions.append((int(unique[group]), tuple(sorted(k.decode("utf-8") for k in per_key))))
    return duplicated, rows, tuple(collisions)


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]])
class _KeysByBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, batch: EmbeddedBatch) -> Iterable[Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]]]:
        keys = np.asarray(batch.keys, dtype=np.int64)
        strings = batch.key_strings
        if self._buckets == 1:  # every key in bucket 0 (inputs up to KEYS_PER_BUCKET rows): no hash, no sort
            yield 0, (keys, strings)
            return
        for bucket, rows in split_by_shard(shard_of_keys(keys, self._buckets)):
            yield bucket, (keys[rows], None if strings is None else strings[rows])


def _count_bucket(item: Tuple[int, Iterable[Tuple[np.ndarray, Optional[np.ndarray]]]]) -> DuplicateCounts:
    _, pairs = item
    pairs = list(pairs)
    if not pairs:
        return 0, 0, ()
    keys = np.concatenate([k for k, _ in pairs])
    strings = None if any(s is None for _, s in pairs) else np.concatenate([s for _, s in pairs])
    return duplicate_counts(keys, strings)


class CountDuplicateKeys(beam.PTransform):
    """EmbeddedBatch -> one (duplicated keys, extra rows, key-id collisions) per key bucket that holds keys.

    Args:
      buckets: key buckets (``bucket_count(total rows)``).
    """

    def __init__(self, buckets: int):
        super().__init__()
        self._buckets = buckets

    def expand(self, batches):
        return (batches
                | "KeysByBucket" >> beam.ParDo(_KeysByBucketFn(self._buckets))
                | "GroupKeys" >> beam.GroupByKey()
                | "CountBucket" >> beam.Map(_count_bucket).with_output_types(Tuple[int, int, Tuple]))
