"""Reading an export directory back, and the ``embedding-export inspect`` command.

An export (SPEC sections 5 and 6) is ``part-SSSSS-of-NNNNN<suffix>`` shard files, a
``_MANIFEST.json`` and a ``_SUCCESS`` marker. This module holds what both operator tools need:
the manifest (``read_manifest``), the shard file names a manifest implies (``shard_file_name``)
and a streaming reader of one shard in batches (``iter_record_batches``) whatever its format, so
memory stays bounded by the batch size, never by the shard size. Local paths are read with plain
file I/O; remote ones (gs://, hdfs://, ...) through Beam's FileSystems, where Beam has the
filesystem installed (e.g. apache-beam[gcp]). ``pipeline.verify`` and ``pipeline.plots`` build on it.

``inspect`` prints decoded records as JSON lines, one record a line, with feature ids shown by
name where the manifest knows the name (key feature, embedding feature, further model outputs).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twml.decode import decode_data_record, decode_embeddings, tensor_to_numpy
from twml.encode import EncodedRecords
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id, string_key_ids
from twml.io.block import iter_block_records
from twml.io.tfrecord import iter_tfrecords
from twml.sharding import shard_of_keys

__all__ = ["FORMATS", "MANIFEST_NAME", "SUCCESS_NAME", "REJECTED_DIR", "ExportError", "ShardReadError",
           "ExportManifest", "ShardEntry", "OutputEntry", "RecordBatch", "parse_manifest", "read_manifest",
           "shard_file_name", "parse_shard_file_name", "is_remote", "join_path", "is_directory", "list_directory",
           "file_size", "open_binary", "open_records", "iter_record_batches", "record_to_json", "iter_records",
           "lookup_key", "record_key", "find_rejected", "main"]

FORMATS = ("tfrecord", "block", "parquet")
MANIFEST_NAME = "_MANIFEST.json"
SUCCESS_NAME = "_SUCCESS"
REJECTED_DIR = "_rejected"
PARQUET_COLUMNS = ("key", "embedding", "data_record")
DEFAULT_BATCH_SIZE = 4096
_PART_NAME = re.compile(r"^part-(\d{5,})-of-(\d{5,})(\.tfrecord|\.parquet)?(\.gz)?$")


class ExportError(ValueError):
    """An export directory (or its manifest) that cannot be read; the message says which and why."""


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


@dataclass(frozen=True)
class ShardEntry:
    """One ``shards`` entry of the manifest: the file (relative to the export) and what it holds."""
    file: str
    records: int
    bytes: Optional[int]


@dataclass(frozen=True)
class OutputEntry:
    """One ``outputs`` entry of the manifest: a model output and the feature it is exported under.

    ``shape`` is the per-record shape (None for a dim the model left open); ``dtype`` a numpy name.
    """
    output: str
    feature: str
    id: int
    dtype: str
    shape: Tuple[Optional[int], ...]


@dataclass(frozen=True)
class ExportManifest:
    """What ``_MANIFEST.json`` says about an export (only the fields the tools use).

    Attributes:
      raw: the whole parsed JSON, for anything else (versions, model, ...).
      partition_by: "hash" (placement by fmix64 of the key, checkable) or "column" (placement
        by an input column, not checkable from the records).
      feature_names: feature id -> name for every feature the manifest names.
    """
    raw: Dict[str, Any]
    format: str
    compression: str
    num_shards: int
    shards: Tuple[ShardEntry, ...]
    embedding_dim: int
    key_feature_name: Optional[str]
    key_feature_id: int
    embedding_feature_name: Optional[str]
    embedding_feature_id: int
    partition_by: str
    rows_read: Optional[int]
    rows_written: Optional[int]
    rows_rejected: Optional[int]
    feature_names: Dict[int, str]
    key_type: str = "int64"
    key_id_feature_name: Optional[str] = None
    key_id_feature_id: Optional[int] = None
    outputs: Tuple[OutputEntry, ...] = ()

    @property
    def string_keys(self) -> bool:
        return self.key_type == "string"

    @property
    def int_key_feature_id(self) -> int:
        """The discreteFeatures entry holding the int64 key: the key itself, or a string key's id."""
        return self.key_id_feature_id if self.string_keys else self.key_feature_id

    @property
    def other_outputs(self) -> Tuple[OutputEntry, ...]:
        """The exported outputs after the embedding, in record order."""
        return tuple(o for o in self.outputs if o.id != self.embedding_feature_id)


