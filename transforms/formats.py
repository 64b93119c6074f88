"""The output formats: how a batch becomes bytes in a part file, and how parts become a shard file.

A format has a small override surface, in the spirit of Beam's ``FileBasedSink``:
``open_part(sink)`` returns a writer that appends batches to a temporary part (held in a
``PartSink`` until the writer's caller writes it to the part file), ``pieces(sharded)`` says what
each shard of a batch in shard order hands its part writer (the users, or, for a format that
frames records itself, their bytes encoded in one call for the whole batch), and
``assemble(parts, fileobj)`` writes the final shard file from the parts, streaming (memory does
not grow with the shard). TFRecord frames and elephant-bird blocks are self-delimiting, so their
parts concatenate byte for byte (gzip is applied while concatenating, giving one gzip member per
shard); Parquet parts are Arrow IPC streams re-written into row groups of the final file.

Every record is one DataRecord (docs/FORMAT.md section 3): the user key under the key feature in field 3,
then the outputs in config order (the embedding first) as rawTypedTensors in field 8.
"""
from __future__ import annotations

import zlib
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from twml.encode import EncodedRecords, StringColumn, encode_data_records
from twml.io.compression import DEFAULT_GZIP_LEVEL
from twml.io.tfrecord import encode_tfrecord_frames
from transforms.elements import EmbeddedBatch, ShardedBatch
from transforms.outputdir import PARQUET_COLUMNS, PARQUET_KEY_ID_COLUMN, shard_file_name, shard_suffix
from transforms.specs import OutputLayout, OutputSpec

__all__ = ["ChecksummedWriter", "PartSink", "PartWriter", "ShardFormat", "TFRecordFormat", "BlockFormat", "ParquetFormat",
           "make_format", "encode_batch", "open_write", "open_read",
           "COPY_CHUNK_BYTES"]

COPY_CHUNK_BYTES = 4 << 20
PARQUET_ROW_GROUP_ROWS = 65536
COALESCE_ROWS = 4096  # rows of one shard a part writer collects before encoding them in one call

# (shard, the shard's users in a batch, their framed bytes or None): ``ShardFormat.pieces``.
Piece = Tuple[int, EmbeddedBatch, Optional[np.ndarray]]


def open_write(path: str) -> BinaryIO:
    """A new file through Beam's FileSystems (gs://, hdfs://, local), never compressed by Beam."""
    return FileSystems.create(path, mime_type="application/octet-stream",
                              compression_type=CompressionTypes.UNCOMPRESSED)


def open_read(path: str) -> BinaryIO:
    return FileSystems.open(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED)


class ChecksummedWriter:
    """A write-only file object that counts bytes and crc32c of what passes to ``raw``.

    Args:
      raw: the file to write to; ``close()`` closes it.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.bytes = 0
        self.crc32c = 0
        self.closed = False

    def write(self, data) -> int:
        if isinstance(data, (memoryview, bytearray)):
            data = np.frombuffer(data, dtype=np.uint8)  # google_crc32c wants bytes or an array
        size = len(data) if not isinstance(data, np.ndarray) else data.nbytes
        if size:
            self.crc32c = google_crc32c.extend(self.crc32c, data)
            self._raw.write(data)
            self.bytes += size
        return size

    def tell(self) -> int:
        return self.bytes

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._raw.close()


def key_strings_column(batch: EmbeddedBatch, key_string_feature_id: Optional[int]) -> List[StringColumn]:
    """The stringFeatures entries of the batch's records: the string key, or none (integer keys)."""
    if key_string_feature_id is None:
        return []
    if batch.key_strings is None:
        raise ValueError("the export has string keys but the batch carries none")
    return [(key_string_feature_id, batch.key_strings)]


def encode_batch(batch: EmbeddedBatch, key_feature_id: int, feature_ids: Sequence[int],
                 key_string_feature_id: Optional[int] = None) -> EncodedRecords:
    """One DataRecord per user of ``batch``: the key, the outputs; string keys add field 4
    (docs/FORMAT.md sections 3 and 5)."""
    return encode_data_records(batch.keys, key_feature_id, list(zip(feature_ids, batch.outputs)),
                               key_strings_column(batch, key_string_feature_id))


