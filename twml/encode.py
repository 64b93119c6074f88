"""Batch encoder: B DataRecords from columnar numpy arrays, without a Python object per record.

A record is laid out by libtwml's writer rules (docs/FORMAT.md section 3): non-empty
fields in ascending field id, map entries in the order given, every non-string dense tensor a
``GeneralTensor.rawTypedTensor`` with little-endian content and its full shape, strings a
``stringTensor`` with shape.

The encoder sees a record as a row of *segments*: bytes that are the same for every record
(field headers, feature ids, dtypes, shapes), fixed-width per-record bytes (keys, numeric
tensor content) and, only for strings, variable-width per-record bytes. When no segment is
variable every record has the same length and the whole batch is one ``[B, L]`` uint8 array:
the constant bytes are a template row and the fixed-width segments are blocks written over it,
row by row in one native call (``twml.row_fill``), whatever B is.

The result is an ``EncodedRecords``: one contiguous buffer plus B+1 offsets, which the file
writers frame without copying each record into its own ``bytes`` first. ``encode_fixed_rows``
goes one step further for fixed-length records: it fills a ``[B, head + L + tail]`` array, so a
container's per-record header and footer (TFRecord's) are columns of the same pass and the
records are never copied into the framed layout.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from twml.feature_ids import resolve_feature_id
from twml.row_fill import Footer, fill_rows

__all__ = ["EncodedRecords", "TensorColumn", "StringColumn", "DTYPE_TO_DATA_TYPE", "encode_data_records",
           "encode_fixed_rows",
           "encode_continuous_records", "encode_tensor_record",
           "encode_batch_prediction_response"]

# Thrift binary protocol type ids.
T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64, T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST = (
    2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15)

# tensor.thrift DataType for each supported numpy dtype (strings go to StringTensor instead).
DTYPE_TO_DATA_TYPE = {
    np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int32): 2,
    np.dtype(np.int64): 3, np.dtype(np.uint8): 4, np.dtype(np.bool_): 7,
}
STRING_DATA_TYPE = 5

TensorColumn = Tuple[int, np.ndarray]
"""A (feature id, array) pair; dim 0 of the array is the record index."""


@dataclass(frozen=True)
class EncodedRecords:
    """B serialized records back to back in ``buffer``; record i is buffer[offsets[i]:offsets[i+1]]."""

    buffer: np.ndarray   # uint8, 1-D, contiguous
    offsets: np.ndarray  # int64, [B + 1], offsets[0] == 0, offsets[-1] == len(buffer)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for {n} records")
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        data = self.buffer.tobytes()
        bounds = self.offsets.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield data[start:end]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def fixed_length(self) -> Optional[int]:
        """The common record length when all records have one (the fast path), else None."""
        lengths = self.lengths
        if len(lengths) and (lengths == lengths[0]).all():
            return int(lengths[0])
        return None

    def to_list(self) -> List[bytes]:
        return list(self)

    def take(self, indices: np.ndarray) -> "EncodedRecords":
        """The records at ``indices``, in that order, as a new contiguous EncodedRecords."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(indices) == 0:
            return EncodedRecords(np.zeros(0, np.uint8), offsets)
        common = self.fixed_length()
        if common:
            rows = self.buffer.reshape(-1, common)[indices]
            return EncodedRecords(rows.reshape(-1), offsets)
        buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
        starts = self.offsets[indices].tolist()
        for dst, src, n in zip(offsets[:-1].tolist(), starts, lengths.tolist()):
            buffer[dst:dst + n] = self.buffer[src:src + n]
        return EncodedRecords(buffer, offsets)

    @classmethod
    def concat(cls, parts: Sequence["EncodedRecords"]) -> "EncodedRecords":
        if not parts:
            return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64))
        buffer = np.concatenate([p.buffer for p in parts])
        offsets = np.concatenate(
            [np.zeros(1, np.int64)]
            + [p.offsets[1:] + base for p, base in zip(parts, np.cumsum([0] + [p.nbytes for p in parts[:-1]]))])
        return cls(buffer, offsets.astype(np.int64))

    @classmethod
    def from_list(cls, records: Sequence[bytes]) -> "EncodedRecords":
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in records], out=offsets[1:])
        buffer = np.frombuffer(b"".join(records), dtype=np.uint8).copy()
        return cls(buffer, offsets)


# ----------------------------------------------------------------------------------------------
# Segments: the pieces a row of records is made of.

