"""Write the shard files and the rejected rows, invisible until finalize publishes them.

``WriteShards``: each bundle writes one temporary part file per shard it gets records for
(``_temporary/<run_id>/parts/``). Batches arrive in shard order (``ShardedBatch``); the format
says what each shard's part gets (``ShardFormat.pieces``). A TFRecord batch is framed in one
encoder call, and a shard's frames of at least ``WRITE_THROUGH_BYTES`` go straight from that
buffer to the shard's part file, without a copy, when that file is open or can be opened
within ``max_open_parts``. Smaller pieces, and the users of formats that encode in their part
writers (collecting a shard's slices and encoding a few thousand rows at a time), are held in
memory (the format's ``PartWriter`` and a ``PartSink`` per shard); when this bundle's bytes in
memory pass ``buffer_bytes`` the largest shard's are appended to its part file. A part file is
opened on first use and kept open until the bundle ends, so a bundle makes one part per shard,
not one per spill. At most ``max_open_parts`` part files are open at once (object-store writers
hold an upload buffer each): past that, the least recently written one is closed as a complete
part, and that shard starts a new part if more of its records come. With ``count_duplicates``
each part's keys go to a key log beside it (``transforms.duplicates.KeyLog``), and the step that
assembles a shard counts its duplicate keys from its parts' logs. Each completed part emits small
``(shard, PartInfo)`` metadata. Only that metadata goes through a GroupByKey on the shard id (a
Python int), together with one marker per shard so that every shard appears, even an empty one.
One step per shard then assembles its parts, in crc32c order, into a complete shard file under
``_temporary/<run_id>/shards/`` (a single part of a concatenating format already is the shard
file, and is not copied) and emits a ``ShardResult``. A bundle that fails and is retried
leaves orphan parts that no metadata names; finalize removes them with the temporary directory.
A worker's memory is bounded by one batch plus ``buffer_bytes`` plus the open files' buffers,
whatever the number of rows or shards.

``WriteRejected``: one Parquet file of rejected rows per bundle, under ``_temporary/<run_id>/rejected/``
(the rows arrive complete: ``transforms.rejected_columns`` restores the input columns not read).
"""
from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import BinaryIO, Dict, Iterable, Iterator, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.duplicates import KEY_LOG_SUFFIX, KeyLog, count_logged_keys
from transforms.elements import EmbeddedBatch, PartInfo, RejectedPart, ShardedBatch, ShardResult
from transforms.formats import ChecksummedWriter, PartSink, ShardFormat, open_write
from transforms.outputdir import TEMP_DIR
from transforms.rejected import reason_counts
from transforms.specs import OutputLayout
from transforms.validate import METRICS_NAMESPACE, conform

__all__ = ["WriteShards", "WriteRejected", "temp_dir", "DEFAULT_BUFFER_BYTES", "DEFAULT_MAX_OPEN_PARTS",
           "WRITE_THROUGH_BYTES"]

DEFAULT_BUFFER_BYTES = 32 << 20
DEFAULT_MAX_OPEN_PARTS = 64
# A shard's framed piece of a batch this big is already a good write: it goes to the part file
# at once, from the encoder's buffer, rather than being copied and held for a larger one.
WRITE_THROUGH_BYTES = 64 << 10


def temp_dir(layout: OutputLayout, *sub: str) -> str:
    """``<output>/_temporary/<run_id>[/sub...]``: this run's scratch space."""
    return FileSystems.join(layout.path, TEMP_DIR, layout.run_id, *sub)


class _OpenPart:
    """One part file of one shard that a bundle is writing: framed records held in memory until
    ``flush`` appends them to the file (created on the first flush).

    Args:
      fmt: the output format.
      path: where the part file goes.
    """

    def __init__(self, fmt: ShardFormat, path: str, log_keys: bool = False):
        self.path = path
        self._sink = PartSink()  # also counts the part's bytes and crc32c
        self.writer = fmt.open_part(self._sink)
        self._file: Optional[BinaryIO] = None
        self._keys = KeyLog(path + KEY_LOG_SUFFIX) if log_keys else None

    def write(self, batch: EmbeddedBatch, framed: Optional[np.ndarray] = None, keep: bool = False) -> None:
        """Append ``batch``'s records (``PartWriter.write``) and log their keys."""
        self.writer.write(batch, framed, keep)
        if self._keys is not None:
            self._keys.add(batch)

    @property
    def held(self) -> int:
        """Bytes in memory, not yet in the file: framed, and collected for encoding."""
        return self._sink.size + self.writer.pending_bytes

    @property
    def file_open(self) -> bool:
        return self._file is not None

    def flush(self) -> None:
        self.writer.flush()
        if self._sink.size:
            if self._file is None:
                self._file = open_write(self.path)
            self._sink.drain_to(self._file)

    def close(self) -> PartInfo:
        """Finish the framing, write what is left and close the file (and the key log): the part
        is complete."""
        self.writer.close()
        if self._file is None:
            self._file = open_write(self.path)
        try:
            self._sink.drain_to(self._file)
        finally:
            self._file.close()
        keys_path = self._keys.close() if self._keys is not None else None
        return PartInfo(self.path, int(self.writer.records), self._sink.tell(), self._sink.crc32c, keys_path)


