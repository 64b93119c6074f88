"""Exports as ``tf.data``: an export directory -> a Dataset of (key, embedding, other outputs).

Training jobs read an export in TensorFlow graph mode, without this package's Python decoder
and without thriftpy2. ``export_dataset`` reads ``_MANIFEST.json`` (format, compression, shard
files, feature ids, output dtypes and shapes), reads the shard files with
``tf.data.TFRecordDataset`` (which checks both CRCs of every frame) and parses each record with
``parse_exported_records``: graph ops only (``tf.strings.substr``, ``tf.io.decode_raw``), so the
parse runs inside ``Dataset.map`` and in a SavedModel.

The parser knows the record layout of docs/FORMAT.md exactly and checks every structural byte
of it: the field headers and types, the key feature id, the map sizes, each tensor's feature
id, dataType, content length and shape, the stop bytes and the record length. Entries of the
``tensors`` map may come in any order (Thrift readers accept any map order, and libtwml writes
hash order); each output must be there exactly once. Anything else (another field, another
feature, a list tensor instead of a rawTypedTensor, ...) is valid Thrift that this parser does
not recognise: it fails with an InvalidArgumentError that says what differs, never returns
numbers from bytes it did not understand. ``twml.decode`` remains the general decoder.

Supported: TFRecord exports, plain or gzip, with int64 or string keys, whose outputs are numeric (float32, float64, int32,
int64, uint8, bool) with every dim known (the manifest lists them). Other exports are refused
when the dataset is built, with what to use instead.
"""
from __future__ import annotations

import json
import posixpath
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from twml.export_names import MANIFEST_NAME as MANIFEST_FILE, SUCCESS_NAME as SUCCESS_FILE

__all__ = ["MANIFEST_FILE", "SUCCESS_FILE", "ExportedOutput", "ExportLayout", "read_export_layout",
           "parse_exported_records", "export_dataset"]


# Thrift binary type ids and tensor.thrift DataType values (docs/FORMAT.md).
_T_I32, _T_I64, _T_STRING, _T_STRUCT, _T_MAP, _T_LIST = 8, 10, 11, 12, 13, 15
_DATA_TYPES = {"float32": 0, "float64": 1, "int32": 2, "int64": 3, "uint8": 4, "bool": 7}
_TF_DTYPES = {"float32": tf.float32, "float64": tf.float64, "int32": tf.int32, "int64": tf.int64,
              "uint8": tf.uint8, "bool": tf.uint8}   # bool content: one byte per element


@dataclass(frozen=True)
class ExportedOutput:
    """One model output as the export writes it (an entry of the manifest's ``outputs``)."""
    name: str
    feature: str
    feature_id: int
    dtype: str
    shape: Tuple[int, ...]

    @property
    def content_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ExportLayout:
    """What the parser needs to know about an export, read from its manifest."""
    files: Tuple[str, ...]
    compression: str                     # "none" or "gzip"
    key_feature_id: int                  # int64 keys: in discreteFeatures; string keys: in stringFeatures
    outputs: Tuple[ExportedOutput, ...]  # the embedding first, then the others in record order
    key_type: str = "int64"              # "int64" or "string"
    key_id_feature_id: Optional[int] = None   # string keys: where the key's int64 id is (discreteFeatures)

    @property
    def embedding(self) -> ExportedOutput:
        return self.outputs[0]


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as handle:
        return handle.read()


