"""The element types that flow between the export's transforms, and the coders of the big ones.

Data moves as batches (numpy arrays, Arrow tables), never one element per user; what crosses a
GroupByKey is only small metadata about files already written (PartInfo, ShardResult).

Batches get coders of their own (registered for ``pa.Table``, ``EmbeddedBatch`` and
``ShardedBatch`` on import), not Beam's pickling fallback: Beam samples the encoded size of
elements passed between fused steps (always the first 10, then about 10 ln 2 per doubling), and
with few, megabyte-sized elements the fallback pickled a large share of all batches just to
measure them (1.5 s of a 17 s run). The coders here estimate sizes from buffer lengths, and where
a runner does move a batch between processes they write Arrow IPC (tables) or pickle protocol 5
(numpy arrays).

Every step declares the types of all its outputs, tagged ones (rejected rows, row counts,
unreadable row groups) included: a PCollection typed Any would get the pickling fallback on
every runner. ``tests/test_element_types.py`` walks the export's graph for Any. The
``process`` annotations do not count: with ``from __future__ import annotations`` Beam reads
them as strings and takes them for Any, so the types are given with Beam's decorators.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

__all__ = ["EmbeddedBatch", "ShardedBatch", "PartInfo", "ShardResult", "RejectedPart", "UnreadableRowGroup",
           "ArrowTableCoder", "EmbeddedBatchCoder", "ShardedBatchCoder"]


@dataclass
class EmbeddedBatch:
    """B users and what the model computed for them.

    Args:
      keys: int64 [B] user keys.
      outputs: one array per configured output, in config order, each with dim 0 = B;
        outputs[0] is the float32 [B, D] embedding.
      partition_ids: int64 [B] shard ids from the partition-id column, or None (hash placement).
      key_strings: string keys only: object [B] of the keys' UTF-8 bytes (``keys`` then holds
        their int64 ids, ``twml.feature_ids.string_key_ids``); None for integer keys.
    """
    keys: np.ndarray
    outputs: List[np.ndarray]
    partition_ids: Optional[np.ndarray] = None
    key_strings: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def embedding(self) -> np.ndarray:
        return self.outputs[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the batch's arrays (string keys: their bytes plus a pointer each)."""
        ids = self.partition_ids
        strings = 0 if self.key_strings is None else sum(map(len, self.key_strings)) + 8 * len(self.key_strings)
        return int(self.keys.nbytes + sum(out.nbytes for out in self.outputs) + (0 if ids is None else ids.nbytes)
                   + strings)

    def take(self, rows: np.ndarray) -> "EmbeddedBatch":
        """The users at ``rows`` (in that order) as a new batch."""
        return EmbeddedBatch(
            keys=np.take(self.keys, rows),
            outputs=[np.take(out, rows, axis=0) for out in self.outputs],
            partition_ids=None if self.partition_ids is None else np.take(self.partition_ids, rows),
            key_strings=None if self.key_strings is None else np.take(self.key_strings, rows))

    def rows(self, start: int, end: int) -> "EmbeddedBatch":
        """The users ``start`` to ``end`` (exclusive) as a batch of views, no copy."""
        return EmbeddedBatch(
            keys=self.keys[start:end],
            outputs=[out[start:end] for out in self.outputs],
            partition_ids=None if self.partition_ids is None else self.partition_ids[start:end],
            key_strings=None if self.key_strings is None else self.key_strings[start:end])

    @staticmethod
    def concat(batches: Sequence["EmbeddedBatch"]) -> "EmbeddedBatch":
        """The batches' users one after the other (the batch itself when there is one)."""
        if len(batches) == 1:
            return batches[0]
        ids = [b.partition_ids for b in batches]
        strings = [b.key_strings for b in batches]
        return EmbeddedBatch(
            keys=np.concatenate([b.keys for b in batches]),
            outputs=[np.concatenate(outs) for outs in zip(*(b.outputs for b in batches))],
            partition_ids=None if any(i is None for i in ids) else np.concatenate(ids),
            key_strings=None if any(s is None for s in strings) else np.concatenate(strings))


@dataclass
class ShardedBatch:
    """A batch with its users in shard order, and where each shard's users are.

    Args:
      batch: the users shard by shard, each shard's in the order they had in the model's batch.
      ranges: (shard, start, end) for every shard present, ascending: that shard's users are
        ``batch.rows(start, end)``.
    """
    batch: EmbeddedBatch
    ranges: List[Tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def nbytes(self) -> int:
        return self.batch.nbytes

    def slices(self) -> Iterator[Tuple[int, EmbeddedBatch]]:
        """(shard, that shard's users as a batch of views) for every shard present, ascending."""
        for shard, start, end in self.ranges:
            yield shard, self.batch.rows(start, end)


@dataclass(frozen=True)
class PartInfo:
    """A temporary part file that holds some of one shard's records, complete and closed.

    Args:
      path: where it is (under ``<output>/_temporary/<run_id>/parts/``).
      records: records in it.
      bytes: its size in bytes.
      crc32c: crc32c of its bytes; parts are concatenated in (crc32c, records, bytes) order so
        the shard's bytes do not depend on the order the runner delivers the parts in.
      keys_path: the log of its keys (``transforms.duplicates.KeyLog``), or None when the
        writer does not count duplicates per shard.
    """
    path: str
    records: int
    bytes: int
    crc32c: int
    keys_path: Optional[str] = None

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
      duplicates: (keys written more than once, rows beyond each key's first, key-id collisions)
        among its records, when duplicates are counted per shard; else None.
    """
    shard: int
    temp_path: str
    final_name: str
    records: int
    bytes: int
    crc32c: int
    parts: int = 0
    duplicates: Optional[Tuple[int, int, Tuple]] = None


@dataclass(frozen=True)
class RejectedPart:
    """A temporary Parquet file of rejected rows (input columns, ``reason``, ``source_file``,
    ``source_row``, ``error``).

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


@dataclass(frozen=True)
class UnreadableRowGroup:
    """A row group skipped by ``on_bad_file: skip``: where, how many rows, and the error."""
    path: str
    row_group: int
    rows: int
    error: str


class ArrowTableCoder(beam.coders.Coder):
    """``pa.Table`` as an Arrow IPC stream; the size estimate is the table's buffer bytes."""

    def encode(self, table: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> pa.Table:
        return pa.ipc.open_stream(pa.py_buffer(encoded)).read_all()

    def estimate_size(self, table: pa.Table) -> int:
        return int(table.nbytes)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pa.Table

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class _PickledBatchCoder(beam.coders.Coder):
    """A batch pickled with protocol 5 (numpy arrays as raw buffers); the size estimate is its
    ``nbytes``. Subclasses name the type."""

    batch_type: type = object

    def encode(self, batch) -> bytes:
        return pickle.dumps(batch, protocol=5)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def estimate_size(self, batch) -> int:
        return batch.nbytes

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return self.batch_type

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class EmbeddedBatchCoder(_PickledBatchCoder):
    """``EmbeddedBatch`` pickled with protocol 5; the size estimate is the arrays' bytes."""
    batch_type = EmbeddedBatch


class ShardedBatchCoder(_PickledBatchCoder):
    """``ShardedBatch`` pickled with protocol 5; the size estimate is the arrays' bytes."""
    batch_type = ShardedBatch


beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)
beam.coders.registry.register_coder(EmbeddedBatch, EmbeddedBatchCoder)
beam.coders.registry.register_coder(ShardedBatch, ShardedBatchCoder)
