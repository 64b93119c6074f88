"""Decoders: DataRecord / BatchPredictionResponse bytes -> thriftpy2 objects, tensors -> numpy.

Untrusted bytes are first walked by a bounds-checked validator (``validate_struct``), a small
pure-Python reader of the Thrift binary protocol that knows the schema: every length and count
is checked against the bytes left (times the smallest wire size of an element), nesting is
limited, type ids must be real Thrift types and match the schema, and nothing may follow the
outer struct. Only then does thriftpy2's C protocol build the objects, so hostile input cannot
make it allocate more than the input holds or read past the end. Every failure is a
``RecordFormatError`` carrying the path and offset given by the caller.

``decode_embeddings`` is the batch decoder for exported records: records laid out exactly as
``encode_data_records`` writes them are sliced out of a ``[B, L]`` byte view with numpy; any
other conformant record (other map order, extra features, FloatTensor lists, ...) goes through
the general decoder one by one.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from twml.encode import EncodedRecords, encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import resolve_feature_id
from twml.schema import data_thrift, deserialize, prediction_service_thrift

__all__ = ["MAX_DEPTH", "validate_struct", "decode_data_record", "decode_batch_prediction_response",
           "tensor_to_numpy", "decode_embeddings"]

# Thrift binary protocol type ids.
T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64, T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST = (
    0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15)
_T_BINARY = 18  # thriftpy2's spec id for `binary`; the same wire type as string
_TYPE_NAMES = {T_BOOL: "bool", T_BYTE: "byte", T_DOUBLE: "double", T_I16: "i16", T_I32: "i32",
               T_I64: "i64", T_STRING: "string", T_STRUCT: "struct", T_MAP: "map", T_SET: "set",
               T_LIST: "list"}
_FIXED_SIZE = {T_BOOL: 1, T_BYTE: 1, T_DOUBLE: 8, T_I16: 2, T_I32: 4, T_I64: 8}
# Smallest wire size of one value: what a count is checked against before it is trusted.
_MIN_SIZE = {**_FIXED_SIZE, T_STRING: 4, T_STRUCT: 1, T_MAP: 6, T_SET: 5, T_LIST: 5}
# Well under thriftpy2's own limit (64), so thriftpy2 never meets a nesting it refuses.
MAX_DEPTH = 32

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


# ----------------------------------------------------------------------------------------------
# Schema-aware validator

@dataclass(frozen=True)
class _Type:
    """A Thrift type as the validator sees it: wire type id plus what it contains (None = any)."""
    ttype: int
    struct: Optional["_Struct"] = None          # T_STRUCT with a known schema
    elem: Optional["_Type"] = None              # T_LIST / T_SET element, T_MAP value
    key: Optional["_Type"] = None               # T_MAP key


@dataclass(frozen=True)
class _Struct:
    name: str
    fields: Dict[int, Tuple[str, _Type]]
    required: Dict[int, str]   # field id -> name of the fields the IDL marks required


class _Bad(Exception):
    """Internal: a problem at ``pos`` (relative to the start of the validated bytes)."""

    def __init__(self, pos: int, message: str):
        super().__init__(message)
        self.pos = pos
        self.message = message


def _spec_type(ttype: int, spec) -> _Type:
    """A thriftpy2 thrift_spec entry (type id + nested spec) -> _Type."""
    if ttype == _T_BINARY:
        return _Type(T_STRING)
    if ttype == T_STRUCT:
        return _Type(T_STRUCT, struct=_struct_schema(spec))
    if ttype in (T_LIST, T_SET):
        return _Type(ttype, elem=_nested(spec))
    if ttype == T_MAP:
        return _Type(T_MAP, key=_nested(spec[0]), elem=_nested(spec[1]))
    return _Type(ttype)  # numbers; an enum's spec (its class) does not change the wire type


def _nested(spec) -> _Type:
    return _spec_type(spec, None) if isinstance(spec, int) else _spec_type(spec[0], spec[1])


@functools.lru_cache(maxsize=None)
def _struct_schema(cls) -> _Struct:
    fields, required = {}, {}
    schema = _Struct(cls.__name__, fields, required)
    for fid, field_spec in cls.thrift_spec.items():   # filled after creation: specs may recurse
        fields[fid] = (field_spec[1], _spec_type(field_spec[0], field_spec[2] if len(field_spec) > 3 else None))
        if field_spec[-1] is True:
            required[fid] = field_spec[1]
    return schema


def _check_type_id(ttype: int, pos: int) -> None:
    if ttype not in _MIN_SIZE:
        raise _Bad(pos, f"invalid Thrift type id {ttype}")


def _element_type(wire: int, expected: Optional[_Type], pos: int, what: str) -> _Type:
    _check_type_id(wire, pos)
    if expected is None:            # inside a field the schema does not know: take the wire's word
        return _Type(wire)
    if wire != expected.ttype:
        raise _Bad(pos, f"{what} has type {_TYPE_NAMES[wire]}, the schema says {_TYPE_NAMES[expected.ttype]}")
    return expected


class _Walker:
    """One pass over ``data`` that checks every value against the bytes left and the schema.

    ``structs_left`` caps the schema structs (each becomes a Python object of a few hundred
    bytes in thriftpy2) at one per ``BYTES_PER_STRUCT`` input bytes, so a run of empty structs
    cannot blow up into objects hundreds of times the input's size. Real records spend well
    over that per struct.
    """

    BYTES_PER_STRUCT = 4

    def __init__(self, data: bytes):
        self.data = data
        self.end = len(data)
        self.structs_left = self.end // self.BYTES_PER_STRUCT + 64

    def count(self, pos: int, per_item: int, what: str) -> int:
        if pos + 4 > self.end:
            raise _Bad(pos, f"truncated {what} size")
        (count,) = _I32.unpack_from(self.data, pos)
        if count < 0:
            raise _Bad(pos, f"negative {what} size {count}")
        left = self.end - pos - 4
        if count * per_item > left:
            raise _Bad(pos, f"{what} of {count} elements needs at least {count * per_item} bytes, {left} left")
        return count

    def value(self, pos: int, expected: _Type, depth: int) -> int:
        """Check one value of type ``expected`` starting at ``pos``; return the position after it."""
        ttype = expected.ttype
        size = _FIXED_SIZE.get(ttype)
        if size is not None:
            if pos + size > self.end:
                raise _Bad(pos, f"truncated {_TYPE_NAMES[ttype]}")
            return pos + size
        if ttype == T_STRING:
            return pos + 4 + self.count(pos, 1, "string")
        if depth >= MAX_DEPTH:
            raise _Bad(pos, f"nesting deeper than {MAX_DEPTH} levels")
        if ttype == T_STRUCT:
            return self.struct(pos, expected.struct, depth + 1)
        data = self.data
        if ttype == T_MAP:
            if pos + 2 > self.end:
                raise _Bad(pos, "truncated map header")
            key = _element_type(data[pos], expected.key, pos, "map key")
            value = _element_type(data[pos + 1], expected.elem, pos + 1, "map value")
            count = self.count(pos + 2, _MIN_SIZE[key.ttype] + _MIN_SIZE[value.ttype], "map")
            pos += 6
            fixed_key, fixed_value = _FIXED_SIZE.get(key.ttype), _FIXED_SIZE.get(value.ttype)
            if fixed_key and fixed_value:
                return pos + count * (fixed_key + fixed_value)   # bounds checked by count()
            for _ in range(count):
                pos = self.value(pos, key, depth + 1)
                pos = self.value(pos, value, depth + 1)
            return pos
        # list or set
        if pos + 1 > self.end:
            raise _Bad(pos, "truncated list header")
        elem = _element_type(data[pos], expected.elem, pos, "list element")
        count = self.count(pos + 1, _MIN_SIZE[elem.ttype], "list")
        pos += 5
        fixed = _FIXED_SIZE.get(elem.ttype)
        if fixed:
            return pos + count * fixed
        for _ in range(count):
            pos = self.value(pos, elem, depth + 1)
        return pos

    def struct(self, pos: int, schema: Optional[_Struct], depth: int) -> int:
        start = pos
        missing = None
        if schema is not None:       # thriftpy2 builds an object for it (unknown ones it skips)
            self.structs_left -= 1
            if self.structs_left < 0:
                raise _Bad(pos, f"more than one struct per {self.BYTES_PER_STRUCT} bytes of input "
                                "(a run of empty structs)")
            if schema.required:
                missing = set(schema.required)
        data, end = self.data, self.end
        while True:
            if pos >= end:
                raise _Bad(pos, f"truncated {schema.name if schema else 'struct'}: no field stop")
            ftype = data[pos]
            if ftype == T_STOP:
                if missing:
                    names = ", ".join(schema.required[f] for f in sorted(missing))
                    raise _Bad(start, f"{schema.name} lacks required field(s) {names}")
                return pos + 1
            _check_type_id(ftype, pos)
            if pos + 3 > end:
                raise _Bad(pos, "truncated field header")
            (fid,) = _I16.unpack_from(data, pos + 1)
            known = schema.fields.get(fid) if schema is not None else None
            if known is None:
                value_type = _Type(ftype)   # unknown field: skipped (and checked) by its wire type
            else:
                name, value_type = known
                if ftype != value_type.ttype:
                    raise _Bad(pos, f"{schema.name}.{name} (field {fid}) has type {_TYPE_NAMES[ftype]}, "
                                    f"the schema says {_TYPE_NAMES[value_type.ttype]}")
                if missing:
                    missing.discard(fid)
            pos = self.value(pos + 3, value_type, depth)


def validate_struct(data: bytes, cls, path: Optional[str] = None, offset: Optional[int] = None) -> None:
    """Check that ``data`` is exactly one well-formed Thrift binary struct of thriftpy2 class ``cls``.

    Fields the schema does not know are allowed (and checked as generic Thrift values); fields
    it knows must carry the schema's types, and required fields must be present. Raises
    RecordFormatError with ``path`` and the absolute offset (``offset`` + position in ``data``)
    of the first problem.
    """
    base = offset or 0
    try:
        if not isinstance(data, bytes):
            data = bytes(data)
        if not data:
            raise _Bad(0, "empty input")
        pos = _Walker(data).struct(0, _struct_schema(cls), 1)
        if pos != len(data):
            raise _Bad(pos, f"{len(data) - pos} bytes of trailing garbage after the {cls.__name__}")
    except _Bad as bad:
        raise RecordFormatError(f"invalid {cls.__name__}: {bad.message}", path, base + bad.pos) from None


def _decode(data: bytes, cls, path: Optional[str], offset: Optional[int]):
    data = bytes(data)
    validate_struct(data, cls, path, offset)
    try:
        return deserialize(cls, data)
    except Exception as err:   # validated bytes should not get here; keep the one error type
        raise RecordFormatError(f"invalid {cls.__name__}: {type(err).__name__}: {err}", path,
                                offset) from err


def decode_data_record(data: bytes, path: Optional[str] = None, offset: Optional[int] = None):
    """Validate and parse one DataRecord -> ``data_thrift.DataRecord``.

    Args:
      data: the serialized record (bytes or any buffer).
      path, offset: where the record came from, for error messages (offset of its first byte).
    Raises:
      RecordFormatError with path and offset on any malformed input.
    """
    return _decode(data, data_thrift.DataRecord, path, offset)


def decode_batch_prediction_response(data: bytes, path: Optional[str] = None, offset: Optional[int] = None):
    """Validate and parse one BatchPredictionResponse -> ``prediction_service_thrift.BatchPredictionResponse``."""
    return _decode(data, prediction_service_thrift.BatchPredictionResponse, path, offset)


# ----------------------------------------------------------------------------------------------
# Tensors

# DataType -> little-endian numpy dtype of a rawTypedTensor's content (STRING has no raw form).
_RAW_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<i4"), 3: np.dtype("<i8"),
               4: np.dtype("u1"), 6: np.dtype("i1"), 7: np.dtype("u1")}
_BOOL_DATA_TYPE = 7
# GeneralTensor member -> (list attribute, numpy dtype)
_LIST_TENSORS = {"int32Tensor": ("ints", np.int32), "int64Tensor": ("longs", np.int64),
                 "floatTensor": ("floats", np.float32), "doubleTensor": ("doubles", np.float64),
                 "boolTensor": ("booleans", np.bool_)}
_VARIANTS = ("rawTypedTensor", "stringTensor", "int32Tensor", "int64Tensor", "floatTensor",
             "doubleTensor", "boolTensor", "binaryTensor")


def tensor_to_numpy(general_tensor) -> np.ndarray:
    """A ``GeneralTensor`` (any variant) -> numpy array, reshaped by its shape when it has one.

    rawTypedTensor gives the dtype of its DataType (BOOL: one byte per element -> bool, BYTE ->
    int8) in native byte order; int32/int64/float/double/bool tensors give int32/int64/float32/
    float64/bool; stringTensor gives an object array of str (bytes where not valid UTF-8, as
    thriftpy2 returns them); binaryTensor an object array of bytes. Raises RecordFormatError
    when the union holds no or several variants, the dtype is unknown, or sizes disagree.
    """
    present = [name for name in _VARIANTS if getattr(general_tensor, name, None) is not None]
    if len(present) != 1:
        raise RecordFormatError(f"GeneralTensor must hold exactly one variant, found {present or 'none'}")
    variant = present[0]
    tensor = getattr(general_tensor, variant)
    if variant == "rawTypedTensor":
        dtype = _RAW_DTYPES.get(tensor.dataType)
        if dtype is None:
            raise RecordFormatError(f"rawTypedTensor has unsupported dataType {tensor.dataType}")
        content = tensor.content
        if content is None:
            raise RecordFormatError("rawTypedTensor has no content")
        if isinstance(content, str):
            content = content.encode("utf-8")
        if len(content) % dtype.itemsize:
            raise RecordFormatError(f"rawTypedTensor content of {len(content)} bytes is not a whole "
                                    f"number of {dtype.itemsize}-byte elements")
        flat = np.frombuffer(content, dtype=dtype)
        if tensor.dataType == _BOOL_DATA_TYPE:
            flat = flat != 0
        else:
            flat = flat.astype(dtype.newbyteorder("="))
    elif variant in _LIST_TENSORS:
        attr, dtype = _LIST_TENSORS[variant]
        values = getattr(tensor, attr)
        if values is None:
            raise RecordFormatError(f"{variant} has no {attr}")
        flat = np.array(values, dtype=np.float64 if dtype == np.float32 else dtype).astype(dtype)
    else:
        values = tensor.strings if variant == "stringTensor" else tensor.binaries
        if values is None:
            raise RecordFormatError(f"{variant} has no values")
        flat = np.empty(len(values), dtype=object)
        flat[:] = values
    shape = tensor.shape
    if shape is None:
        return flat
    if any(d < 0 for d in shape):
        raise RecordFormatError(f"{variant} has a negative dimension in shape {list(shape)}")
    if int(np.prod(shape, dtype=object)) != flat.size:
        raise RecordFormatError(f"{variant} has {flat.size} elements but shape {list(shape)}")
    return flat.reshape(shape)


# ----------------------------------------------------------------------------------------------
# Batch decoder for exported embedding records

@dataclass(frozen=True)
class _Layout:
    """Where the per-record bytes sit in a record as encode_data_records writes it."""
    length: int
    template: np.ndarray     # uint8 [length]: a record with key 0 and an all-zero embedding
    key: slice
    embedding: slice


@functools.lru_cache(maxsize=256)
def _layout(key_feature_id: int, embedding_feature_id: int, dim: int) -> Optional[_Layout]:
    # Two records that differ in every key and embedding byte: the differing bytes are the
    # per-record ones, the rest must match exactly.
    zeros = encode_data_records(np.zeros(1, np.int64), key_feature_id,
                                [(embedding_feature_id, np.zeros((1, dim), np.float32))])
    ones = encode_data_records(np.full(1, -1, np.int64), key_feature_id,
                               [(embedding_feature_id, np.full((1, dim), 0xFFFFFFFF, np.uint32).view(np.float32))])
    a, b = zeros.buffer, ones.buffer
    varying = np.flatnonzero(a != b)
    key_start = int(varying[0])
    emb_start = int(varying[8]) if dim else key_start + 8
    expected = np.r_[key_start:key_start + 8, emb_start:emb_start + 4 * dim]
    if not np.array_equal(varying, expected):   # not two plain blocks: no fast path
        return None
    return _Layout(len(a), a, slice(key_start, key_start + 8), slice(emb_start, emb_start + 4 * dim))


def _fast_layout(length: int, key_feature_id: int, embedding_feature_id: int) -> Optional[_Layout]:
    empty = _layout(key_feature_id, embedding_feature_id, 0)
    if empty is None or length < empty.length or (length - empty.length) % 4:
        return None
    return _layout(key_feature_id, embedding_feature_id, (length - empty.length) // 4)


def _matching_rows(rows: np.ndarray, layout: _Layout) -> np.ndarray:
    """bool [B]: rows whose constant bytes equal the template's."""
    t = layout.template
    ok = np.ones(rows.shape[0], dtype=bool)
    for part in (slice(0, layout.key.start), slice(layout.key.stop, layout.embedding.start),
                 slice(layout.embedding.stop, layout.length)):
        if part.stop > part.start:
            differs = rows[:, part] != t[part]
            if differs.any():   # a whole-array test first: row-wise reductions are the slow part
                ok &= ~differs.any(axis=1)
    return ok