@beam.typehints.with_input_types(ShardedBatch)
@beam.typehints.with_output_types(Tuple[int, PartInfo])
class _WritePartsFn(beam.DoFn):
    def __init__(self, fmt: ShardFormat, buffer_bytes: int, max_open_parts: int, log_keys: bool = False):
        self._fmt = fmt
        self._log_keys = log_keys
        self._budget = buffer_bytes
        self._max_open = max_open_parts
        self._parts_dir = temp_dir(fmt.layout, "parts")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "rows_written")
        self._part_files = Metrics.counter(METRICS_NAMESPACE, "part_files")
        self._parts: "OrderedDict[int, _OpenPart]" = OrderedDict()  # least recently written first
        self._held = 0
        self._open_files = 0

    def start_bundle(self):
        self._parts = OrderedDict()
        self._held = 0
        self._open_files = 0

    def _flush(self, part: _OpenPart) -> None:
        self._held -= part.held
        if not part.file_open:
            self._open_files += 1
        part.flush()

    def _close(self, shard: int) -> Tuple[int, PartInfo]:
        part = self._parts.pop(shard)
        self._held -= part.held
        if part.file_open:
            self._open_files -= 1
        self._part_files.inc()
        return shard, part.close()

    def _part(self, shard: int) -> _OpenPart:
        part = self._parts.get(shard)
        if part is None:
            path = FileSystems.join(self._parts_dir, f"s{shard:05d}-{uuid.uuid4().hex}.part")
            part = self._parts[shard] = _OpenPart(self._fmt, path, self._log_keys)
        else:
            self._parts.move_to_end(shard)
        return part

    def process(self, sharded: ShardedBatch) -> Iterator[Tuple[int, PartInfo]]:
        for shard, batch, framed in self._fmt.pieces(sharded):
            part = self._part(int(shard))
            through = (framed is not None and framed.nbytes >= WRITE_THROUGH_BYTES
                       and (part.file_open or self._open_files < self._max_open))
            before = part.held
            part.write(batch, framed, keep=through)
            self._held += part.held - before
            if through:
                self._flush(part)
            # Bounded memory whatever the shard count: past the budget, the shard holding the
            # most bytes appends them to its part file.
            while self._held > self._budget:
                self._flush(max(self._parts.values(), key=lambda p: p.held))
            # Bounded open files: the least recently written part with an open file is completed.
            while self._open_files > self._max_open:
                yield self._close(next(s for s, p in self._parts.items() if p.file_open))
        self._rows.inc(len(sharded))

    def finish_bundle(self):
        for shard in sorted(self._parts):
            yield GlobalWindows.windowed_value(self._close(shard))
        self._held = 0


@beam.typehints.with_input_types(Tuple[int, Iterable[Optional[PartInfo]]])
@beam.typehints.with_output_types(ShardResult)
class _AssembleShardFn(beam.DoFn):
    def __init__(self, fmt: ShardFormat, count_duplicates: bool = False):
        self._fmt = fmt
        self._count_duplicates = count_duplicates
        self._shards_dir = temp_dir(fmt.layout, "shards")

    def process(self, element: Tuple[int, Iterable[Optional[PartInfo]]]) -> Iterable[ShardResult]:
        shard, infos = element
        shard = int(shard)
        parts = sorted((info for info in infos if info is not None), key=lambda info: info.order_key)
        final_name = self._fmt.final_name(shard)
        records = sum(info.records for info in parts)
        duplicates = None
        if self._count_duplicates:  # every copy of this shard's keys is in its parts
            duplicates = count_logged_keys([info.keys_path for info in parts if info.keys_path])
        if len(parts) == 1 and self._fmt.parts_concatenate():
            # The part already is the shard file: finalize renames it, no copy.
            only = parts[0]
            yield ShardResult(shard, only.path, final_name, records, only.bytes, only.crc32c, 1, duplicates)
            return
        # A unique name per attempt: a retried or speculative attempt never writes over another.
        path = FileSystems.join(self._shards_dir, f"{final_name}.{uuid.uuid4().hex}")
        out = ChecksummedWriter(open_write(path))
        try:
            self._fmt.assemble([info.path for info in parts], out)
        finally:
            out.close()
        yield ShardResult(shard, path, final_name, records, out.bytes, out.crc32c, len(parts), duplicates)


