"""Thrift binary encoding of DataRecords built from TensorFlow graph ops only.

The writer layers must run in a SavedModel that a serving system loads without our Python code,
so everything here is plain TF ops (no py_function / numpy_function). The encoding mirrors
``twml.encode`` (the numpy batch encoder) byte for byte; see docs/FORMAT.md section 3 for the rules.

Every record is a row of *pieces*, each one of:
  * ``bytes``: the same for every record and known at build time (field headers, big-endian
    feature ids, dtypes, static shapes), folded into uint8 constants;
  * a rank-1 uint8 tensor: the same for every record but known only at run time (a dynamic
    dim of a shape list, a content length that depends on it);
  * a rank-2 uint8 tensor ``[B, w]``: per-record bytes of one width (numeric tensor content);
  * a ``tf.RaggedTensor`` uint8 ``[B, (w)]``: per-record bytes of differing widths (strings).
``assemble_records`` broadcasts and concatenates the pieces along axis 1 and flattens them,
which gives the B records back to back.

Byte order: Thrift is big-endian; tensor content is little-endian. ``tf.bitcast`` exposes the
host's byte order, so this module assumes (and ``require_little_endian_host`` checks) a
little-endian host: content is bitcast as is and big-endian numbers are bitcast then reversed.
"""
from __future__ import annotations

import struct
import sys
from typing import Dict, List, Sequence, Union

import numpy as np
import tensorflow as tf

__all__ = ["Piece", "DATA_TYPES", "require_little_endian_host", "check_dtype", "field",
           "be_bytes", "tensor_entry_pieces", "map_header", "assemble_records",
           "batch_prediction_response", "continuous_record_pieces"]

Piece = Union[bytes, tf.Tensor, tf.RaggedTensor]

# Thrift binary protocol type ids.
T_DOUBLE, T_I32, T_I64, T_STRING, T_STRUCT, T_MAP, T_LIST = 4, 8, 10, 11, 12, 13, 15

# tensor.thrift DataType of each supported dense dtype (tf.string goes to StringTensor).
DATA_TYPES: Dict[tf.dtypes.DType, int] = {
    tf.float32: 0, tf.float64: 1, tf.int32: 2, tf.int64: 3, tf.uint8: 4, tf.bool: 7}
SUPPORTED_DTYPES = ("float32", "float64", "int32", "int64", "uint8", "bool", "string")

_INT32_MAX = (1 << 31) - 1


def require_little_endian_host() -> None:
    """Fail unless this host is little-endian (what tf.bitcast-based encoding relies on)."""
    if sys.byteorder != "little":
        raise RuntimeError(
            f"twml writer layers assume a little-endian host (tf.bitcast gives host byte order); "
            f"this host is {sys.byteorder}-endian")


def check_dtype(dtype: tf.dtypes.DType, what: str) -> None:
    """Raise a TypeError naming ``what`` unless ``dtype`` can be written as a tensor."""
    if dtype != tf.string and dtype not in DATA_TYPES:
        raise TypeError(f"{what}: unsupported dtype {dtype.name}; supported dtypes are "
                        f"{', '.join(SUPPORTED_DTYPES)}")


# ----------------------------------------------------------------------------------------------
# Constant (build-time) bytes.

def field(ttype: int, fid: int) -> bytes:
    """A Thrift field header: type byte and big-endian i16 field id."""
    return struct.pack(">bh", ttype, fid)


def map_header(fid: int, key_type: int, value_type: int, size: int) -> bytes:
    return field(T_MAP, fid) + struct.pack(">bbi", key_type, value_type, size)


def _i32(value: int, what: str) -> bytes:
    if not 0 <= value <= _INT32_MAX:
        raise ValueError(f"{what} is {value}, which does not fit a Thrift i32")
    return struct.pack(">i", value)


def _i64(value: int) -> bytes:
    return struct.pack(">q", value)


def _const(data: bytes) -> tf.Tensor:
    return tf.constant(np.frombuffer(data, dtype=np.uint8), dtype=tf.uint8)


