"""Reading an export back: the shards of an export directory, streamed in batches, whatever the format.

An export (docs/FORMAT.md) is shard files, a ``_MANIFEST.json`` and a ``_SUCCESS`` marker; the
names and the manifest are ``transforms.outputdir``'s. This module is the one reader of shard
files the operator tools share (``verify``, ``inspection``, ``plots``): ``iter_record_batches``
streams one shard as batches of records, so memory stays bounded by the batch size, never by
the shard size; a file whose bytes stop making sense raises ``ShardReadError`` naming the file,
the record and, where known, the byte offset. Local paths are read with plain file I/O; remote
ones (gs://, hdfs://, ...) through Beam's FileSystems, where Beam has the filesystem installed.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.outputdir import (FORMATS, MANIFEST_NAME, PARQUET_COLUMNS, PARQUET_KEY_ID_COLUMN, is_remote,
                                  join_path, open_binary, open_records)
from twml.encode import EncodedRecords
from twml.errors import RecordFormatError
from twml.io.block import iter_block_records
from twml.io.tfrecord import iter_tfrecords

__all__ = ["DEFAULT_BATCH_SIZE", "ShardReadError", "RecordBatch", "iter_record_batches", "is_directory",
           "list_directory", "file_size"]

DEFAULT_BATCH_SIZE = 4096


class ShardReadError(RecordFormatError):
    """A shard whose bytes stop making sense at record ``record`` (its index in the shard).

    ``path`` is the shard file and ``offset`` the byte offset in the (decompressed) stream where
    the reader gave up, when known. Reading cannot go on past such a point: framing is lost.
    """

    def __init__(self, message: str, path: Optional[str] = None, offset: Optional[int] = None,
                 record: Optional[int] = None):
        super().__init__(message, path, offset)
        self.record = record

    def __reduce__(self):
        return (type(self), (self.reason, self.path, self.offset, self.record))


def is_directory(path: str) -> bool:
    """A local directory, or a remote prefix holding a manifest (object stores have no directories)."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.exists(join_path(path, MANIFEST_NAME))
    return os.path.isdir(path)


def list_directory(path: str) -> List[str]:
    """Names of the entries directly in ``path`` (remote: the objects matching ``path/*``)."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems
        found = FileSystems.match([join_path(path, "*")])[0].metadata_list
        return sorted({m.path.rstrip("/").rsplit("/", 1)[-1] for m in found})
    return sorted(os.listdir(path))


def file_size(path: str) -> Optional[int]:
    """Size in bytes of the file at ``path``, None when there is no such file."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems
        found = FileSystems.match([path])[0].metadata_list
        return found[0].size_in_bytes if found else None
    return os.path.getsize(path) if os.path.isfile(path) else None


@dataclass(frozen=True)
class RecordBatch:
    """Consecutive records of one shard.

    Attributes:
      first: index in the shard of ``records[0]``.
      records: the serialized DataRecords.
      keys, embeddings: the parquet ``key`` (int64 keys) or ``key_id`` (string keys) and
        ``embedding`` columns of these rows (None for the framed formats, whose only content is
        the records).
      key_strings: string keys in parquet: the ``key`` column (object array of str), else None.
    """
    first: int
    records: EncodedRecords
    keys: Optional[np.ndarray] = None
    embeddings: Optional[np.ndarray] = None
    key_strings: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.records)


