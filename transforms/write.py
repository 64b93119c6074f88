"""Write the shard files and the rejected rows, invisible until finalize publishes them.

``WriteShards``: each bundle frames its (shard, batch slice) elements into an in-memory buffer
per shard; when the buffers together pass ``buffer_bytes`` the largest is written out as a
temporary part file (``_temporary/<run_id>/parts/``), and at the end of the bundle all of them
are. Each part written emits small ``(shard, PartInfo)`` metadata. Only that metadata goes
through a GroupByKey on the shard id (a Python int), together with one marker per shard so that
every shard appears, even an empty one. One step per shard then assembles its parts, in crc32c
order, into a complete shard file under ``_temporary/<run_id>/shards/`` and emits a
``ShardResult``. A bundle that fails and is retried leaves orphan parts that no metadata names;
finalize removes them with the temporary directory. A worker's memory is bounded by one batch
plus ``buffer_bytes``, whatever the number of rows or shards.

``WriteRejected``: one Parquet file of rejected rows per bundle, under ``_temporary/<run_id>/rejected/``.
"""
from __future__ import annotations

import io
import uuid
from typing import Dict, Iterable, Optional, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.elements import EmbeddedBatch, PartInfo, RejectedPart, ShardResult
from transforms.finalize import TEMP_DIR
from transforms.formats import ChecksummedWriter, ShardFormat, open_write
from transforms.specs import OutputLayout
from transforms.validate import METRICS_NAMESPACE, REASON_COLUMN, conform

__all__ = ["WriteShards", "WriteRejected", "temp_dir", "DEFAULT_BUFFER_BYTES"]

DEFAULT_BUFFER_BYTES = 32 << 20


def temp_dir(layout: OutputLayout, *sub: str) -> str:
    """``<output>/_temporary/<run_id>[/sub...]``: this run's scratch space."""
    return FileSystems.join(layout.path, TEMP_DIR, layout.run_id, *sub)


class _ShardBuffer:
    """This bundle's records of one shard not yet in a part file, framed in memory."""

    def __init__(self, fmt: ShardFormat):
        self._buffer = io.BytesIO()
        self.writer = fmt.open_part(self._buffer)

    @property
    def size(self) -> int:
        return self._buffer.tell()

    def spill(self, path: str) -> PartInfo:
        """Finish the framing and write everything to a new part file at ``path`` in one go."""
        self.writer.close()
        handle = ChecksummedWriter(open_write(path))
        try:
            handle.write(self._buffer.getbuffer())
        finally:
            handle.close()
        self._buffer = io.BytesIO()
        return PartInfo(path, int(self.writer.records), handle.bytes, handle.crc32c)


@beam.typehints.with_input_types(Tuple[int, EmbeddedBatch])
@beam.typehints.with_output_types(Tuple[int, PartInfo])
class _WritePartsFn(beam.DoFn):
    def __init__(self, fmt: ShardFormat, buffer_bytes: int):
        self._fmt = fmt
        self._budget = buffer_bytes
        self._parts_dir = temp_dir(fmt.layout, "parts")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "rows_written")
        self._part_files = Metrics.counter(METRICS_NAMESPACE, "part_files")
        self._buffers: Dict[int, _ShardBuffer] = {}
        self._buffered = 0

    def start_bundle(self):
        self._buffers = {}
        self._buffered = 0

    def _spill(self, shard: int) -> Tuple[int, PartInfo]:
        buffer = self._buffers.pop(shard)
        self._buffered -= buffer.size
        self._part_files.inc()
        path = FileSystems.join(self._parts_dir, f"s{shard:05d}-{uuid.uuid4().hex}.part")
        return shard, buffer.spill(path)

    def process(self, element: Tuple[int, EmbeddedBatch]) -> Iterable[Tuple[int, PartInfo]]:
        shard, batch = element
        shard = int(shard)
        buffer = self._buffers.get(shard)
        if buffer is None:
            buffer = self._buffers[shard] = _ShardBuffer(self._fmt)
        before = buffer.size
        buffer.writer.write(batch)
        self._buffered += buffer.size - before
        self._rows.inc(len(batch))
        # Bounded memory whatever the shard count and file system: past the budget, the largest
        # buffer becomes a part file (object-store writers would each hold a 16 MB upload buffer).
        while self._buffered > self._budget and self._buffers:
            largest = max(self._buffers, key=lambda s: self._buffers[s].size)
            yield self._spill(largest)

    def finish_bundle(self):
        for shard in sorted(self._buffers):
            yield GlobalWindows.windowed_value(self._spill(shard))
        self._buffered = 0


