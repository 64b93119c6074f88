"""Shard placement (docs/FORMAT.md section 6) and the per-batch split into shard slices.

A user's shard is ``twml.sharding.shard_of_keys`` (fmix64 of the key), or the value of a
partition-id column.
A batch is split the way the ``Partition`` layer splits (``tf.dynamic_partition``): every
shard's slice keeps the rows in their batch order. Shard ids leave this module as Python ints
because they become GroupByKey keys downstream (numpy ints have been mis-encoded as keys).
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

import apache_beam as beam
import numpy as np

from transforms.elements import EmbeddedBatch
from twml.sharding import fmix64, shard_of_keys
from transforms.specs import PartitionSpec

__all__ = ["fmix64", "shard_of_keys", "split_by_shard", "PartitionBatches"]  # fmix64 and shard_of_keys re-exported from twml.sharding

def split_by_shard(shards: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """[(shard, row indices)] for every shard present, ascending; indices keep batch order.

    This is ``tf.dynamic_partition(range(B), shards)`` without the empty partitions.
    """
    shards = np.asarray(shards, dtype=np.int64)
    order = np.argsort(shards, kind="stable")
    present, starts = np.unique(shards[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    return [(int(s), order[a:b]) for s, a, b in zip(present, starts, bounds)]


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(Tuple[int, EmbeddedBatch])
class _PartitionFn(beam.DoFn):
    def __init__(self, spec: PartitionSpec):
        self._spec = spec

    def process(self, batch: EmbeddedBatch) -> Iterable[Tuple[int, EmbeddedBatch]]:
        if self._spec.column is None:
            shards = shard_of_keys(batch.keys, self._spec.num_shards)
        else:
            shards = batch.partition_ids
            if shards is None:
                raise ValueError(f"partition column {self._spec.column!r} did not reach the partition step")
        for shard, rows in split_by_shard(shards):
            yield shard, batch.take(rows)


class PartitionBatches(beam.PTransform):
    """EmbeddedBatch -> (shard, the batch's rows of that shard), one pair per shard present.

    Args:
      spec: the shard count and, optionally, the partition-id column.
    """

    def __init__(self, spec: PartitionSpec):
        super().__init__()
        self._spec = spec

    def expand(self, batches):
        return batches | "SplitByShard" >> beam.ParDo(_PartitionFn(self._spec))