class _Const:
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class _Fixed:
    """Per-record bytes of one width: a [B, w] uint8 array."""
    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray):
        self.rows = rows


class _Variable:
    """Per-record bytes of differing widths: one bytes object per record."""
    __slots__ = ("items",)

    def __init__(self, items: List[bytes]):
        self.items = items


Segment = Union[_Const, _Fixed, _Variable]


def _field(ttype: int, fid: int) -> bytes:
    return struct.pack(">bh", ttype, fid)


def _i32(v: int) -> bytes:
    return struct.pack(">i", v)


def _i64(v: int) -> bytes:
    return struct.pack(">q", v)


def _shape_field(fid: int, shape: Sequence[int]) -> bytes:
    return (_field(T_LIST, fid) + struct.pack(">bi", T_I64, len(shape))
            + b"".join(_i64(int(d)) for d in shape))


def _as_be_rows(values: np.ndarray, be_dtype: str) -> np.ndarray:
    """[B] numbers -> [B, itemsize] uint8 of their big-endian bytes."""
    out = np.ascontiguousarray(values, dtype=np.dtype(be_dtype))
    return out.view(np.uint8).reshape(len(values), out.dtype.itemsize)


def _is_string_array(array: np.ndarray) -> bool:
    return array.dtype.kind in ("U", "S", "O")


def _string_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise TypeError(f"string tensor element must be str or bytes, got {type(value).__name__}")


def _tensor_segments(feature_id: int, array: np.ndarray) -> List[Segment]:
    """Segments of one map<i64, GeneralTensor> entry per record: id -> row i of ``array``."""
    batch = array.shape[0]
    row_shape = array.shape[1:]
    head = _i64(feature_id)
    if _is_string_array(array):
        count = int(np.prod(row_shape, dtype=np.int64))
        items = []
        flat = array.reshape(batch, count) if batch else array.reshape(0, count)
        for row in flat:
            parts = [_field(T_LIST, 1), struct.pack(">bi", T_STRING, count)]
            for value in row:
                data = _string_bytes(value)
                parts.append(_i32(len(data)))
                parts.append(data)
            items.append(b"".join(parts))
        return [_Const(head + _field(T_STRUCT, 2)), _Variable(items),
                _Const(_shape_field(2, row_shape) + b"\x00\x00")]
    dtype = array.dtype
    if dtype.kind in "fiu" and not dtype.isnative:   # e.g. '>f4' from a big-endian source
        dtype = dtype.newbyteorder("=")
    if dtype not in DTYPE_TO_DATA_TYPE:
        raise TypeError(f"feature {feature_id}: unsupported dtype {dtype}; supported are "
                        f"{sorted(str(d) for d in DTYPE_TO_DATA_TYPE)} and strings")
    if dtype == np.bool_:
        content = np.ascontiguousarray(array).view(np.uint8)
    else:
        content = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).view(np.uint8)
    nbytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    prefix = (head + _field(T_STRUCT, 1)
              + _field(T_I32, 1) + _i32(DTYPE_TO_DATA_TYPE[dtype])
              + _field(T_STRING, 2) + _i32(nbytes))
    suffix = _shape_field(3, row_shape) + b"\x00\x00"
    return [_Const(prefix), _Fixed(content.reshape(batch, nbytes)), _Const(suffix)]


def _merge_constants(segments: List[Segment]) -> List[Segment]:
    """Neighbouring constants joined (so the fill loop touches each column block once), empty ones dropped."""
    merged: List[Segment] = []
    for seg in segments:
        if isinstance(seg, _Const) and merged and isinstance(merged[-1], _Const):
            merged[-1] = _Const(merged[-1].data + seg.data)
        elif not (isinstance(seg, _Const) and not seg.data):
            merged.append(seg)
    return merged


def _width(seg: Segment) -> int:
    """Bytes per record of a constant or fixed-width segment."""
    return len(seg.data) if isinstance(seg, _Const) else seg.rows.shape[1]


def _fill_fixed(batch: int, merged: List[Segment], footer: Optional[Footer] = None) -> np.ndarray:
    """[B, L] uint8, row i = record i, from segments none of which is variable: the constant
    bytes are one template row, the fixed-width segments blocks written over it, and the
    footers (``row_fill.Footer``) hashed in the same pass (``twml.row_fill``)."""
    widths = [_width(seg) for seg in merged]
    template = np.zeros(sum(widths), dtype=np.uint8)
    blocks = []
    col = 0
    for seg, width in zip(merged, widths):
        if width:
            if isinstance(seg, _Const):
                template[col:col + width] = np.frombuffer(seg.data, dtype=np.uint8)
            else:
                blocks.append((col, seg.rows))
        col += width
    return fill_rows(template, blocks, batch, footer)