# ----------------------------------------------------------------------------------------------
# Run-time numbers.

def be_bytes(values: tf.Tensor) -> tf.Tensor:
    """int32 / int64 / float64 ``[...]`` -> uint8 ``[..., itemsize]``, big-endian."""
    return tf.reverse(tf.bitcast(values, tf.uint8), axis=[-1])


def _row_dims(values: tf.Tensor) -> tf.Tensor:
    """int64 dims 1.. of ``values`` (the shape of one row)."""
    return tf.shape(values, out_type=tf.int64)[1:]


def _row_size(values: tf.Tensor) -> Union[int, tf.Tensor]:
    """Elements per row: a Python int when dims 1.. are static, else an int64 scalar tensor."""
    row_shape = values.shape[1:]
    if row_shape.is_fully_defined():
        return int(np.prod(row_shape.as_list(), dtype=np.int64))
    return tf.reduce_prod(_row_dims(values))


def _i32_piece(count: Union[int, tf.Tensor], what: str) -> Piece:
    """A big-endian i32 (a list size or a binary length), constant when ``count`` is static."""
    if isinstance(count, int):
        return _i32(count, what)
    checked = tf.debugging.assert_less_equal(
        count, tf.constant(_INT32_MAX, tf.int64), message=f"{what} does not fit a Thrift i32")
    with tf.control_dependencies([checked]):
        return be_bytes(tf.cast(count, tf.int32))


def _shape_pieces(values: tf.Tensor, fid: int) -> List[Piece]:
    """``fid: list<i64>`` holding the row shape (dims 1..); constant when those dims are static."""
    row_shape = values.shape[1:]
    head = field(T_LIST, fid) + struct.pack(">bi", T_I64, row_shape.rank)
    if row_shape.is_fully_defined():
        return [head + b"".join(_i64(d) for d in row_shape.as_list())]
    return [head, tf.reshape(be_bytes(_row_dims(values)), [-1])]


def _rows(flat_bytes: tf.Tensor, batch: tf.Tensor, width: Union[int, tf.Tensor]) -> tf.Tensor:
    # An explicit width (never -1): reshaping an empty batch cannot infer a missing dim.
    return tf.reshape(flat_bytes, tf.stack([tf.cast(batch, tf.int64), tf.cast(width, tf.int64)]))


def _content_rows(values: tf.Tensor, batch: tf.Tensor, row_bytes: Union[int, tf.Tensor]) -> tf.Tensor:
    """The little-endian row-major bytes of each row: uint8 ``[B, row_bytes]``."""
    if values.dtype == tf.bool:
        raw = tf.cast(values, tf.uint8)  # one byte per element, 0 or 1
    elif values.dtype == tf.uint8:
        raw = values
    else:
        raw = tf.bitcast(values, tf.uint8)  # host order, little-endian (checked at build)
    return _rows(raw, batch, row_bytes)


def _string_rows(values: tf.Tensor, batch: tf.Tensor, count: Union[int, tf.Tensor]) -> tf.RaggedTensor:
    """Per row, the Thrift body of ``list<string>``: for each string a BE i32 length + its bytes."""
    strings = tf.reshape(values, [-1])
    lengths = tf.strings.length(strings, unit="BYTE")
    # All string bytes back to back, without padding each string to the longest one.
    data = tf.io.decode_raw(tf.strings.reduce_join(strings), tf.uint8)
    texts = tf.RaggedTensor.from_row_lengths(data, tf.cast(lengths, tf.int64), validate=False)
    headers = tf.RaggedTensor.from_tensor(be_bytes(lengths))
    per_string = tf.concat([headers, texts], axis=1)
    per_row = tf.reduce_sum(_rows(tf.cast(lengths, tf.int64) + 4, batch, count), axis=1)
    return tf.RaggedTensor.from_row_lengths(per_string.flat_values, per_row, validate=False)


