"""Count user keys that the export writes more than once (they are exported as they come).

A duplicate key is not an error the job can resolve (which row is right?), but the manifest must
say how many there are. Every batch's keys are split into buckets by ``fmix64(key) % buckets``
(the shard hash, so all copies of a key meet in one bucket whatever the shard placement); one
step per bucket counts with ``numpy.unique``. Only the keys cross the shuffle, 8 bytes a row,
and a bucket holds about ``KEYS_PER_BUCKET`` keys in memory.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import apache_beam as beam
import numpy as np

from transforms.elements import EmbeddedBatch
from transforms.partition import split_by_shard
from twml.sharding import shard_of_keys

__all__ = ["CountDuplicateKeys", "duplicate_counts", "bucket_count", "KEYS_PER_BUCKET"]

KEYS_PER_BUCKET = 1 << 22


def bucket_count(total_rows: Optional[int]) -> int:
    """Buckets for about KEYS_PER_BUCKET keys each (16 when the row count is not known)."""
    if total_rows is None:
        return 16
    return max(1, math.ceil(total_rows / KEYS_PER_BUCKET))


def duplicate_counts(keys: np.ndarray) -> Tuple[int, int]:
    """(keys that occur more than once, rows beyond the first of each key)."""
    if len(keys) == 0:
        return 0, 0
    _, counts = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
    repeated = counts[counts > 1]
    return int(len(repeated)), int((repeated - 1).sum())


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(Tuple[int, np.ndarray])
class _KeysByBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, batch: EmbeddedBatch) -> Iterable[Tuple[int, np.ndarray]]:
        keys = np.asarray(batch.keys, dtype=np.int64)
        if self._buckets == 1:  # every key in bucket 0 (inputs under KEYS_PER_BUCKET rows): no hash, no sort
            yield 0, keys
            return
        for bucket, rows in split_by_shard(shard_of_keys(keys, self._buckets)):
            yield bucket, keys[rows]


def _count_bucket(item: Tuple[int, Iterable[np.ndarray]]) -> Tuple[int, int]:
    _, arrays = item
    arrays = list(arrays)
    return duplicate_counts(np.concatenate(arrays) if arrays else np.zeros(0, np.int64))


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