def shard_file_name(index: int, num_shards: int, fmt: str, compression: str = "none") -> str:
    """The file name SPEC section 5 gives shard ``index`` of ``num_shards`` in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    suffix = {"tfrecord": ".tfrecord", "block": "", "parquet": ".parquet"}[fmt]
    if compression == "gzip" and fmt != "parquet":
        suffix += ".gz"
    return f"part-{index:05d}-of-{num_shards:05d}{suffix}"


def parse_shard_file_name(name: str) -> Optional[Tuple[int, int]]:
    """(index, num_shards) of a ``part-SSSSS-of-NNNNN...`` name, or None for any other name."""
    match = _PART_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _field(raw: Dict[str, Any], name: str, kind, where: str = "") -> Any:
    value = raw.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ExportError(f"{MANIFEST_NAME}: {where}{name} must be a {expected}, got {value!r}")
    return value


def _optional_int(raw: Dict[str, Any], name: str) -> Optional[int]:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _feature(raw: Dict[str, Any], name: str) -> Tuple[Optional[str], int]:
    entry = raw.get(name)
    if isinstance(entry, str):
        return entry, feature_id(entry)
    if not isinstance(entry, dict) or ("id" not in entry and "name" not in entry):
        raise ExportError(f"{MANIFEST_NAME}: {name} must be {{name, id}}, got {entry!r}")
    fname = entry.get("name")
    if fname is not None and not isinstance(fname, str):
        raise ExportError(f"{MANIFEST_NAME}: {name}.name must be a string, got {fname!r}")
    fid = entry.get("id")
    if fid is None:
        fid = feature_id(fname)
    if not isinstance(fid, int) or isinstance(fid, bool):
        raise ExportError(f"{MANIFEST_NAME}: {name}.id must be an int64, got {fid!r}")
    return fname, fid


def _config_section(raw: Dict[str, Any], section: str) -> Dict[str, Any]:
    config = raw.get("config") or {}
    value = config.get(section) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def parse_manifest(raw: Any) -> ExportManifest:
    """Validate the fields the tools rely on; ExportError names the first one that is wrong."""
    if not isinstance(raw, dict):
        raise ExportError(f"{MANIFEST_NAME}: the top level must be a JSON object")
    fmt = _field(raw, "format", str)
    if fmt not in FORMATS:
        raise ExportError(f"{MANIFEST_NAME}: format {fmt!r} is not one of {FORMATS}")
    compression = raw.get("compression") or "none"
    if compression not in ("none", "gzip"):
        raise ExportError(f"{MANIFEST_NAME}: compression {compression!r} is not 'none' or 'gzip'")
    num_shards = _field(raw, "num_shards", int)
    if num_shards <= 0:
        raise ExportError(f"{MANIFEST_NAME}: num_shards must be > 0, got {num_shards}")
    shards = []
    for i, entry in enumerate(_field(raw, "shards", list)):
        if not isinstance(entry, dict):
            raise ExportError(f"{MANIFEST_NAME}: shards[{i}] must be an object, got {entry!r}")
        shards.append(ShardEntry(file=_field(entry, "file", str, f"shards[{i}]."),
                                 records=_field(entry, "records", int, f"shards[{i}]."),
                                 bytes=_optional_int(entry, "bytes")))
    dim = _field(raw, "embedding_dim", int)
    key_name, key_id = _feature(raw, "key_feature")
    emb_name, emb_id = _feature(raw, "embedding_feature")
    # The effective config's partition section; the job also writes a top-level copy.
    partition = _config_section(raw, "partition")
    if not partition and isinstance(raw.get("partition"), dict):
        partition = raw["partition"]
    partition_by = partition.get("by", "hash")
    if partition_by not in ("hash", "column"):
        raise ExportError(f"{MANIFEST_NAME}: partition.by {partition_by!r} is not 'hash' or 'column'")
    names = {}
    for output in raw.get("outputs") or []:   # [{output, feature, id, dtype, shape}] as the job writes it
        if isinstance(output, dict) and isinstance(output.get("feature"), str):
            fid = output.get("id")
            names[fid if isinstance(fid, int) else feature_id(output["feature"])] = output["feature"]
    outputs = _config_section(raw, "model").get("outputs") or {}
    if isinstance(outputs, dict):
        for output in outputs.values():
            if isinstance(output, dict) and isinstance(output.get("feature"), str):
                names[feature_id(output["feature"])] = output["feature"]
    if key_name:
        names[key_id] = key_name
    if emb_name:
        names[emb_id] = emb_name
    key_type = raw.get("key_type") or "int64"
    if key_type not in ("int64", "string"):
        raise ExportError(f"{MANIFEST_NAME}: key_type {key_type!r} is not 'int64' or 'string'")
    key_id_name, key_id_id = (None, None)
    if key_type == "string":
        key_id_name, key_id_id = _feature(raw, "key_id_feature")
        if key_id_name:
            names[key_id_id] = key_id_name
    return ExportManifest(raw=raw, format=fmt, compression=compression, num_shards=num_shards,
                          shards=tuple(shards), embedding_dim=dim, key_feature_name=key_name,
                          key_feature_id=key_id, embedding_feature_name=emb_name,
                          embedding_feature_id=emb_id, partition_by=partition_by,
                          rows_read=_optional_int(raw, "rows_read"),
                          rows_written=_optional_int(raw, "rows_written"),
                          rows_rejected=_optional_int(raw, "rows_rejected"), feature_names=names,
                          key_type=key_type, key_id_feature_name=key_id_name, key_id_feature_id=key_id_id,
                          outputs=_outputs(raw))


def _outputs(raw: Dict[str, Any]) -> Tuple[OutputEntry, ...]:
    """The manifest's ``outputs`` entries (record order); ExportError for a malformed one."""
    entries = []
    for i, entry in enumerate(raw.get("outputs") or []):
        where = f"outputs[{i}]."
        if not isinstance(entry, dict):
            raise ExportError(f"{MANIFEST_NAME}: outputs[{i}] must be an object, got {entry!r}")
        feature = _field(entry, "feature", str, where)
        fid = entry.get("id")
        fid = feature_id(feature) if fid is None else fid
        shape = entry.get("shape")
        if not isinstance(shape, list) or any(d is not None and (not isinstance(d, int) or isinstance(d, bool))
                                              for d in shape):
            raise ExportError(f"{MANIFEST_NAME}: {where}shape must be a list of ints (or null), got {shape!r}")
        entries.append(OutputEntry(output=str(entry.get("output", feature)), feature=feature, id=int(fid),
                                   dtype=_field(entry, "dtype", str, where), shape=tuple(shape)))
    return tuple(entries)