class PartSink:
    """Where a part writer puts its bytes until they go to the part file: chunks held in memory.

    A write-only file object for writers that write to files (``write`` copies what it is
    given, as a file would, because the caller may reuse its buffer), plus ``append`` for a numpy
    array that the caller hands over and will not change: kept as it is, so a framed TFRecord
    batch goes from the encoder to the file without a copy in between. ``drain_to`` writes the
    chunks out in order and empties the sink; ``tell()`` and ``crc32c`` cover everything put in
    so far (the crc is taken as each chunk arrives, while it is still in the CPU caches: taken
    when the file is written, long after, it cost several times as much).
    """

    closed = False

    def __init__(self):
        self._chunks: List = []
        self.size = 0       # bytes held now
        self._drained = 0   # bytes already written out
        self.crc32c = 0     # of all bytes put in, in order

    def write(self, data) -> int:
        chunk = bytes(data)
        if chunk:
            self._chunks.append(chunk)
            self.size += len(chunk)
            self.crc32c = google_crc32c.extend(self.crc32c, chunk)
        return len(chunk)

    def append(self, array: np.ndarray) -> None:
        """Keep a 1-D uint8 array as the next chunk, without copying it."""
        if array.nbytes:
            self._chunks.append(array)
            self.size += array.nbytes
            self.crc32c = google_crc32c.extend(self.crc32c, array)

    def drain_to(self, out: BinaryIO) -> None:
        for chunk in self._chunks:
            out.write(chunk)
        self._drained += self.size
        self._chunks, self.size = [], 0

    def tell(self) -> int:
        return self._drained + self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass


class PartWriter:
    """Appends batches to one part (a PartSink); ``close`` finishes the framing (not the file).

    A batch comes either with its records already framed (``ShardFormat.pieces``), which go to
    the sink as they are, or as users to encode. Slices of a shard are small (a batch split over
    the shards), and encoding has a fixed cost per call (about 35 us), so ``write`` collects users
    and encodes ``COALESCE_ROWS`` rows at a time; ``flush`` encodes what is collected into the
    sink now. ``pending_bytes`` counts the collected arrays, so that callers bound memory by what
    is held in both forms. Formats implement ``_write`` (one batch into the sink) and ``_finish``
    (end of the framing).

    Args:
      sink: where the part's bytes go.
    """

    def __init__(self, sink: PartSink):
        self.records = 0
        self.pending_bytes = 0
        self._sink = sink
        self._pending: List[EmbeddedBatch] = []
        self._pending_rows = 0

    def write(self, batch: EmbeddedBatch, framed: Optional[np.ndarray] = None, keep: bool = False) -> None:
        """Append ``batch``'s records.

        Args:
          batch: the users.
          framed: their records already framed, or None to encode them here.
          keep: put ``framed`` in the sink without a copy; for a caller that writes the sink out
            before the call returns, since a view held any longer would keep the buffer of the
            whole batch it came from alive. Otherwise the bytes are copied.
        """
        if not len(batch):
            return
        if framed is not None:
            self.flush()  # what was collected goes first
            self.records += len(batch)
            if keep:
                self._sink.append(framed)
            else:
                self._sink.write(framed)
            return
        self._pending.append(batch)
        self._pending_rows += len(batch)
        self.pending_bytes += batch.nbytes
        self.records += len(batch)
        if self._pending_rows >= COALESCE_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._pending_rows = self.pending_bytes = 0
            self._write(EmbeddedBatch.concat(pending))

    def close(self) -> None:
        self.flush()
        self._finish()

    def _write(self, batch: EmbeddedBatch) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass


