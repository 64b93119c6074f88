"""Count user keys that the export writes more than once (they are exported as they come).

A duplicate key is not an error the job can resolve (which row is right?), but the manifest must
say how many there are. Every batch's keys are split into buckets by ``fmix64(key) % buckets``
(the shard hash, so all copies of a key meet in one bucket whatever the shard placement); one
step per bucket counts with ``numpy.unique``. Only the keys cross the shuffle, 8 bytes a row,
and a bucket holds about ``KEYS_PER_BUCKET`` keys in memory. String keys count by their int64
ids, and their strings travel along so that an id shared by two different strings (a hash
collision) stops the export.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import apache_beam as beam
import numpy as np

from transforms.elements import EmbeddedBatch
from transforms.finalize import ExportError
from transforms.partition import split_by_shard
from twml.sharding import shard_of_keys

__all__ = ["CountDuplicateKeys", "duplicate_counts", "bucket_count", "KEYS_PER_BUCKET"]

KEYS_PER_BUCKET = 1 << 22


def bucket_count(total_rows: Optional[int]) -> int:
    """Buckets for about KEYS_PER_BUCKET keys each (16 when the row count is not known)."""
    if total_rows is None:
        return 16
    return max(1, math.ceil(total_rows / KEYS_PER_BUCKET))


def duplicate_counts(keys: np.ndarray, strings: Optional[np.ndarray] = None) -> Tuple[int, int]:
    """(keys that occur more than once, rows beyond the first of each key).

    With ``strings`` (string keys: ``keys`` are their int64 ids), an id shared by two different
    strings is a hash collision: two users would be exported under one id, so the export is
    refused (ExportError naming both keys) rather than published (docs/FORMAT_string_keys.md).
    """
    if len(keys) == 0:
        return 0, 0
    keys = np.asarray(keys, dtype=np.int64)
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    repeated = counts[counts > 1]
    if strings is not None and len(repeated):
        _check_collisions(unique, inverse, counts, strings)
    return int(len(repeated)), int((repeated - 1).sum())


def _check_collisions(unique: np.ndarray, inverse: np.ndarray, counts: np.ndarray, strings: np.ndarray) -> None:
    """ExportError when an id that occurs more than once belongs to two different strings."""
    for group in np.flatnonzero(counts > 1):
        rows = np.flatnonzero(inverse.reshape(-1) == group)
        distinct = sorted(set(strings[rows].tolist()))
        if len(distinct) > 1:
            shown = " and ".join(repr(s.decode("utf-8", "replace")) for s in distinct[:2])
            raise ExportError(f"string keys {shown} have the same key id {int(unique[group])} (a 64-bit "
                              "hash collision): they cannot be told apart by id, so nothing is published; "
                              "rename or drop one of them in the input")


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]])
class _KeysByBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, batch: EmbeddedBatch) -> Iterable[Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]]]:
        keys = np.asarray(batch.keys, dtype=np.int64)
        strings = batch.key_strings
        for bucket, rows in split_by_shard(shard_of_keys(keys, self._buckets)):
            yield bucket, (keys[rows], None if strings is None else strings[rows])


def _count_bucket(item: Tuple[int, Iterable[Tuple[np.ndarray, Optional[np.ndarray]]]]) -> Tuple[int, int]:
    _, pairs = item
    pairs = list(pairs)
    if not pairs:
        return 0, 0
    keys = np.concatenate([k for k, _ in pairs])
    strings = None if any(s is None for _, s in pairs) else np.concatenate([s for _, s in pairs])
    return duplicate_counts(keys, strings)


class CountDuplicateKeys(beam.PTransform):
    """EmbeddedBatch -> one (duplicated keys, extra rows) pair per key bucket that holds keys.

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
                | "CountBucket" >> beam.Map(_count_bucket).with_output_types(Tuple[int, int]))