def read_manifest(export_dir: str) -> ExportManifest:
    """Load and check ``<export_dir>/_MANIFEST.json``."""
    path = join_path(export_dir, MANIFEST_NAME)
    try:
        with open_binary(path) as f:
            raw = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: no manifest (is this an export directory? was the job finished?)") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable manifest: {err}") from None
    return parse_manifest(raw)


# ----------------------------------------------------------------------------------------------
# Files: local paths through os, remote ones (gs://, hdfs://, s3://) through Beam's FileSystems

def is_remote(path: str) -> bool:
    return "://" in path


def join_path(directory: str, name: str) -> str:
    if is_remote(directory):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.join(directory, name)
    return os.path.join(directory, name)


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


def open_binary(path: str) -> BinaryIO:
    """The file's bytes as stored (no decompression), for reading."""
    if is_remote(path):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.open(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED)
    return open(path, "rb")


@contextlib.contextmanager
def open_records(path: str) -> Iterator[BinaryIO]:
    """A shard's record stream: gunzipped when the name ends in ``.gz`` (SPEC 5 names say so)."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_binary(path))
        if path.endswith(".gz"):
            yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        else:
            yield raw


# ----------------------------------------------------------------------------------------------
# Streaming shard reader

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
    columns = PARQUET_COLUMNS + (("key_id",) if string_keys else ())
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ShardReadError(f"parquet shard lacks column(s) {missing}; has {schema.names}", path, None, 0)
    key_type, emb_type, rec_type = (schema.field(c).type for c in PARQUET_COLUMNS)
    if string_keys:
        if not (pa.types.is_string(key_type) or pa.types.is_large_string(key_type)):
            raise ShardReadError(f"column key must be string (string keys), is {key_type}", path, None, 0)
        if schema.field("key_id").type != pa.int64():
            raise ShardReadError(f"column key_id must be int64, is {schema.field('key_id').type}", path, None, 0)
    elif key_type != pa.int64():
        raise ShardReadError(f"column key must be int64, is {key_type}", path, None, 0)
    if not (pa.types.is_fixed_size_list(emb_type) and emb_type.value_type == pa.float32()):
        raise ShardReadError(f"column embedding must be fixed_size_list<float32>, is {emb_type}", path, None, 0)
    if not (pa.types.is_binary(rec_type) or pa.types.is_large_binary(rec_type)):
        raise ShardReadError(f"column data_record must be binary, is {rec_type}", path, None, 0)


def _parquet_batches(path: str, batch_size: int, string_keys: bool = False) -> Iterator[RecordBatch]:
    count = 0
    stack = contextlib.ExitStack()
    columns = list(PARQUET_COLUMNS) + (["key_id"] if string_keys else [])
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
                keys_col = batch.column("key_id")
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


# ----------------------------------------------------------------------------------------------
# Records as JSON

def _json_number(value: float) -> Any:
    # JSON has no NaN/Infinity; a damaged embedding must still print, so spell them out.
    return value if math.isfinite(value) else str(value)


def _json_array(array: np.ndarray) -> List[Any]:
    if array.dtype == np.float32:   # shortest repr of each float32, not of its float64 widening
        return [_json_number(float(str(v))) for v in array.reshape(-1)]
    if array.dtype.kind == "f":
        return [_json_number(v) for v in array.reshape(-1).tolist()]
    if array.dtype.kind in "iub":
        return array.reshape(-1).tolist()
    return [_json_bytes(v) for v in array.reshape(-1)]


def _json_bytes(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _tensor_json(tensor) -> Dict[str, Any]:
    array = tensor_to_numpy(tensor)
    return {"dtype": str(array.dtype) if array.dtype != object else "string",
            "shape": list(array.shape), "values": _json_array(array)}


def record_to_json(record, names: Dict[int, str]) -> Dict[str, Any]:
    """A decoded ``DataRecord`` -> a JSON-ready dict, fields by their IDL names, features named.

    A feature id in ``names`` is shown as its name, any other as its decimal id (JSON object
    keys are strings). Tensors become {dtype, shape, values}; blobs UTF-8 text or {base64}.
    """
    def name(fid: int) -> str:
        return names.get(fid, str(fid))

    out: Dict[str, Any] = {}
    if record.binaryFeatures:
        out["binaryFeatures"] = [name(f) for f in record.binaryFeatures]
    if record.continuousFeatures:
        out["continuousFeatures"] = {name(f): _json_number(v) for f, v in record.continuousFeatures.items()}
    if record.discreteFeatures:
        out["discreteFeatures"] = {name(f): v for f, v in record.discreteFeatures.items()}
    if record.stringFeatures:
        out["stringFeatures"] = {name(f): _json_bytes(v) for f, v in record.stringFeatures.items()}
    if record.sparseBinaryFeatures:
        out["sparseBinaryFeatures"] = {name(f): sorted(_json_bytes(s) for s in v)
                                       for f, v in record.sparseBinaryFeatures.items()}
    if record.sparseContinuousFeatures:
        out["sparseContinuousFeatures"] = {name(f): {str(_json_bytes(k)): _json_number(x) for k, x in v.items()}
                                           for f, v in record.sparseContinuousFeatures.items()}
    if record.blobFeatures:
        out["blobFeatures"] = {name(f): _json_bytes(v) for f, v in record.blobFeatures.items()}
    if record.tensors:
        out["tensors"] = {name(f): _tensor_json(t) for f, t in record.tensors.items()}
    if record.sparseTensors:
        sparse = {}
        for f, t in record.sparseTensors.items():
            coo = t.cooSparseTensor
            sparse[name(f)] = None if coo is None else {
                "denseShape": list(coo.denseShape or []),
                "indices": list((coo.indices.longs if coo.indices else None) or []),
                "values": _tensor_json(coo.values) if coo.values else None}
        out["sparseTensors"] = sparse
    return out


UserKey = Union[int, str]


def lookup_key(manifest: ExportManifest, key: UserKey) -> Tuple[UserKey, int]:
    """(the key as the export holds it, the int64 id its records and shards go by).

    Integer keys are their own id; a string key's id is ``feature_id(key)``
    (docs/FORMAT_string_keys.md). ExportError when ``key`` cannot be a key of this export.
    """
    if manifest.string_keys:
        key = str(key)
        if not key:
            raise ExportError("the empty string is never a key (empty keys are rejected)")
        return key, int(string_key_ids([key])[0])
    try:
        value = int(key)
    except ValueError:
        raise ExportError(f"key {key!r} is not an integer, and this export has int64 keys") from None
    if not -(1 << 63) <= value < (1 << 63):
        raise ExportError(f"key {value} does not fit in int64")
    return value, value


def record_key(record, manifest: ExportManifest) -> Optional[UserKey]:
    """The user key of a decoded record: the int64 key, or the string key (str; {"base64"} if not UTF-8)."""
    if not manifest.string_keys:
        return (record.discreteFeatures or {}).get(manifest.key_feature_id)
    value = (record.stringFeatures or {}).get(manifest.key_feature_id)
    return _json_bytes(value) if isinstance(value, (bytes, bytearray)) else value


def iter_records(path: str, head: Optional[int] = None, key: Optional[UserKey] = None,
                 named: bool = True, batch_size: int = 1024) -> Iterator[Dict[str, Any]]:
    """Decoded records of the export at ``path`` as JSON-ready dicts, in shard order.

    Args:
      path: the export directory.
      head: stop after this many records (None: all).
      key: only records of this user key (an int, or a str for string keys). With hash
        placement only the key's own shard is read (a lookup); with column placement every
        shard is scanned.
      named: show feature ids by their names where the manifest knows them (else decimal ids).
      batch_size: records read and decoded at a time.
    Yields:
      {"file", "record" (index in the shard), "key", then the DataRecord fields (record_to_json)}.
    Raises:
      ExportError for an unreadable manifest, ShardReadError / RecordFormatError for bad bytes.
    """
    manifest = read_manifest(path)
    if head is not None and head <= 0:
        return
    files = [entry.file for entry in manifest.shards]
    key_id = None
    if key is not None:
        key, key_id = lookup_key(manifest, key)
        if manifest.partition_by == "hash":
            shard = int(shard_of_keys(np.array([key_id], np.int64), manifest.num_shards)[0])
            files = files[shard:shard + 1]
    names = manifest.feature_names if named else {}
    emitted = 0
    for file_name in files:
        shard_path = join_path(path, file_name)
        for batch in iter_record_batches(shard_path, manifest.format, batch_size, manifest.string_keys):
            rows = range(len(batch))
            if key is not None:
                keys, _ = decode_embeddings(batch.records, manifest.int_key_feature_id,
                                            manifest.embedding_feature_id, shard_path)
                rows = np.flatnonzero(keys == key_id).tolist()
            for i in rows:
                offset = int(batch.records.offsets[i])
                record = decode_data_record(batch.records[i], shard_path, offset)
                user = record_key(record, manifest)
                if key is not None and user != key:
                    continue   # another string with the same id (the export refuses those; be exact anyway)
                yield {"file": file_name, "record": batch.first + i, "key": user,
                       **record_to_json(record, names)}
                emitted += 1
                if head is not None and emitted >= head:
                    return


def find_rejected(path: str, key: UserKey) -> List[Dict[str, Any]]:
    """The rejected rows of user ``key`` in the export at ``path``, from the rejected-rows files
    its manifest lists: [{"rejected": True, "file" (relative to the export), "row" (index in
    that file), then the row's columns: the input columns, reason, source_file, source_row, error}]."""
    manifest = read_manifest(path)
    key, _ = lookup_key(manifest, key)
    column = _config_section(manifest.raw, "input").get("key")   # the rejected rows keep the input's columns
    found: List[Dict[str, Any]] = []
    if not isinstance(column, str):
        return found
    for entry in manifest.raw.get("rejected_files") or []:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        try:
            found += _rejected_rows(join_path(path, name), name, column, key)
        except (OSError, pa.ArrowException) as err:
            raise ExportError(f"{join_path(path, name)}: unreadable rejected-rows file: {err}") from None
    return found


def _rejected_rows(file_path: str, name: str, column: str, key: UserKey) -> List[Dict[str, Any]]:
    """The rows of one rejected-rows file whose ``column`` is ``key``: the key column is read
    whole, then only the row groups holding a match."""
    with open_binary(file_path) as handle:
        parquet = pq.ParquetFile(handle)
        if column not in parquet.schema_arrow.names:
            return []
        values = parquet.read(columns=[column]).column(column)
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            target = pa.scalar(str(key).encode("utf-8"), values.type)
        elif pa.types.is_integer(values.type) and isinstance(key, int):
            target = pa.scalar(key, pa.int64())
        elif (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) and isinstance(key, str):
            target = pa.scalar(key, values.type)
        else:
            return []
        matches = np.flatnonzero(pc.equal(values, target).fill_null(False).to_numpy(zero_copy_only=False))
        ends = np.cumsum([parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
        rows = []
        for group in sorted(set(np.searchsorted(ends, matches, side="right").tolist())):
            table = parquet.read_row_group(group)
            first = int(ends[group - 1]) if group else 0
            for row in matches[(matches >= first) & (matches < ends[group])].tolist():
                values_of_row = {k: _json_value(v) for k, v in table.slice(row - first, 1).to_pylist()[0].items()}
                rows.append({"rejected": True, "file": name, "row": row, **values_of_row})
        return rows


def _json_value(value: Any) -> Any:
    """A rejected row's value as JSON: bytes as text (or base64), floats spelled out when not finite."""
    if isinstance(value, (bytes, bytearray)):
        return _json_bytes(value)
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# Command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedding-export inspect",
        description="Print decoded records of an export as JSON lines (feature ids shown by name "
                    "where the manifest knows them), and optionally plot it.")
    parser.add_argument("path", metavar="DIR", help="the export directory (holds _MANIFEST.json)")
    parser.add_argument("--head", type=int, default=None, metavar="N",
                        help="print the first N records (default 10 unless --key, --all or --plot)")
    parser.add_argument("--all", action="store_true", help="print every record")
    parser.add_argument("--key", default=None, metavar="K",
                        help="print the record(s) of user key K, an integer or, for an export with "
                             "string keys, the string (reads only K's shard when placement is by "
                             "hash); a rejected user's rejected row(s) instead, with the reason and "
                             "the file (exit 1: no exported record)")
    parser.add_argument("--ids", action="store_true", help="show raw feature ids instead of names")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write shard balance, embedding-norm histogram and a 2-D PCA "
                             "scatter to this PNG")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="records sampled for the plot's histogram and scatter (default 20000)")
    return parser


def _explain_missing_key(path: str, key: str) -> None:
    """No exported record has ``key``: print its rejected rows (stdout, JSON lines) and say why
    and where (stderr), or that the export has no such user at all."""
    from transforms.validate import REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN  # owner of the names

    rejected = find_rejected(path, key)
    if not rejected:
        print(f"inspect: no record with key {key} in {path}, and no rejected row either", file=sys.stderr)
        return
    for row in rejected:
        sys.stdout.write(json.dumps(row) + "\n")
        print(f"inspect: key {key} was rejected: {row.get(REASON_COLUMN)} (input {row.get(SOURCE_COLUMN)} row "
              f"{row.get(SOURCE_ROW_COLUMN)}); its row is {join_path(path, row['file'])} row {row['row']}",
              file=sys.stderr)


def main(args: Optional[Sequence[str]] = None) -> int:
    """``embedding-export inspect``: 0 on success, 1 on unreadable data, 2 on bad usage."""
    opts = _parser().parse_args(list(args) if args is not None else None)
    if not is_directory(opts.path):
        print(f"inspect: {opts.path} is not an export directory", file=sys.stderr)
        return 2
    if opts.head is not None and opts.head < 0:
        print("inspect: --head must be >= 0", file=sys.stderr)
        return 2
    head = None if opts.all else opts.head
    if head is None and not opts.all and opts.key is None:
        head = 0 if opts.plot else 10
    try:
        if opts.plot:
            from pipeline.plots import DEFAULT_SAMPLE, plot_export   # matplotlib only when asked
            summary = plot_export(opts.path, opts.plot, sample=opts.sample or DEFAULT_SAMPLE)
            print(f"wrote {opts.plot}: {summary}", file=sys.stderr)
        found = 0
        if head != 0:
            rows = iter_records(opts.path, head=head, key=opts.key, named=not opts.ids)
            for found, row in enumerate(rows, start=1):
                sys.stdout.write(json.dumps(row) + "\n")
        if opts.key is not None and found == 0:
            _explain_missing_key(opts.path, opts.key)
            return 1
    except (ExportError, RecordFormatError) as err:
        print(f"inspect: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # `inspect ... | head` closing the pipe early is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