def iter_record_batches(path: str, fmt: str, batch_size: int = DEFAULT_BATCH_SIZE,
                        string_keys: bool = False) -> Iterator[RecordBatch]:
    """Stream one shard file as RecordBatches of at most ``batch_size`` records.

    Args:
      path: the shard file (gzip is recognised by suffix or magic for the framed formats).
      fmt: "tfrecord", "block" or "parquet".
      batch_size: records a batch; the reader holds about one batch in memory.
      string_keys: the export has string keys (parquet: ``key`` is a string column, plus ``key_id``).
    Raises:
      ShardReadError with the file, the index of the record where reading failed and, for the
      framed formats, the byte offset: framing, checksum, gzip or parquet errors, and parquet
      columns of the wrong type.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if fmt == "parquet":
        yield from _parquet_batches(path, batch_size, string_keys)
        return
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    read = iter_tfrecords if fmt == "tfrecord" else iter_block_records
    count = 0
    pending: List[bytes] = []
    try:
        with open_records(path) as fileobj:
            for record in read(fileobj, path):
                pending.append(record)
                if len(pending) == batch_size:
                    yield RecordBatch(count, EncodedRecords.from_list(pending))
                    count += len(pending)
                    pending = []
    except RecordFormatError as err:
        if isinstance(err, ShardReadError):
            raise
        if pending:  # the good records before the damage still count (and get checked)
            yield RecordBatch(count, EncodedRecords.from_list(pending))
        raise ShardReadError(err.reason, path, err.offset, count + len(pending)) from err
    except OSError as err:
        raise ShardReadError(f"cannot read: {err}", path, None, count + len(pending)) from err
    if pending:
        yield RecordBatch(count, EncodedRecords.from_list(pending))


def _binary_column_records(column: pa.Array) -> EncodedRecords:
    """A (large_)binary arrow array -> EncodedRecords over its data buffer, without a copy per row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError("data_record has nulls")
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[column.offset:column.offset + len(column) + 1]
    offsets = offsets.astype(np.int64)
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8))
    buffer = np.ascontiguousarray(data[offsets[0]:offsets[-1]])
    return EncodedRecords(buffer, offsets - offsets[0])


def _check_parquet_schema(schema: pa.Schema, path: str, string_keys: bool = False) -> None:
    columns = PARQUET_COLUMNS + ((PARQUET_KEY_ID_COLUMN,) if string_keys else ())
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ShardReadError(f"parquet shard lacks column(s) {missing}; has {schema.names}", path, None, 0)
    key_type, emb_type, rec_type = (schema.field(c).type for c in PARQUET_COLUMNS)
    if string_keys:
        if not (pa.types.is_string(key_type) or pa.types.is_large_string(key_type)):
            raise ShardReadError(f"column key must be string (string keys), is {key_type}", path, None, 0)
        key_id_type = schema.field(PARQUET_KEY_ID_COLUMN).type
        if key_id_type != pa.int64():
            raise ShardReadError(f"column {PARQUET_KEY_ID_COLUMN} must be int64, is {key_id_type}", path, None, 0)
    elif key_type != pa.int64():
        raise ShardReadError(f"column key must be int64, is {key_type}", path, None, 0)
    if not (pa.types.is_fixed_size_list(emb_type) and emb_type.value_type == pa.float32()):
        raise ShardReadError(f"column embedding must be fixed_size_list<float32>, is {emb_type}", path, None, 0)
    if not (pa.types.is_binary(rec_type) or pa.types.is_large_binary(rec_type)):
        raise ShardReadError(f"column data_record must be binary, is {rec_type}", path, None, 0)


def _parquet_batches(path: str, batch_size: int, string_keys: bool = False) -> Iterator[RecordBatch]:
    count = 0
    stack = contextlib.ExitStack()
    columns = list(PARQUET_COLUMNS) + ([PARQUET_KEY_ID_COLUMN] if string_keys else [])
    try:
        source = stack.enter_context(open_binary(path))
        parquet = stack.enter_context(pq.ParquetFile(source))
        _check_parquet_schema(parquet.schema_arrow, path, string_keys)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            keys_col, emb_col, rec_col = (batch.column(c) for c in PARQUET_COLUMNS)
            key_strings = None
            if string_keys:
                if keys_col.null_count:
                    raise ShardReadError("key column has nulls", path, None, count)
                key_strings = np.asarray(keys_col.to_pylist(), dtype=object)
                keys_col = batch.column(PARQUET_KEY_ID_COLUMN)
            if keys_col.null_count or emb_col.null_count:
                raise ShardReadError("key or embedding column has nulls", path, None, count)
            dim = emb_col.type.list_size
            values = emb_col.values.to_numpy(zero_copy_only=False)
            embeddings = values[emb_col.offset * dim:(emb_col.offset + len(emb_col)) * dim].reshape(-1, dim)
            try:
                records = _binary_column_records(rec_col)
            except ValueError as err:
                raise ShardReadError(str(err), path, None, count) from None
            yield RecordBatch(count, records, keys_col.to_numpy(), embeddings, key_strings)
            count += batch.num_rows
    except ShardReadError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ShardReadError(f"unreadable parquet: {type(err).__name__}: {err}", path, None, count) from err
    finally:
        stack.close()