def decode_embeddings(records: Union[EncodedRecords, Sequence[bytes]], key_feature_id: Union[int, str],
                      embedding_feature_id: Union[int, str], path: Optional[str] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """(keys int64 [B], embeddings float32 [B, D]) out of B exported DataRecords.

    Args:
      records: an EncodedRecords or a sequence of serialized records.
      key_feature_id: id (or name) of the discreteFeatures entry holding the key.
      embedding_feature_id: id (or name) of the tensors entry holding the 1-D embedding
        (rawTypedTensor FLOAT or DOUBLE, or float/double/int list tensors; cast to float32).
      path: the file the records came from, for error messages.
    Raises:
      RecordFormatError naming the record index (and its byte offset in ``records``) when a
      record is malformed, lacks the key or the embedding, or its dimension differs.
    """
    key_id = resolve_feature_id(key_feature_id)
    emb_id = resolve_feature_id(embedding_feature_id)
    if not isinstance(records, EncodedRecords):
        records = EncodedRecords.from_list([bytes(r) for r in records])
    batch = len(records)
    if batch == 0:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    keys = np.empty(batch, np.int64)
    embeddings: Optional[np.ndarray] = None
    slow = np.arange(batch)
    length = records.fixed_length()
    layout = _fast_layout(length, key_id, emb_id) if length is not None else None
    if layout is not None:
        rows = records.buffer[:batch * length].reshape(batch, length)
        ok = _matching_rows(rows, layout)
        if ok.all():   # the usual case: no row copies, one strided copy per column
            keys[:] = np.ascontiguousarray(rows[:, layout.key]).view(">i8")[:, 0]
            embeddings = np.ascontiguousarray(rows[:, layout.embedding]).view("<f4").astype(np.float32)
            return keys, embeddings
        dim = (layout.embedding.stop - layout.embedding.start) // 4
        embeddings = np.empty((batch, dim), np.float32)
        fast = rows[ok]
        keys[ok] = np.ascontiguousarray(fast[:, layout.key]).view(">i8")[:, 0]
        embeddings[ok] = np.ascontiguousarray(fast[:, layout.embedding]).view("<f4")
        slow = np.flatnonzero(~ok)
    offsets = records.offsets
    for i in slow.tolist():
        start = int(offsets[i])
        key, vector = _record_embedding(records[i], key_id, emb_id, i, path, start)
        if embeddings is None:
            embeddings = np.empty((batch, vector.shape[0]), np.float32)
        elif vector.shape[0] != embeddings.shape[1]:
            raise RecordFormatError(f"record {i}: embedding has dimension {vector.shape[0]}, "
                                    f"other records have {embeddings.shape[1]}", path, start)
        keys[i] = key
        embeddings[i] = vector
    return keys, embeddings


def _record_embedding(data: bytes, key_id: int, emb_id: int, index: int, path: Optional[str],
                      offset: int) -> Tuple[int, np.ndarray]:
    try:
        record = decode_data_record(data, path, offset)
    except RecordFormatError as err:
        raise RecordFormatError(f"record {index}: {err.reason}", err.path, err.offset) from None
    key = (record.discreteFeatures or {}).get(key_id)
    if key is None:
        raise RecordFormatError(f"record {index}: no discreteFeatures entry for key feature id {key_id}",
                                path, offset)
    tensor = (record.tensors or {}).get(emb_id)
    if tensor is None:
        raise RecordFormatError(f"record {index}: no tensors entry for embedding feature id {emb_id}",
                                path, offset)
    try:
        vector = tensor_to_numpy(tensor)
    except RecordFormatError as err:
        raise RecordFormatError(f"record {index}: embedding {emb_id}: {err.reason}", path, offset) from None
    if vector.ndim != 1 or vector.dtype.kind not in "fiub":
        raise RecordFormatError(f"record {index}: embedding {emb_id} must be a 1-D numeric tensor, "
                                f"got {vector.dtype} with shape {vector.shape}", path, offset)
    return key, vector.astype(np.float32)