def read_export_layout(export_dir: str) -> ExportLayout:
    """The layout of the finished TFRecord export in ``export_dir`` (any path tf.io.gfile opens).

    Raises:
      FileNotFoundError: no ``_SUCCESS`` (the export is missing or incomplete) or no manifest.
      ValueError: an export this reader does not handle, saying which and what to use instead.
    """
    if not tf.io.gfile.exists(posixpath.join(export_dir, SUCCESS_FILE)):
        raise FileNotFoundError(f"{export_dir} has no {SUCCESS_FILE}: the export is missing or incomplete")
    manifest_path = posixpath.join(export_dir, MANIFEST_FILE)
    try:
        manifest = json.loads(_read_text(manifest_path))
    except (tf.errors.NotFoundError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{manifest_path}: cannot read the manifest: {err}") from None
    fmt = manifest.get("format")
    if fmt != "tfrecord":
        raise ValueError(f"{export_dir}: format {fmt!r}; twml.dataset reads tfrecord exports only "
                         "(block: twml.io.read_block_records, parquet: pyarrow)")
    compression = manifest.get("compression", "none")
    if compression not in ("none", "gzip"):
        raise ValueError(f"{export_dir}: unknown compression {compression!r} in the manifest")
    outputs = []
    for entry in manifest["outputs"]:
        shape = entry.get("shape")
        if entry.get("dtype") not in _DATA_TYPES or shape is None or any(d is None for d in shape):
            raise ValueError(
                f"{export_dir}: output {entry.get('output')!r} is {entry.get('dtype')} with shape {shape}; "
                "the graph reader needs numeric outputs of a fixed shape (read this export with "
                "twml.decode.decode_data_record)")
        outputs.append(ExportedOutput(entry["output"], entry["feature"], int(entry["id"]), entry["dtype"],
                                      tuple(int(d) for d in shape)))
    if outputs[0].feature_id != int(manifest["embedding_feature"]["id"]):
        raise ValueError(f"{export_dir}: the manifest's first output is not its embedding_feature")
    files = tuple(posixpath.join(export_dir, shard["file"]) for shard in manifest["shards"])
    key_type = manifest.get("key_type", "int64")
    if key_type not in ("int64", "string"):
        raise ValueError(f"{export_dir}: unknown key_type {key_type!r} in the manifest")
    key_id = int(manifest["key_id_feature"]["id"]) if key_type == "string" else None
    return ExportLayout(files, compression, int(manifest["key_feature"]["id"]), tuple(outputs), key_type, key_id)


# ------------------------------------------------------------------------------------------------
# The record layout, byte by byte (Thrift binary protocol, big-endian; tensor content little-endian).

def _field(ttype: int, fid: int) -> bytes:
    return struct.pack(">bh", ttype, fid)


def _key_head(key_feature_id: int) -> bytes:
    """Field 3 discreteFeatures map<i64, i64> of one entry, up to its value (the key)."""
    return _field(_T_MAP, 3) + struct.pack(">bbi", _T_I64, _T_I64, 1) + struct.pack(">q", key_feature_id)


def _string_key_head(key_feature_id: int) -> bytes:
    """Field 4 stringFeatures map<i64, string> of one entry, up to its value (i32 length, bytes)."""
    return _field(_T_MAP, 4) + struct.pack(">bbi", _T_I64, _T_STRING, 1) + struct.pack(">q", key_feature_id)


def _tensors_head(count: int) -> bytes:
    """Field 8 tensors map<i64, GeneralTensor> of ``count`` entries."""
    return _field(_T_MAP, 8) + struct.pack(">bbi", _T_I64, _T_STRUCT, count)


def _entry_prefix(output: ExportedOutput) -> bytes:
    """After the entry's feature id: GeneralTensor field 1 rawTypedTensor {1: dataType, 2: content length}."""
    return (_field(_T_STRUCT, 1) + _field(_T_I32, 1) + struct.pack(">i", _DATA_TYPES[output.dtype])
            + _field(_T_STRING, 2) + struct.pack(">i", output.content_bytes))


def _entry_suffix(output: ExportedOutput) -> bytes:
    """After the content: {3: shape list<i64>}, stop of RawTypedTensor, stop of GeneralTensor."""
    return (_field(_T_LIST, 3) + struct.pack(">bi", _T_I64, len(output.shape))
            + b"".join(struct.pack(">q", d) for d in output.shape) + b"\x00\x00")


_FID_BYTES = 8
_STOP = b"\x00"


def _substr(records: tf.Tensor, pos, length) -> tf.Tensor:
    """Bytes [pos, pos + length) of each record; pos and length are scalars or one per record."""
    shape = tf.shape(records)
    pos = tf.broadcast_to(tf.cast(pos, tf.int32), shape)
    length = tf.broadcast_to(tf.cast(length, tf.int32), shape)
    return tf.strings.substr(records, pos, length, unit="BYTE")


def _assert_all(condition: tf.Tensor, message: str, keys: Optional[tf.Tensor] = None) -> tf.Operation:
    """An assert over a batch; the message says what differs, the data how many records and the
    key of the first. The data are int32 and strings only: for other dtypes tf.debugging.Assert
    guards itself with a tf.cond, which halves the reader's speed inside tf.data."""
    ok = tf.reduce_all(condition)
    if keys is None:
        return tf.debugging.Assert(ok, [message])
    failing = tf.logical_not(condition)
    # A sentinel entry so that an empty batch has a "first" too.
    index = tf.argmax(tf.concat([tf.cast(failing, tf.int32), [1]], 0), output_type=tf.int32)
    first = tf.gather(tf.concat([keys, tf.zeros([1], keys.dtype)], 0), index)
    if first.dtype != tf.string:
        first = tf.strings.as_string(first)
    return tf.debugging.Assert(ok, [message, "records concerned:", tf.reduce_sum(tf.cast(failing, tf.int32)),
                                    "key of the first:", first])


def parse_exported_records(records: tf.Tensor, layout: ExportLayout
                           ) -> Tuple[tf.Tensor, tf.Tensor, Dict[str, tf.Tensor]]:
    """Parse serialized exported DataRecords with graph ops.

    Args:
      records: string ``[B]``, one serialized DataRecord each.
      layout: the export's layout (``read_export_layout``).
    Returns:
      (keys ``[B]``, embeddings float32 ``[B, D]``, {output name: ``[B, *shape]``} of the other
      outputs, bool outputs as tf.bool). Keys are int64, or for an export of string keys
      (manifest ``key_type: string``) the strings themselves (their int64 id, in field 3, is
      ``twml.feature_id(key)``; the parser checks where it is, not its value).
    Raises:
      tf.errors.InvalidArgumentError (when run) on any record not laid out as the export writes
      it, up to the order of the ``tensors`` map entries; the message says which part differs.
    """
    records = tf.convert_to_tensor(records, tf.string)
    outputs = layout.outputs
    n = len(outputs)
    string_keys = layout.key_type == "string"
    key_head = _key_head(layout.key_id_feature_id if string_keys else layout.key_feature_id)
    string_head = _string_key_head(layout.key_feature_id) if string_keys else b""
    tensors_head = _tensors_head(n)
    fids = [struct.pack(">q", o.feature_id) for o in outputs]
    prefixes = [_entry_prefix(o) for o in outputs]
    suffixes = [_entry_suffix(o) for o in outputs]
    sizes = [len(p) + o.content_bytes + len(s) for o, p, s in zip(outputs, prefixes, suffixes)]
    # Every byte but a string key's: the record length is this plus the key's length.
    fixed_length = (len(key_head) + 8 + (len(string_head) + 4 if string_keys else 0) + len(tensors_head)
                    + sum(_FID_BYTES + s for s in sizes) + 1)
    what = f"{'string ' if string_keys else ''}key, then {n} tensors: {', '.join(o.name for o in outputs)}"

    lengths = tf.strings.length(records, unit="BYTE")
    checks = [_assert_all(tf.greater_equal(lengths, fixed_length) if string_keys else tf.equal(lengths, fixed_length),
                          f"exported DataRecord: expected {fixed_length} bytes"
                          f"{' plus the key' if string_keys else ''} ({what}), a record has another length")]
    with tf.control_dependencies(checks):
        checks = [_assert_all(tf.equal(_substr(records, 0, len(key_head)), key_head),
                              f"exported DataRecord: does not start with field 3 discreteFeatures holding "
                              f"one entry for feature id {layout.key_id_feature_id if string_keys else layout.key_feature_id}"
                              f"{' (the key id)' if string_keys else ' (the key)'}")]
    with tf.control_dependencies(checks):
        key_ids = tf.reshape(tf.io.decode_raw(_substr(records, len(key_head), 8), tf.int64,
                                              little_endian=False), [-1])
        keys = key_ids
        pos = len(key_head) + 8
    if string_keys:
        with tf.control_dependencies(checks):
            checks = [_assert_all(tf.equal(_substr(records, pos, len(string_head)), string_head),
                                  f"exported DataRecord: field 3 is not followed by field 4 stringFeatures "
                                  f"holding one entry for key feature id {layout.key_feature_id}", key_ids)]
        with tf.control_dependencies(checks):
            pos += len(string_head)
            key_length = tf.reshape(tf.io.decode_raw(_substr(records, pos, 4), tf.int32, little_endian=False), [-1])
            checks = [_assert_all(tf.logical_and(key_length >= 0, tf.equal(lengths, fixed_length + key_length)),
                                  "exported DataRecord: the string key's length does not fit the record", key_ids)]
        with tf.control_dependencies(checks):
            keys = _substr(records, pos + 4, key_length)
            pos = pos + 4 + key_length
    with tf.control_dependencies(checks):
        checks = [_assert_all(tf.equal(_substr(records, pos, len(tensors_head)), tensors_head),
                              f"exported DataRecord: field {4 if string_keys else 3} is not followed by field 8 "
                              f"tensors map<i64, GeneralTensor> of exactly {n} entries", keys)]
    pos = tf.broadcast_to(tf.cast(pos + len(tensors_head), tf.int32), tf.shape(records))
    fid_table = tf.constant(fids)
    prefix_table = tf.constant(prefixes)
    suffix_table = tf.constant(suffixes)
    prefix_len = tf.constant([len(p) for p in prefixes], tf.int32)
    suffix_len = tf.constant([len(s) for s in suffixes], tf.int32)
    content_len = tf.constant([o.content_bytes for o in outputs], tf.int32)
    seen = tf.zeros(tf.stack([tf.size(records), n]), tf.bool)
    starts = tf.zeros(tf.stack([tf.size(records), n]), tf.int32)
    for entry in range(n):
        with tf.control_dependencies(checks):
            match = tf.equal(_substr(records, pos, _FID_BYTES)[:, tf.newaxis], fid_table[tf.newaxis, :])
            checks = [
                _assert_all(tf.reduce_any(match, axis=1),
                            f"exported DataRecord: tensors entry {entry} has a feature id that is not "
                            f"one of the export's outputs {[o.feature_id for o in outputs]}", keys),
                _assert_all(tf.logical_not(tf.reduce_any(match & seen, axis=1)),
                            f"exported DataRecord: tensors entry {entry} repeats a feature id", keys)]
        with tf.control_dependencies(checks):
            which = tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32)
            seen = seen | match
            after_fid = pos + _FID_BYTES
            checks = [_assert_all(
                tf.equal(_substr(records, after_fid, tf.gather(prefix_len, which)),
                         tf.gather(prefix_table, which)),
                f"exported DataRecord: tensors entry {entry} is not a rawTypedTensor of the export's "
                "dataType and content length for its feature", keys)]
        with tf.control_dependencies(checks):
            start = after_fid + tf.gather(prefix_len, which)
            starts = tf.where(match, start[:, tf.newaxis], starts)
            end = start + tf.gather(content_len, which)
            checks = [_assert_all(
                tf.equal(_substr(records, end, tf.gather(suffix_len, which)), tf.gather(suffix_table, which)),
                f"exported DataRecord: tensors entry {entry} does not end with the export's shape for "
                "its feature and the stop bytes", keys)]
            pos = end + tf.gather(suffix_len, which)
    with tf.control_dependencies(checks):
        checks = [_assert_all(tf.equal(_substr(records, pos, 1), _STOP),
                              "exported DataRecord: no stop byte after field 8 (another field follows)", keys)]
    with tf.control_dependencies(checks):
        values = []
        for j, output in enumerate(outputs):
            content = _substr(records, starts[:, j], output.content_bytes)
            flat = tf.io.decode_raw(content, _TF_DTYPES[output.dtype], little_endian=True)
            value = tf.reshape(flat, tf.concat([[-1], tf.constant(output.shape, tf.int32)], axis=0))
            values.append(tf.not_equal(value, 0) if output.dtype == "bool" else value)
        keys = tf.identity(keys)
    return keys, values[0], {o.name: v for o, v in zip(outputs[1:], values[1:])}