@beam.typehints.with_input_types(Tuple[int, Iterable[Optional[PartInfo]]])
@beam.typehints.with_output_types(ShardResult)
class _AssembleShardFn(beam.DoFn):
    def __init__(self, fmt: ShardFormat):
        self._fmt = fmt
        self._shards_dir = temp_dir(fmt.layout, "shards")

    def process(self, element: Tuple[int, Iterable[Optional[PartInfo]]]) -> Iterable[ShardResult]:
        shard, infos = element
        shard = int(shard)
        parts = sorted((info for info in infos if info is not None), key=lambda info: info.order_key)
        final_name = self._fmt.final_name(shard)
        records = sum(info.records for info in parts)
        if len(parts) == 1 and self._fmt.parts_concatenate():
            # The part already is the shard file: finalize renames it, no copy.
            only = parts[0]
            yield ShardResult(shard, only.path, final_name, records, only.bytes, only.crc32c, 1)
            return
        # A unique name per attempt: a retried or speculative attempt never writes over another.
        path = FileSystems.join(self._shards_dir, f"{final_name}.{uuid.uuid4().hex}")
        out = ChecksummedWriter(open_write(path))
        try:
            self._fmt.assemble([info.path for info in parts], out)
        finally:
            out.close()
        yield ShardResult(shard, path, final_name, records, out.bytes, out.crc32c, len(parts))


class WriteShards(beam.PTransform):
    """(shard, EmbeddedBatch) -> one ShardResult per shard 0..N-1: complete temporary shard files.

    Args:
      fmt: the output format (it holds the layout: directory, run id, shard count).
      buffer_bytes: framed bytes a bundle holds in memory, over all shards, before it writes
        the largest shard's buffer out as a part file.
    """

    def __init__(self, fmt: ShardFormat, buffer_bytes: int = DEFAULT_BUFFER_BYTES):
        super().__init__()
        self._fmt = fmt
        self._buffer_bytes = buffer_bytes

    def expand(self, slices):
        num_shards = self._fmt.layout.num_shards
        parts = slices | "WriteParts" >> beam.ParDo(_WritePartsFn(self._fmt, self._buffer_bytes))
        every_shard = (slices.pipeline
                       | "EveryShard" >> beam.Create([(s, None) for s in range(num_shards)])
                       .with_output_types(Tuple[int, Optional[PartInfo]]))
        return ((parts, every_shard)
                | "PartsAndMarkers" >> beam.Flatten().with_output_types(Tuple[int, Optional[PartInfo]])
                | "GroupPartsByShard" >> beam.GroupByKey()
                | "AssembleShards" >> beam.ParDo(_AssembleShardFn(self._fmt)))


def reason_counts(table: pa.Table) -> Dict[str, int]:
    counts = pc.value_counts(table.column(REASON_COLUMN).combine_chunks())
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


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
      schema: the rejected-row schema (input columns, ``reason``, ``source_file``).
    """

    def __init__(self, layout: OutputLayout, schema: pa.Schema):
        super().__init__()
        self._layout = layout
        self._schema = schema

    def expand(self, tables):
        return tables | "WriteRejectedParts" >> beam.ParDo(_WriteRejectedFn(self._layout, self._schema))
