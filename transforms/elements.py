"""The element types that flow between the export's transforms.

Data moves as batches (numpy arrays, Arrow tables), never one element per user; what crosses a
GroupByKey is only small metadata about files already written (PartInfo, ShardResult).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

__all__ = ["EmbeddedBatch", "PartInfo", "ShardResult", "RejectedPart"]


@dataclass
class EmbeddedBatch:
    """B users and what the model computed for them.

    Args:
      keys: int64 [B] user keys.
      outputs: one array per configured output, in config order, each with dim 0 = B;
        outputs[0] is the float32 [B, D] embedding.
      partition_ids: int64 [B] shard ids from the partition-id column, or None (hash placement).
    """
    keys: np.ndarray
    outputs: List[np.ndarray]
    partition_ids: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def embedding(self) -> np.ndarray:
        return self.outputs[0]

    def take(self, rows: np.ndarray) -> "EmbeddedBatch":
        """The users at ``rows`` (in that order) as a new batch."""
        return EmbeddedBatch(
            keys=self.keys[rows],
            outputs=[out[rows] for out in self.outputs],
            partition_ids=None if self.partition_ids is None else self.partition_ids[rows])


@dataclass(frozen=True)
class PartInfo:
    """A temporary part file that holds some of one shard's records, complete and closed.

    Args:
      path: where it is (under ``<output>/_temporary/<run_id>/parts/``).
      records: records in it.
      bytes: its size in bytes.
      crc32c: crc32c of its bytes; parts are concatenated in (crc32c, records, bytes) order so
        the shard's bytes do not depend on the order the runner delivers the parts in.
    """
    path: str
    records: int
    bytes: int
    crc32c: int

    @property
    def order_key(self):
        return (self.crc32c, self.records, self.bytes, self.path)


@dataclass(frozen=True)
class ShardResult:
    """A shard file written in full under a temporary name, waiting for finalize to publish it.

    Args:
      shard: the shard number.
      temp_path: the complete file under ``_temporary/<run_id>/``.
      final_name: its name in the output directory (``part-SSSSS-of-NNNNN.<ext>``).
      records / bytes / crc32c: what it holds (bytes and crc32c of the file as stored).
      parts: how many part files it was assembled from.
    """
    shard: int
    temp_path: str
    final_name: str
    records: int
    bytes: int
    crc32c: int
    parts: int = 0


@dataclass(frozen=True)
class RejectedPart:
    """A temporary Parquet file of rejected rows (input columns + ``reason`` + ``source_file``).

    Args:
      path: where it is (under ``_temporary/<run_id>/rejected/``).
      records: rows in it.
      bytes / crc32c: size and crc32c of the file.
      reasons: rows per reason.
    """
    path: str
    records: int
    bytes: int
    crc32c: int
    reasons: Dict[str, int] = field(default_factory=dict)