# Above this many bytes of padded layout, variable-length records are placed one by one instead.
_PADDED_LAYOUT_MAX_BYTES = 64 << 20


def _fill_variable(batch: int, merged: List[Segment]) -> EncodedRecords:
    """Records of differing lengths (some segment is variable).

    Vectorised: the records are first laid out as rows of a ``[B, W]`` array in which every
    segment has a fixed column range, a variable one as wide as its longest item, each item
    right-aligned in it (so the columns after it do not depend on its length); dropping the
    padding in front of each item (a boolean mask, row-major) leaves the records back to back.
    A layout larger than _PADDED_LAYOUT_MAX_BYTES (one very long string) is placed one segment
    at a time instead.
    """
    lengths = np.zeros(batch, dtype=np.int64)
    item_lengths = {}
    widths = []
    for k, seg in enumerate(merged):
        if isinstance(seg, _Variable):
            item_lengths[k] = np.fromiter((len(x) for x in seg.items), dtype=np.int64, count=batch)
            lengths += item_lengths[k]
            widths.append(int(item_lengths[k].max()) if batch else 0)
        else:
            lengths += _width(seg)
            widths.append(_width(seg))
    offsets = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = sum(widths)
    if batch * total > _PADDED_LAYOUT_MAX_BYTES:
        return EncodedRecords(_place_segments(batch, merged, item_lengths, offsets), offsets)
    padded = np.zeros((batch, total), dtype=np.uint8)
    keep = np.ones((batch, total), dtype=bool)
    col = 0
    for k, (seg, width) in enumerate(zip(merged, widths)):
        if isinstance(seg, _Variable):
            sizes = item_lengths[k]
            data = np.frombuffer(b"".join(seg.items), dtype=np.uint8)
            # Item i's bytes go to row i, columns [col + width - sizes[i], col + width).
            first = np.arange(batch, dtype=np.int64) * total + col + width - sizes
            starts = np.cumsum(sizes) - sizes
            padded.reshape(-1)[np.repeat(first - starts, sizes) + np.arange(len(data))] = data
            keep[:, col:col + width] = np.arange(width)[None, :] >= (width - sizes)[:, None]
        elif width:
            padded[:, col:col + width] = (np.frombuffer(seg.data, dtype=np.uint8) if isinstance(seg, _Const)
                                          else seg.rows)
        col += width
    return EncodedRecords(padded[keep], offsets)


def _place_segments(batch: int, merged: List[Segment], item_lengths, offsets: np.ndarray) -> np.ndarray:
    """The records back to back, each segment placed at its per-record offsets (no padded layout)."""
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    cursor = offsets[:-1].copy()
    for k, seg in enumerate(merged):
        if isinstance(seg, _Variable):
            for start, item in zip(cursor.tolist(), seg.items):
                out[start:start + len(item)] = np.frombuffer(item, dtype=np.uint8)
            cursor += item_lengths[k]
            continue
        width = _width(seg)
        data = np.frombuffer(seg.data, dtype=np.uint8)[None, :] if isinstance(seg, _Const) else seg.rows
        if width:
            out[cursor[:, None] + np.arange(width)] = data
        cursor += width
    return out


def _assemble(batch: int, segments: List[Segment]) -> EncodedRecords:
    merged = _merge_constants(segments)
    if any(isinstance(s, _Variable) for s in merged):
        return _fill_variable(batch, merged)
    rows = _fill_fixed(batch, merged)
    return EncodedRecords(rows.reshape(-1), np.arange(batch + 1, dtype=np.int64) * rows.shape[1])


def _resolve_ids(columns: Sequence[TensorColumn]) -> List[TensorColumn]:
    """(name or id, array) pairs -> (int64 id, array), refusing an id given twice (a map key)."""
    resolved = [(resolve_feature_id(fid), array) for fid, array in columns]
    seen = set()
    for (fid, _), (given, _) in zip(resolved, columns):
        if fid in seen:
            raise ValueError(f"feature {given!r} (id {fid}) is given more than once")
        seen.add(fid)
    return resolved