class ShardFormat:
    """One output format.

    Args:
      layout: output directory, shard count, compression, key feature id, block size.
      outputs: the exported model outputs (feature ids, dtypes, shapes), embedding first.
    """

    name = ""

    def __init__(self, layout: OutputLayout, outputs: Sequence[OutputSpec]):
        self.layout = layout
        self.outputs = tuple(outputs)
        self.feature_ids = [spec.feature_id for spec in outputs]

    @property
    def suffix(self) -> str:
        return shard_suffix(self.name, self.layout.compression)

    def final_name(self, shard: int) -> str:
        return shard_file_name(shard, self.layout.num_shards, self.name, self.layout.compression)

    def encode(self, batch: EmbeddedBatch) -> EncodedRecords:
        return encode_batch(batch, self.layout.key_feature_id, self.feature_ids, self.layout.key_string_feature_id)

    def open_part(self, sink: PartSink) -> PartWriter:
        raise NotImplementedError

    def pieces(self, sharded: ShardedBatch) -> Iterator[Piece]:
        """(shard, its users, their framed bytes) for every shard of ``sharded``. By default the
        bytes are None: the shard's part writer encodes the users itself, collecting slices."""
        for shard, rows in sharded.slices():
            yield shard, rows, None

    def parts_concatenate(self) -> bool:
        """True when the shard file is the parts' bytes back to back (then one part is the shard)."""
        return self.layout.compression == "none"

    def assemble(self, parts: Sequence[str], out: BinaryIO) -> None:
        """Write the shard file to ``out`` from the part files, in the given order."""
        compressor = (zlib.compressobj(DEFAULT_GZIP_LEVEL, zlib.DEFLATED, 31)
                      if self.layout.compression == "gzip" else None)
        for path in parts:
            with open_read(path) as src:
                while True:
                    chunk = src.read(COPY_CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(compressor.compress(chunk) if compressor else chunk)
        if compressor:
            out.write(compressor.flush())


class _TFRecordPart(PartWriter):
    def __init__(self, fmt: "TFRecordFormat", sink: PartSink):
        super().__init__(sink)
        self._fmt = fmt

    def _write(self, batch: EmbeddedBatch) -> None:
        self._sink.append(self._fmt.frames(batch).buffer)


class TFRecordFormat(ShardFormat):
    """TFRecord framing (what tf.data.TFRecordDataset reads): ``part-SSSSS-of-NNNNN.tfrecord[.gz]``."""

    name = "tfrecord"

    def frames(self, batch: EmbeddedBatch) -> EncodedRecords:
        """The batch's records framed as TFRecords, back to back, with each frame's bounds.

        ``encode_tfrecord_frames`` writes each record straight into its frame; the bytes are
        those of framing ``encode`` 's records.
        """
        return encode_tfrecord_frames(batch.keys, self.layout.key_feature_id,
                                      list(zip(self.feature_ids, batch.outputs)),
                                      key_strings_column(batch, self.layout.key_string_feature_id))

    def pieces(self, sharded: ShardedBatch) -> Iterator[Piece]:
        """Every shard's users with their frames: the whole batch framed in one encoder call,
        each shard's frames a view of it."""
        frames = self.frames(sharded.batch)
        bounds = frames.offsets
        for shard, start, end in sharded.ranges:
            yield shard, sharded.batch.rows(start, end), frames.buffer[bounds[start]:bounds[end]]

    def open_part(self, sink: PartSink) -> PartWriter:
        return _TFRecordPart(self, sink)


class _BlockPart(PartWriter):
    def __init__(self, fmt: "BlockFormat", sink: PartSink):
        from twml.io.block import BlockWriter
        super().__init__(sink)
        self._fmt = fmt
        self._writer = BlockWriter(sink, records_per_block=fmt.layout.records_per_block)

    def _write(self, batch: EmbeddedBatch) -> None:
        self._writer.write_records(self._fmt.encode(batch))

    def _finish(self) -> None:
        self._writer.close()


class BlockFormat(ShardFormat):
    """Elephant-bird binary blocks (twml's BlockFormatDataset): ``part-SSSSS-of-NNNNN[.gz]``.

    Each part ends with a possibly short block; blocks are self-delimiting, so concatenated
    parts are a valid block stream.
    """

    name = "block"

    def open_part(self, sink: PartSink) -> PartWriter:
        return _BlockPart(self, sink)


class _ParquetPart(PartWriter):
    def __init__(self, fmt: "ParquetFormat", sink: PartSink):
        super().__init__(sink)
        self._fmt = fmt
        self._writer = pa.ipc.new_stream(sink, fmt.schema)

    def _write(self, batch: EmbeddedBatch) -> None:
        self._writer.write_batch(self._fmt.record_batch(batch))

    def _finish(self) -> None:
        self._writer.close()


class ParquetFormat(ShardFormat):
    """Parquet with columns key int64, embedding fixed_size_list<float32>[D], data_record binary;
    with string keys: key string (the key itself), key_id int64, embedding, data_record.

    Parts are Arrow IPC streams of that schema; the shard file is written from them in row
    groups of up to PARQUET_ROW_GROUP_ROWS rows.
    """

    name = "parquet"

    def __init__(self, layout: OutputLayout, outputs: Sequence[OutputSpec]):
        super().__init__(layout, outputs)
        dim = outputs[0].shape[0] if outputs[0].shape else None
        if not dim:
            raise ValueError("the parquet format needs the embedding dimension; the model left it open")
        self.dim = int(dim)
        key, embedding, data_record = PARQUET_COLUMNS
        keys = [pa.field(key, pa.int64(), nullable=False)]
        if layout.string_keys:
            keys = [pa.field(key, pa.string(), nullable=False), pa.field(PARQUET_KEY_ID_COLUMN, pa.int64(), nullable=False)]
        self.schema = pa.schema(keys + [
            pa.field(embedding, pa.list_(pa.float32(), self.dim), nullable=False),
            pa.field(data_record, pa.binary(), nullable=False)])

    def parts_concatenate(self) -> bool:
        return False

    def record_batch(self, batch: EmbeddedBatch) -> pa.RecordBatch:
        rows = len(batch)
        emb = np.ascontiguousarray(batch.embedding, dtype=np.float32)
        if emb.shape != (rows, self.dim):
            raise ValueError(f"embedding has shape {emb.shape}, expected ({rows}, {self.dim})")
        records = self.encode(batch)
        data = pa.Array.from_buffers(pa.binary(), rows, [
            None, pa.py_buffer(records.offsets.astype(np.int32)), pa.py_buffer(records.buffer)])
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()),
                                                      type=self.schema.field(PARQUET_COLUMNS[1]).type)
        keys = [pa.array(batch.keys, pa.int64())]
        if self.layout.string_keys:  # validated UTF-8: viewing the bytes as strings is safe
            keys = [pa.array(list(batch.key_strings), pa.binary()).view(pa.string())] + keys
        return pa.RecordBatch.from_arrays(keys + [embedding, data], schema=self.schema)

    def open_part(self, sink: PartSink) -> PartWriter:
        return _ParquetPart(self, sink)

    def assemble(self, parts: Sequence[str], out: BinaryIO) -> None:
        writer = pq.ParquetWriter(out, self.schema)
        pending: List[pa.RecordBatch] = []
        pending_rows = 0
        for path in parts:
            with open_read(path) as src:
                for record_batch in pa.ipc.open_stream(src):
                    pending.append(record_batch)
                    pending_rows += record_batch.num_rows
                    if pending_rows >= PARQUET_ROW_GROUP_ROWS:
                        writer.write_table(pa.Table.from_batches(pending, self.schema),
                                           row_group_size=PARQUET_ROW_GROUP_ROWS)
                        pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending, self.schema),
                               row_group_size=PARQUET_ROW_GROUP_ROWS)
        writer.close()


_FORMATS = {cls.name: cls for cls in (TFRecordFormat, BlockFormat, ParquetFormat)}


def make_format(layout: OutputLayout, outputs: Sequence[OutputSpec]) -> ShardFormat:
    try:
        cls = _FORMATS[layout.format]
    except KeyError:
        raise ValueError(f"unknown output format {layout.format!r}; expected one of {sorted(_FORMATS)}") from None
    return cls(layout, outputs)
