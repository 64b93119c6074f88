"""CRC32C of every row of a ``[B, L]`` uint8 array in one native call, and TFRecord footers.

TFRecord needs one crc32c per record. ``google_crc32c`` hashes at ~20 GB/s but has no batch
API, so a batch of small records pays one Python call each (~0.2 us for a 590-byte record,
more than encoding it). CRC32C's Castagnoli polynomial is exactly what the SSE4.2 ``crc32``
instruction computes, so a numba kernel that emits LLVM's ``llvm.x86.sse42.crc32.*``
intrinsics hashes all rows in one call with the GIL released. It runs four rows side by side
so the instruction's 3-cycle latency is hidden (one instruction per cycle), and reads rows in
place, so a [B, L] slice of a wider framed [B, L + 16] array needs no copy.
``masked_crc32c_into_footer`` is the same hashing for a batch framed in place: it writes each
row's masked crc (what TFRecord stores) into the 4 bytes after the row's data, so framing a
fixed-length batch costs one native call and no temporary array; ``frame_records`` frames a batch
of records of differing lengths (string keys, string tensors) in one native call.

The backend is chosen once, at import: the numba kernel when numba imports and the CPU has
SSE4.2, else one ``google_crc32c.value`` call per row. The kernel is compiled (or loaded from
numba's on-disk cache, ~0.2 s) at the first call and checked against ``google_crc32c`` on a
few rows; should that fail, a warning is issued and the fallback is used from then on.
Both functions use the same backend.
"""
from __future__ import annotations

import platform
from typing import Callable, Optional

import google_crc32c
import numpy as np

from twml.native_check import FirstUseCheck

__all__ = ["crc32c_rows", "crc32c_rows_reference", "masked_crc32c_into_footer", "mask_crc32c",
           "frame_records", "BACKEND", "MASK_DELTA", "WRITE_MASKED_FOOTERS"]

MASK_DELTA = 0xA282EAD8  # TFRecord's crc mask: rotate right by 15, add this


def crc32c_rows_reference(rows: np.ndarray) -> np.ndarray:
    """The crc32c of each row of ``rows`` ([B, L] uint8), one ``google_crc32c`` call per row."""
    rows = _as_rows(rows, "crc32c_rows_reference")
    return np.fromiter(map(google_crc32c.value, rows), dtype=np.uint32, count=rows.shape[0])


def mask_crc32c(crcs: np.ndarray) -> np.ndarray:
    """TFRecord's mask, ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2^32, of each uint32 crc."""
    crcs = np.asarray(crcs).astype(np.uint32, copy=False)
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(MASK_DELTA)


def _as_rows(rows: np.ndarray, caller: str) -> np.ndarray:
    """``rows`` as a [B, L] uint8 array whose rows are each contiguous (copied if not)."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2:
        raise ValueError(f"{caller} expects a 2-D uint8 array [B, L], got {rows.dtype} "
                         f"with shape {rows.shape}")
    inner_contiguous = rows.shape[1] <= 1 or rows.strides[1] == 1
    forward_rows = rows.shape[0] <= 1 or rows.strides[0] >= 0
    if not (inner_contiguous and forward_rows):
        rows = np.ascontiguousarray(rows)
    return rows


def _native_supported() -> bool:
    """numba importable, an x86-64 CPU, and SSE4.2 on it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import llvmlite.binding as llvm
        import numba  # noqa: F401
    except ImportError:
        return False
    return bool(llvm.get_host_cpu_features().get("sse4.2", False))


_KERNEL: Optional[Callable] = None
_FOOTER_KERNEL: Optional[Callable] = None
WRITE_MASKED_FOOTERS: Optional[Callable] = None
"""A numba function for other kernels to inline (None without the native backend):
``WRITE_MASKED_FOOTERS(buf, s0, stride, length, batch)`` writes, for each row r < batch, the
masked crc32c of ``buf[s0 + r * stride:][:length]`` into the 4 bytes after it, little-endian.
A kernel that calls it must also pass its own first-call check: this module's does not cover it."""
_FRAME_KERNEL: Optional[Callable] = None