def _check_columns(tensors: Sequence[TensorColumn], batch: Optional[int]) -> int:
    for fid, array in tensors:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"feature {fid}: values must be a numpy array, got {type(array).__name__}")
        if array.ndim == 0:
            raise ValueError(f"feature {fid}: values need a batch dimension (dim 0), got a scalar")
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise ValueError(f"feature {fid}: dim 0 is {array.shape[0]}, expected {batch} "
                             "(all arrays and keys must have the same number of records)")
    if batch is None:
        raise ValueError("nothing to encode: give keys or at least one tensor")
    return batch


StringColumn = Tuple[int, Sequence[Union[str, bytes]]]
"""A (feature id, one string per record) pair: a stringFeatures (field 4) entry in every record."""


def _data_record_columns(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                         tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]],
                         strings: Sequence[StringColumn] = ()
                         ) -> Tuple[Optional[np.ndarray], Optional[int], List[TensorColumn], int]:
    """The checked inputs of a DataRecord batch: (keys, key id, [(id, array)], B)."""
    columns = _resolve_ids(list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors))
    batch = None
    for fid, values in strings:
        if batch is None:
            batch = len(values)
        elif len(values) != batch:
            raise ValueError(f"string feature {fid}: {len(values)} values, expected {batch} "
                             "(one per record)")
    if keys is not None:
        keys = np.asarray(keys)
        if keys.ndim != 1 or keys.dtype.kind not in "iu":
            raise TypeError(f"keys must be a 1-D integer array, got {keys.dtype} with shape {keys.shape}")
        if keys.dtype.kind == "u" and keys.dtype.itemsize >= 8 and len(keys):
            too_big = keys > np.uint64(np.iinfo(np.int64).max)
            if too_big.any():  # the key field is i64: such a key would be written as a negative one
                row = int(np.argmax(too_big))
                raise ValueError(f"key {int(keys[row])} (row {row}) does not fit the DataRecord key, an int64")
        if key_feature_id is None:
            raise ValueError("key_feature_id is required when keys are given")
        key_feature_id = resolve_feature_id(key_feature_id)
        if batch is not None and len(keys) != batch:
            raise ValueError(f"{len(keys)} keys but {batch} string values (one per record)")
        batch = len(keys)
    batch = _check_columns(columns, batch)
    return keys, key_feature_id, columns, batch


def _string_entries(values: Sequence[Union[str, bytes]]) -> List[Segment]:
    """Segments of one Thrift string per record (i32 length, then the bytes; str as UTF-8)."""
    data = [v if type(v) is bytes else _string_bytes(v) for v in values]
    lengths = np.fromiter(map(len, data), dtype=np.int64, count=len(data))
    return [_Fixed(_as_be_rows(lengths, ">i4")), _Variable(data)]


def _data_record_segments(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                          columns: List[TensorColumn], strings: Sequence[StringColumn] = ()) -> List[Segment]:
    segments: List[Segment] = []
    if keys is not None:
        segments += [
            _Const(_field(T_MAP, 3) + struct.pack(">bbi", T_I64, T_I64, 1) + _i64(key_feature_id)),
            _Fixed(_as_be_rows(keys, ">i8"))]
    if strings:
        segments.append(_Const(_field(T_MAP, 4) + struct.pack(">bbi", T_I64, T_STRING, len(strings))))
        for fid, values in strings:
            segments += [_Const(_i64(resolve_feature_id(fid)))] + _string_entries(values)
    if columns:
        segments.append(_Const(_field(T_MAP, 8) + struct.pack(">bbi", T_I64, T_STRUCT, len(columns))))
        for fid, array in columns:
            segments += _tensor_segments(fid, array)
    segments.append(_Const(b"\x00"))
    return segments


def encode_data_records(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                        tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]],
                        strings: Sequence[StringColumn] = ()) -> EncodedRecords:
    """Encode B DataRecords: record i = {3: {key_feature_id: keys[i]}, 4: {sid: strings[i]},
    8: {fid: row i, ...}}.

    Args:
      keys: int64 [B] user keys, or None to leave out field 3 (discreteFeatures).
      key_feature_id: the feature id (or name) the key is stored under (required with keys).
      strings: (feature id or name, B strings) pairs written as field 4 (stringFeatures) in the
        given order (a string user key); str values are written as UTF-8. Empty -> no field 4.
      tensors: (feature id or name, array) pairs, or a mapping, in the order the entries are
        written; each id at most once.
        Each array has dim 0 = B; row i (shape = dims[1:]) becomes a rawTypedTensor (numeric
        and bool) or a stringTensor (str / bytes / object arrays). Empty -> no field 8.
    Returns:
      EncodedRecords with B records.
    """
    keys, key_feature_id, columns, batch = _data_record_columns(keys, key_feature_id, tensors, strings)
    return _assemble(batch, _data_record_segments(keys, key_feature_id, columns, strings))


