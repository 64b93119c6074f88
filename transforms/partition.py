"""Shard placement (docs/FORMAT.md section 6) and the per-batch ordering of users by shard.

A user's shard is ``twml.sharding.shard_of_keys`` (fmix64 of the key), or the value of a
partition-id column.
A batch is split the way the ``Partition`` layer splits (``tf.dynamic_partition``): every
shard's slice keeps the rows in their batch order. The step hands the writer the whole batch in
shard order with each shard's range (a ``ShardedBatch``), not an element per shard, so that the
writer can encode a batch in one call and write each shard's bytes straight from that buffer.
Shard ids leave this module as Python ints because they become GroupByKey keys downstream (numpy
ints have been mis-encoded as keys).
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

import apache_beam as beam
import numpy as np

from transforms.elements import EmbeddedBatch, ShardedBatch
from twml.sharding import fmix64, shard_of_keys
from transforms.specs import PartitionSpec

__all__ = ["fmix64", "shard_of_keys", "shard_ranges", "split_by_shard", "PartitionBatches"]  # fmix64 and shard_of_keys re-exported from twml.sharding


def shard_ranges(shards: np.ndarray) -> Tuple[np.ndarray, List[Tuple[int, int, int]]]:
    """(order, [(shard, start, end)]): ``order`` lists the rows shard by shard, each shard's rows
    in batch order, and shard s's rows are ``order[start:end]``; every shard present, ascending.

    ``shards`` are ids >= 0. A counting sort: a stable sort of small ints (NumPy sorts 16-bit ints
    by radix) and a count per shard, where a general sort plus ``np.unique`` cost 3x as much.
    """
    shards = np.asarray(shards, dtype=np.int64)
    if not len(shards):
        return np.zeros(0, dtype=np.intp), []
    counts = np.bincount(shards)
    small = shards.astype(np.int16) if len(counts) <= np.iinfo(np.int16).max else shards
    order = np.argsort(small, kind="stable")
    ends = np.cumsum(counts)
    return order, [(int(s), int(ends[s] - counts[s]), int(ends[s])) for s in np.flatnonzero(counts)]


def split_by_shard(shards: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """[(shard, row indices)] for every shard present, ascending; indices keep batch order.

    This is ``tf.dynamic_partition(range(B), shards)`` without the empty partitions.
    """
    order, ranges = shard_ranges(shards)
    return [(shard, order[start:end]) for shard, start, end in ranges]


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(ShardedBatch)
class _PartitionFn(beam.DoFn):
    def __init__(self, spec: PartitionSpec):
        self._spec = spec

    def process(self, batch: EmbeddedBatch) -> Iterable[ShardedBatch]:
        if self._spec.column is None:
            shards = shard_of_keys(batch.keys, self._spec.num_shards)
        else:
            shards = batch.partition_ids
            if shards is None:
                raise ValueError(f"partition column {self._spec.column!r} did not reach the partition step")
        # One gather of the batch into shard order: a take per shard cost a call per array per
        # shard for the same bytes.
        order, ranges = shard_ranges(shards)
        yield ShardedBatch(batch.take(order), ranges)


class PartitionBatches(beam.PTransform):
    """EmbeddedBatch -> ShardedBatch: the batch's users in shard order, and each shard's range.

    Args:
      spec: the shard count and, optionally, the partition-id column.
    """

    def __init__(self, spec: PartitionSpec):
        super().__init__()
        self._spec = spec

    def expand(self, batches):
        return batches | "SplitByShard" >> beam.ParDo(_PartitionFn(self._spec))