class WriteShards(beam.PTransform):
    """ShardedBatch -> one ShardResult per shard 0..N-1: complete temporary shard files.

    Args:
      fmt: the output format (it holds the layout: directory, run id, shard count).
      buffer_bytes: framed bytes a bundle holds in memory, over all shards, before it appends
        the largest shard's bytes to that shard's part file.
      max_open_parts: part files a bundle keeps open at once; past that the least recently
        written is completed (1 makes every switch between shards start a new part).
      count_duplicates: count the keys written more than once, per shard, into each
        ``ShardResult.duplicates`` (exact only when every copy of a key goes to one shard: hash
        placement; ``transforms.duplicates``).
    """

    def __init__(self, fmt: ShardFormat, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 max_open_parts: int = DEFAULT_MAX_OPEN_PARTS, count_duplicates: bool = False):
        super().__init__()
        if max_open_parts < 1:
            raise ValueError(f"max_open_parts must be >= 1, got {max_open_parts}")
        self._fmt = fmt
        self._buffer_bytes = buffer_bytes
        self._max_open_parts = max_open_parts
        self._count_duplicates = count_duplicates

    def expand(self, batches):
        num_shards = self._fmt.layout.num_shards
        parts = batches | "WriteParts" >> beam.ParDo(
            _WritePartsFn(self._fmt, self._buffer_bytes, self._max_open_parts, self._count_duplicates))
        every_shard = (batches.pipeline
                       | "EveryShard" >> beam.Create([(s, None) for s in range(num_shards)])
                       .with_output_types(Tuple[int, Optional[PartInfo]]))
        return ((parts, every_shard)
                | "PartsAndMarkers" >> beam.Flatten().with_output_types(Tuple[int, Optional[PartInfo]])
                | "GroupPartsByShard" >> beam.GroupByKey()
                | "AssembleShards" >> beam.ParDo(_AssembleShardFn(self._fmt, self._count_duplicates)))


@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(RejectedPart)
class _WriteRejectedFn(beam.DoFn):
    def __init__(self, layout: OutputLayout, schema: pa.Schema):
        self._layout = layout
        self._schema = schema
        self._dir = temp_dir(layout, "rejected")
        self._path: Optional[str] = None
        self._handle: Optional[ChecksummedWriter] = None
        self._writer: Optional[pq.ParquetWriter] = None
        self._records = 0
        self._reasons: Dict[str, int] = {}

    def start_bundle(self):
        self._path, self._handle, self._writer = None, None, None
        self._records, self._reasons = 0, {}

    def process(self, table: pa.Table):
        if table.num_rows == 0:
            return
        table = conform(table, self._schema)
        if self._writer is None:
            self._path = FileSystems.join(self._dir, f"{uuid.uuid4().hex}.parquet")
            self._handle = ChecksummedWriter(open_write(self._path))
            self._writer = pq.ParquetWriter(self._handle, self._schema)
        self._writer.write_table(table)
        self._records += table.num_rows
        for reason, count in reason_counts(table).items():
            self._reasons[reason] = self._reasons.get(reason, 0) + count

    def finish_bundle(self):
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            yield GlobalWindows.windowed_value(RejectedPart(
                self._path, self._records, self._handle.bytes, self._handle.crc32c, dict(self._reasons)))
        self._path, self._handle, self._writer = None, None, None


class WriteRejected(beam.PTransform):
    """Tables of rejected rows -> RejectedPart: one temporary Parquet file per bundle.

    Args:
      layout: output directory and run id.
      schema: the rejected-row schema (input columns, ``reason``, ``source_file``, ``source_row``,
        ``error``: ``transforms.rejected_columns.rejected_layout``).
    """

    def __init__(self, layout: OutputLayout, schema: pa.Schema):
        super().__init__()
        self._layout = layout
        self._schema = schema

    def expand(self, tables):
        return tables | "WriteRejectedParts" >> beam.ParDo(_WriteRejectedFn(self._layout, self._schema))