def tensor_entry_pieces(feature_id: int, values: tf.Tensor, batch: tf.Tensor) -> List[Piece]:
    """One ``map<i64, GeneralTensor>`` entry per record: ``feature_id`` -> row i of ``values``.

    Numeric and bool rows become ``rawTypedTensor`` {1: dataType, 2: LE content, 3: shape},
    string rows ``stringTensor`` {1: strings, 2: shape}; the shape is dims 1.. of ``values``.
    """
    check_dtype(values.dtype, f"feature {feature_id}")
    if values.shape.rank is None:
        raise ValueError(f"feature {feature_id}: values need a known rank")
    count = _row_size(values)
    head = _i64(feature_id)
    if values.dtype == tf.string:
        return ([head + field(T_STRUCT, 2) + field(T_LIST, 1) + struct.pack(">b", T_STRING),
                 _i32_piece(count, f"feature {feature_id}: strings per row"),
                 _string_rows(values, batch, count)]
                + _shape_pieces(values, 2) + [b"\x00\x00"])
    itemsize = values.dtype.size
    row_bytes = count * itemsize
    return ([head + field(T_STRUCT, 1) + field(T_I32, 1) + struct.pack(">i", DATA_TYPES[values.dtype])
             + field(T_STRING, 2),
             _i32_piece(row_bytes, f"feature {feature_id}: content bytes per row"),
             _content_rows(values, batch, row_bytes)]
            + _shape_pieces(values, 3) + [b"\x00\x00"])


def continuous_record_pieces(feature_ids: Sequence[int], values: tf.Tensor, batch: tf.Tensor) -> List[Piece]:
    """A whole DataRecord per row i of ``values`` [B, P]: {2: {feature_ids[j]: double(values[i, j])}}."""
    width = len(feature_ids)
    if width == 0:
        return [b"\x00"]
    ids = np.asarray(feature_ids, dtype=">i8").view(np.uint8).reshape(1, width, 8)
    doubles = be_bytes(tf.cast(values, tf.float64))  # [B, P, 8]
    keys = tf.broadcast_to(tf.constant(ids), tf.stack([batch, width, 8]))
    entries = tf.reshape(tf.concat([keys, doubles], axis=2), tf.stack([batch, width * 16]))
    return [map_header(2, T_I64, T_DOUBLE, width), entries, b"\x00"]


# ----------------------------------------------------------------------------------------------
# Assembly.

def _merge_constants(pieces: Sequence[Piece]) -> List[Piece]:
    merged: List[Piece] = []
    for piece in pieces:
        if isinstance(piece, bytes):
            if not piece:
                continue
            if merged and isinstance(merged[-1], bytes):
                merged[-1] += piece
                continue
        merged.append(piece)
    return merged


def assemble_records(batch: tf.Tensor, pieces: Sequence[Piece]) -> tf.Tensor:
    """The B records that ``pieces`` describe, back to back: uint8 1-D."""
    merged = _merge_constants(pieces)
    ragged = any(isinstance(p, tf.RaggedTensor) for p in merged)
    columns = []
    for piece in merged:
        if isinstance(piece, bytes):
            piece = _const(piece)
        if isinstance(piece, tf.Tensor) and piece.shape.rank == 1:
            width = piece.shape[0] if piece.shape[0] is not None else tf.shape(piece)[0]
            piece = tf.broadcast_to(piece[tf.newaxis, :], tf.stack([batch, width]))
        if ragged and not isinstance(piece, tf.RaggedTensor):
            piece = tf.RaggedTensor.from_tensor(piece)
        columns.append(piece)
    if not columns:
        return tf.zeros([0], tf.uint8)
    rows = tf.concat(columns, axis=1) if len(columns) > 1 else columns[0]
    return rows.flat_values if ragged else tf.reshape(rows, [-1])


def batch_prediction_response(batch: tf.Tensor, records: tf.Tensor) -> tf.Tensor:
    """``BatchPredictionResponse {1: predictions}`` around B encoded records: uint8 ``[1, len]``."""
    head = _const(field(T_LIST, 1) + struct.pack(">b", T_STRUCT))
    size = be_bytes(tf.cast(batch, tf.int32))
    out = tf.concat([head, size, records, _const(b"\x00")], axis=0)
    return out[tf.newaxis, :]