def encode_fixed_rows(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                      tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]],
                      head: Union[int, Callable[[int], bytes]] = 0, tail: int = 0,
                      crc_footer: bool = False) -> Optional[np.ndarray]:
    """``encode_data_records``' records as rows of one array, with room around each record.

    For a container that wraps every record (e.g. TFRecord's length header and crc footer):
    the encoder writes each record straight into its place, so framing needs no second copy.

    Args:
      keys, key_feature_id, tensors: as for ``encode_data_records``.
      head: bytes before each record: a count (that many zero bytes), or a function from the
        record length L to the bytes to put there (the same for every row; written in the
        same pass as the records' own constant bytes).
      tail: zero bytes after each record, for the caller to fill.
      crc_footer: the first 4 tail bytes (tail >= 4) := TFRecord's masked crc32c of the record,
        little-endian, hashed as each row is written (``twml.row_fill``).
    Returns:
      a C-ordered [B, H + L + tail] uint8 array, H = the head's size, with record i (the
      bytes ``encode_data_records(...)[i]``) in row i [H:H + L]; or None when the records
      have differing lengths (any string tensor), which this layout cannot hold.
    """
    if tail < 0 or (isinstance(head, int) and head < 0):
        raise ValueError(f"head and tail must be >= 0, got {head} and {tail}")
    if crc_footer and tail < 4:
        raise ValueError(f"a crc footer needs a tail of at least 4 bytes, got {tail}")
    keys, key_feature_id, columns, batch = _data_record_columns(keys, key_feature_id, tensors)
    if any(_is_string_array(array) for _, array in columns):
        return None
    merged = _merge_constants(_data_record_segments(keys, key_feature_id, columns))
    length = sum(map(_width, merged))
    head_bytes = bytes(head) if isinstance(head, int) else bytes(head(length))
    footer = (len(head_bytes), length) if crc_footer else None
    return _fill_fixed(batch, _merge_constants([_Const(head_bytes)] + merged + [_Const(bytes(tail))]), footer)


def encode_continuous_records(feature_ids: Sequence[int], values: np.ndarray) -> EncodedRecords:
    """B DataRecords holding only field 2: record i = {feature_ids[j]: double(values[i, j])}."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be [B, P], got shape {values.shape}")
    if values.dtype not in (np.float32, np.float64):
        raise TypeError(f"values must be float32 or float64, got {values.dtype}")
    ids = np.asarray([fid for fid, _ in _resolve_ids([(f, None) for f in feature_ids])], dtype=np.int64)
    batch, width = values.shape
    if len(ids) != width:
        raise ValueError(f"{len(ids)} feature ids but values have {width} columns (last dim)")
    if width == 0:
        return _assemble(batch, [_Const(b"\x00")])
    entries = np.empty((batch, width, 16), dtype=np.uint8)
    entries[:, :, :8] = ids.astype(">i8").view(np.uint8).reshape(width, 8)
    entries[:, :, 8:] = values.astype(">f8").view(np.uint8).reshape(batch, width, 8)
    return _assemble(batch, [
        _Const(_field(T_MAP, 2) + struct.pack(">bbi", T_I64, T_DOUBLE, width)),
        _Fixed(entries.reshape(batch, width * 16)),
        _Const(b"\x00")])


def encode_tensor_record(tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]]) -> bytes:
    """One DataRecord with field 8 only, each tensor whole (what DataRecordTensorWriter writes)."""
    columns = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    if not columns:
        return b"\x00"
    return encode_data_records(None, None, [(fid, np.asarray(a)[None]) for fid, a in columns])[0]


def encode_batch_prediction_response(records: EncodedRecords) -> bytes:
    """A BatchPredictionResponse {1: predictions} around already-encoded DataRecords."""
    head = _field(T_LIST, 1) + struct.pack(">bi", T_STRUCT, len(records))
    return head + records.buffer[:records.nbytes].tobytes() + b"\x00"