def export_dataset(export_dir: str, batch_size: Optional[int] = None, parse_batch: int = 1024,
                   num_parallel_reads: Optional[int] = None, deterministic: bool = True) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` over every record of a finished TFRecord export (plain or gzip).

    Elements are ``(key, embedding, others)``: the key (int64, or a string for an export of
    string keys), float32 ``[D]`` embedding and a dict
    {output name: tensor} of the other outputs; with ``batch_size``, each is batched (the last
    batch may be smaller). Records come shard by shard, in file order, unless
    ``num_parallel_reads`` interleaves the shards.

    Args:
      export_dir: the export's output directory (any path tf.io.gfile opens: local, gs://, ...).
      batch_size: batch the elements; None gives one element per record.
      parse_batch: records parsed per graph call when ``batch_size`` is None.
      num_parallel_reads: shards read at once (TFRecordDataset's argument); None reads in order.
      deterministic: keep the order of the records when reading in parallel.
    Raises:
      FileNotFoundError / ValueError: see ``read_export_layout``. Bad records raise
      tf.errors.InvalidArgumentError when the dataset is iterated.
    """
    layout = read_export_layout(export_dir)
    compression = "GZIP" if layout.compression == "gzip" else ""
    files = tf.data.Dataset.from_tensor_slices(list(layout.files)) if layout.files else \
        tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    records = tf.data.TFRecordDataset(files, compression_type=compression,
                                      num_parallel_reads=num_parallel_reads)
    options = tf.data.Options()
    options.deterministic = deterministic
    records = records.with_options(options)

    def parse(serialized):
        return parse_exported_records(serialized, layout)

    if batch_size is not None:
        return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return records.batch(parse_batch).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