if _native_supported():
    # Module level, not in a function: numba's disk cache misses on every run for closures.
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)

    def _word_pointer(context, builder, array_type, array, index, word=_I64):
        data = context.make_array(array_type)(context, builder, array).data
        return builder.bitcast(builder.gep(data, [index]), word.as_pointer())

    @intrinsic
    def _load_word(typingctx, data, index):
        """The 8 bytes data[index:index + 8] as a little-endian uint64 (an unaligned load)."""
        def codegen(context, builder, signature, args):
            pointer = _word_pointer(context, builder, signature.args[0], *args)
            return builder.load(pointer, align=1)
        return types.uint64(data, types.intp), codegen

    @intrinsic
    def _store_u32_le(typingctx, data, index, value):
        """data[index:index + 4] := the low 32 bits of ``value``, little-endian (an unaligned store)."""
        def codegen(context, builder, signature, args):
            pointer = _word_pointer(context, builder, signature.args[0], args[0], args[1], _I32)
            builder.store(builder.trunc(args[2], _I32), pointer, align=1)
            return context.get_dummy_value()
        return types.none(data, types.intp, types.uint64), codegen

    @intrinsic
    def _crc32c_word(typingctx, crc, word):
        """The SSE4.2 crc32 instruction on 8 bytes."""
        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_I64, [_I64, _I64]), "llvm.x86.sse42.crc32.64.64")
            return builder.trunc(builder.call(fn, [builder.zext(args[0], _I64), args[1]]), _I32)
        return types.uint32(types.uint32, types.uint64), codegen

    @intrinsic
    def _crc32c_byte(typingctx, crc, byte):
        """The SSE4.2 crc32 instruction on 1 byte."""
        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_I32, [_I32, _I8]), "llvm.x86.sse42.crc32.32.8")
            return builder.call(fn, args)
        return types.uint32(types.uint32, types.uint8), codegen

    @njit(inline="always")
    def _masked(crc):
        """TFRecord's mask of a crc: rotate right by 15, add a constant, mod 2^32."""
        crc = np.uint64(crc)
        return (((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(MASK_DELTA)) \
            & np.uint64(0xFFFFFFFF)

    @njit(inline="always")
    def _crc_of_four_rows(src, s0, stride, length):
        """crc32c of src[s + 0:s + length] for s = s0, s0 + stride, s0 + 2 stride, s0 + 3 stride."""
        # CRC32C = the crc32 instruction chain started at ~0 and inverted at the end; four
        # independent chains per iteration hide the instruction's latency.
        start = np.uint32(0xFFFFFFFF)
        s1 = s0 + stride
        s2 = s1 + stride
        s3 = s2 + stride
        c0 = c1 = c2 = c3 = start
        words_end = length - length % 8
        for i in range(0, words_end, 8):
            # Intrinsics only: no call and no refcounting in the loop.
            c0 = _crc32c_word(c0, _load_word(src, s0 + i))
            c1 = _crc32c_word(c1, _load_word(src, s1 + i))
            c2 = _crc32c_word(c2, _load_word(src, s2 + i))
            c3 = _crc32c_word(c3, _load_word(src, s3 + i))
        for i in range(words_end, length):
            c0 = _crc32c_byte(c0, src[s0 + i])
            c1 = _crc32c_byte(c1, src[s1 + i])
            c2 = _crc32c_byte(c2, src[s2 + i])
            c3 = _crc32c_byte(c3, src[s3 + i])
        return c0 ^ start, c1 ^ start, c2 ^ start, c3 ^ start

    @njit(inline="always")
    def _crc_of_row(src, s0, length):
        start = np.uint32(0xFFFFFFFF)
        c0 = start
        words_end = length - length % 8
        for i in range(0, words_end, 8):
            c0 = _crc32c_word(c0, _load_word(src, s0 + i))
        for i in range(words_end, length):
            c0 = _crc32c_byte(c0, src[s0 + i])
        return c0 ^ start

    @njit(cache=True, nogil=True)
    def _crc32c_row_kernel(src, stride, length, crcs):
        """crcs[r] = crc32c(src[r * stride:r * stride + length]) for each r; src is flat uint8."""
        batch = crcs.shape[0]
        row = 0
        while row + 4 <= batch:
            c0, c1, c2, c3 = _crc_of_four_rows(src, row * stride, stride, length)
            crcs[row] = c0
            crcs[row + 1] = c1
            crcs[row + 2] = c2
            crcs[row + 3] = c3
            row += 4
        while row < batch:
            crcs[row] = _crc_of_row(src, row * stride, length)
            row += 1

    @njit(inline="always")
    def _write_masked_footers(buf, s0, stride, length, batch):
        """For each row r < batch: data = buf[s0 + r * stride:][:length]; the next 4 bytes :=
        masked crc32c(data), little-endian. ``buf`` is flat, writable uint8. A building block
        for other kernels (``twml.row_fill`` frames rows as it fills them)."""
        row = 0
        while row + 4 <= batch:
            s = s0 + row * stride
            c0, c1, c2, c3 = _crc_of_four_rows(buf, s, stride, length)
            _store_u32_le(buf, s + length, _masked(c0))
            _store_u32_le(buf, s + stride + length, _masked(c1))
            _store_u32_le(buf, s + 2 * stride + length, _masked(c2))
            _store_u32_le(buf, s + 3 * stride + length, _masked(c3))
            row += 4
        while row < batch:
            s = s0 + row * stride
            _store_u32_le(buf, s + length, _masked(_crc_of_row(buf, s, length)))
            row += 1

    @njit(cache=True, nogil=True)
    def _masked_footer_kernel(buf, batch, stride, length):
        """``_write_masked_footers`` from the first row of ``buf``."""
        _write_masked_footers(buf, 0, stride, length, batch)

    @njit(cache=True, nogil=True)
    def _frame_records_kernel(src, offsets, out):
        """TFRecord frames of the records src[offsets[i]:offsets[i + 1]], back to back in ``out``:
        u64 LE length, masked crc32c of those 8 bytes, the record, masked crc32c of the record."""
        pos = 0
        for i in range(offsets.shape[0] - 1):
            start = offsets[i]
            length = offsets[i + 1] - start
            value = np.uint64(length)
            for b in range(8):
                out[pos + b] = np.uint8((value >> np.uint64(8 * b)) & np.uint64(0xFF))
            _store_u32_le(out, pos + 8, _masked(_crc_of_row(out, pos, 8)))
            data = pos + 12
            out[data:data + length] = src[start:start + length]
            _store_u32_le(out, data + length, _masked(_crc_of_row(out, data, length)))
            pos = data + length + 4

    _KERNEL = _crc32c_row_kernel
    _FOOTER_KERNEL = _masked_footer_kernel
    _FRAME_KERNEL = _frame_records_kernel
    WRITE_MASKED_FOOTERS = _write_masked_footers

BACKEND = "numba-sse4.2" if _KERNEL is not None else "google-crc32c"
"""Which implementation the functions use: "numba-sse4.2" or "google-crc32c"."""



def _native(rows: np.ndarray) -> np.ndarray:
    crcs = np.zeros(rows.shape[0], dtype=np.uint32)   # crc32c of an empty row is 0
    if rows.size:
        _KERNEL(_flat_span(rows), rows.strides[0], rows.shape[1], crcs)
    return crcs


def _flat_span(rows: np.ndarray) -> np.ndarray:
    """A 1-D view of the bytes from the first row's start to the last row's end (no copy)."""
    span = (rows.shape[0] - 1) * rows.strides[0] + rows.shape[1]
    return np.lib.stride_tricks.as_strided(rows, shape=(span,), strides=(1,))


def _native_footers(framed: np.ndarray, start: int, length: int) -> None:
    batch = framed.shape[0]
    if batch:
        span = (batch - 1) * framed.strides[0] + length + 4
        flat = np.lib.stride_tricks.as_strided(framed[:, start:], shape=(span,), strides=(1,))
        _FOOTER_KERNEL(flat, batch, framed.strides[0], length)


def _reference_footers(framed: np.ndarray, start: int, length: int) -> None:
    crcs = crc32c_rows_reference(framed[:, start:start + length])
    footers = mask_crc32c(crcs).astype("<u4").view(np.uint8).reshape(-1, 4)
    framed[:, start + length:start + length + 4] = footers


def _first_call_check() -> Optional[str]:
    """Why the native kernels cannot be used (compile error or a wrong result), or None."""
    try:
        sample = np.random.default_rng(0).integers(0, 256, size=(7, 45), dtype=np.uint8)
        if not np.array_equal(_native(sample[:, :37]), crc32c_rows_reference(sample[:, :37])):
            return "crc32c_rows results differ from google_crc32c"
        native, reference = sample.copy(), sample.copy()
        _native_footers(native, 3, 37)
        _reference_footers(reference, 3, 37)
        if not np.array_equal(native, reference):
            return "footer results differ from google_crc32c"
        offsets = np.array([0, 0, 5, 45, 60], dtype=np.int64)
        flat = np.ascontiguousarray(sample).reshape(-1)
        if not np.array_equal(_native_frames(flat, offsets), _reference_frames(flat, offsets)):
            return "framed records differ from google_crc32c"
    except Exception as exc:   # a numba/LLVM failure must not stop the pipeline
        return f"{type(exc).__name__}: {exc}"
    return None


def _native_frames(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty(int(offsets[-1] - offsets[0]) + 16 * (len(offsets) - 1), dtype=np.uint8)
    if len(out):
        _FRAME_KERNEL(data, offsets, out)
    return out


def _reference_frames(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    parts = []
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        length = (end - start).to_bytes(8, "little")
        body = data[start:end].tobytes()
        parts += (length, _masked_crc(length), body, _masked_crc(body))
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF).to_bytes(4, "little")


def frame_records(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """TFRecord frames (u64 LE length, its masked crc32c, the record, the record's masked crc32c)
    of the records ``data[offsets[i]:offsets[i + 1]]``, back to back, records of any lengths.

    Args:
      data: 1-D uint8 array holding the records.
      offsets: int64 [B + 1], non-decreasing, within ``data``.
    Returns:
      a 1-D uint8 array of the B frames.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if len(offsets) < 1 or (np.diff(offsets) < 0).any() or offsets[0] < 0 or offsets[-1] > len(data):
        raise ValueError("frame_records expects non-decreasing offsets within the data")
    if _FRAME_KERNEL is not None and _NATIVE.passed():
        return _native_frames(data, offsets)
    return _reference_frames(data, offsets)


def _drop_kernels() -> None:
    global _KERNEL, _FOOTER_KERNEL, _FRAME_KERNEL, BACKEND
    _KERNEL, _FOOTER_KERNEL, _FRAME_KERNEL, BACKEND = None, None, None, "google-crc32c"


_NATIVE = FirstUseCheck("crc32c_batch", _first_call_check, "using google_crc32c", _drop_kernels)


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """The crc32c (Castagnoli, as ``google_crc32c.value``) of each row of ``rows``.

    Args:
      rows: a [B, L] uint8 array. Rows need not be adjacent (a [:, a:b] slice of a wider
        array is read in place); an array whose rows are not each contiguous is copied first.
    Returns:
      a [B] uint32 array; row i's crc at index i.
    Raises:
      ValueError if ``rows`` is not a 2-D uint8 array.
    """
    rows = _as_rows(rows, "crc32c_rows")
    if _KERNEL is not None and _NATIVE.passed():
        return _native(rows)
    return crc32c_rows_reference(rows)


def masked_crc32c_into_footer(framed: np.ndarray, start: int, length: int) -> None:
    """Write TFRecord data crcs in place: framed[r, start + length:][:4] := masked crc32c of
    framed[r, start:start + length], little-endian, for every row r.

    Args:
      framed: a writable [B, W] uint8 array whose rows are each contiguous (e.g. a C-ordered
        batch of framed records, one per row), W >= start + length + 4.
      start: where each row's data begins.
      length: the data length (the same for every row).
    Raises:
      ValueError if ``framed`` is not such an array or the footer does not fit in a row.
    """
    if not (isinstance(framed, np.ndarray) and framed.dtype == np.uint8 and framed.ndim == 2):
        raise ValueError("masked_crc32c_into_footer expects a 2-D uint8 array [B, W], got "
                         f"{getattr(framed, 'dtype', type(framed).__name__)} with shape "
                         f"{getattr(framed, 'shape', None)}")
    if not framed.flags.writeable:
        raise ValueError("masked_crc32c_into_footer writes in place: the array is read-only")
    batch, width = framed.shape
    if start < 0 or length < 0 or start + length + 4 > width:
        raise ValueError(f"a footer after data [{start}, {start + length}) needs rows of at least "
                         f"{start + length + 4} bytes, rows have {width}")
    rows_overlap = batch > 1 and framed.strides[0] < width
    if batch and ((width > 1 and framed.strides[1] != 1) or rows_overlap):
        raise ValueError("masked_crc32c_into_footer needs rows that are each contiguous and in "
                         f"order (strides {framed.strides}); pass a C-ordered array")
    if _FOOTER_KERNEL is not None and _NATIVE.passed():
        _native_footers(framed, start, length)
    else:
        _reference_footers(framed, start, length)
