"""Fixed-length records as the rows of one array, each row written once, in one native call.

``fill_rows(template, blocks, batch[, footer])`` returns a ``[B, L]`` uint8 array whose row i is
``template`` with, for each block ``(col, rows)``, ``rows[i]`` at columns ``[col, col + w)``; with
a footer, each row also gets TFRecord's masked crc32c of a span of it in the 4 bytes after the
span. It is how ``twml.encode`` lays out fixed-length records: the constant bytes (field headers,
feature ids, shapes, a container's frame header) are the template, the keys and tensor contents
are the blocks, and ``twml.io.tfrecord`` frames records in the same pass.

Why a kernel. numpy fills such an array with one strided assignment per block, each a pass over
the whole output (2.4 MB for 4096 records of 590 bytes, more than a core's L2 cache), and the
crc footers are one more pass. The time then follows the memory system more than the core: a
CPU with fast cores and a slow cache hierarchy (the Intel Xeon 4th generation of
benchmarks/README.md) encoded at about 0.6 of the speed it can. The numba kernel writes row by
row: the template, then the blocks over it while the row is in L1, then (16 rows at a time)
their crcs, so the output goes to memory once. Its loop indices are unsigned: with signed
indices numba checks every access for a negative (wrap-around) index, which keeps LLVM from
turning the byte loops into vector copies (about 1 ns a byte instead of memcpy's speed).

The kernels are compiled (or loaded from numba's on-disk cache) at the first call for each number
of blocks and checked against the numpy fill once; should that check fail, a warning is issued
and the numpy fill (``fill_rows_reference``) is used from then on, as it is without numba.
Without the native crc32c (no SSE4.2) the footers are a second pass
(``crc32c_batch.masked_crc32c_into_footer``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from twml.io.crc32c_batch import WRITE_MASKED_FOOTERS, masked_crc32c_into_footer
from twml.native_check import FirstUseCheck

__all__ = ["fill_rows", "fill_rows_reference", "Block", "Footer", "BACKEND"]

Block = Tuple[int, np.ndarray]
"""(first column, [B, w] uint8 rows) of one fixed-width per-record block."""

Footer = Tuple[int, int]
"""(start, length): each row's bytes [start, start + length) get TFRecord's masked crc32c,
little-endian, in the 4 bytes after them."""

_CHUNK = 16   # rows filled before their footers are hashed: 16 records of ~600 bytes stay in L1


def fill_rows_reference(template: np.ndarray, blocks: Sequence[Block], batch: int,
                        footer: Optional[Footer] = None) -> np.ndarray:
    """``fill_rows`` in numpy: the template broadcast, one strided assignment per block, then
    the footers in a second pass (``crc32c_batch.masked_crc32c_into_footer``)."""
    out = np.empty((batch, len(template)), dtype=np.uint8)
    out[:] = template
    for col, rows in blocks:
        out[:, col:col + rows.shape[1]] = rows
    if footer is not None:
        masked_crc32c_into_footer(out, *footer)
    return out


_KERNEL: Optional[Callable] = None
_FRAMED_KERNEL: Optional[Callable] = None

try:
    from numba import njit, uint64
except ImportError:   # pragma: no cover - numba is a dependency; the numpy fill covers its absence
    njit = None

if njit is not None:
    @njit(inline="always")
    def _fill_row(out, i, template, cols, widths, sources):
        """Row i of out (flat, rows of len(template) bytes): the template, then each block."""
        length = uint64(template.shape[0])
        row = i * length
        for b in range(length):
            out[row + b] = template[b]
        for j in range(len(sources)):
            source = sources[j]
            width = uint64(widths[j])
            start = row + uint64(cols[j])
            first = i * width
            for b in range(width):
                out[start + b] = source[first + b]

    @njit(cache=True, nogil=True)
    def _fill_kernel(out, template, cols, widths, sources, batch):
        """out[i * L:(i + 1) * L] := template, then sources[j][i * w_j:(i + 1) * w_j] at column
        cols[j], for each row i < batch (L = len(template); all arrays flat uint8)."""
        for i in range(uint64(batch)):
            _fill_row(out, i, template, cols, widths, sources)

    if WRITE_MASKED_FOOTERS is not None:
        _write_masked_footers = WRITE_MASKED_FOOTERS

        @njit(cache=True, nogil=True)
        def _framed_fill_kernel(out, template, cols, widths, sources, batch, start, length):
            """``_fill_kernel``, and each row's masked crc32c of [start, start + length) written
            after it, _CHUNK rows at a time while they are still in L1."""
            stride = template.shape[0]
            for first in range(0, batch, _CHUNK):
                end = min(first + _CHUNK, batch)
                for i in range(uint64(first), uint64(end)):
                    _fill_row(out, i, template, cols, widths, sources)
                _write_masked_footers(out, first * stride + start, stride, length, end - first)

        _FRAMED_KERNEL = _framed_fill_kernel

    _KERNEL = _fill_kernel

BACKEND = "numba" if _KERNEL is not None else "numpy"
"""Which fill ``fill_rows`` uses: "numba" or "numpy"."""


def _native(template: np.ndarray, blocks: Sequence[Block], batch: int, footer: Optional[Footer]) -> np.ndarray:
    out = np.empty((batch, len(template)), dtype=np.uint8)
    cols = np.array([col for col, _ in blocks], dtype=np.uint64)
    widths = np.array([rows.shape[1] for _, rows in blocks], dtype=np.uint64)
    # numba types an empty tuple apart from a tuple of arrays: a zero-width block stands in.
    sources = tuple(np.ascontiguousarray(rows).reshape(-1) for _, rows in blocks) or (template[:0],)
    if not blocks:
        cols, widths = np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64)
    if footer is None:
        _KERNEL(out.reshape(-1), template, cols, widths, sources, batch)
    elif _FRAMED_KERNEL is not None:
        _FRAMED_KERNEL(out.reshape(-1), template, cols, widths, sources, batch, *footer)
    else:   # no native crc32c on this CPU
        _KERNEL(out.reshape(-1), template, cols, widths, sources, batch)
        masked_crc32c_into_footer(out, *footer)
    return out


def _first_call_check() -> Optional[str]:
    """Why the kernels cannot be used (compile error or a wrong result), or None."""
    try:
        rng = np.random.default_rng(0)
        template = rng.integers(0, 256, size=45, dtype=np.uint8)
        blocks = [(3, rng.integers(0, 256, size=(37, 8), dtype=np.uint8)),
                  (20, rng.integers(0, 256, size=(37, 17), dtype=np.uint8)),
                  (40, rng.integers(0, 256, size=(37, 1), dtype=np.uint8))]
        for footer in (None, (2, 39)):   # 37 rows: two chunks and a part, four rows and a part
            if not np.array_equal(_native(template, blocks, 37, footer),
                                  fill_rows_reference(template, blocks, 37, footer)):
                return f"rows differ from the numpy fill (footer {footer})"
    except Exception as exc:   # a numba/LLVM failure must not stop the pipeline
        return f"{type(exc).__name__}: {exc}"
    return None


def _drop_kernels() -> None:
    global _KERNEL, _FRAMED_KERNEL, BACKEND
    _KERNEL, _FRAMED_KERNEL, BACKEND = None, None, "numpy"


_NATIVE = FirstUseCheck("row_fill", _first_call_check, "using numpy", _drop_kernels)


def fill_rows(template: np.ndarray, blocks: Sequence[Block], batch: int,
              footer: Optional[Footer] = None) -> np.ndarray:
    """A [B, L] uint8 array: every row ``template``, with each block's row i over row i.

    Args:
      template: uint8 [L], the bytes every row starts as.
      blocks: (col, rows) pairs, rows a uint8 [B, w] array with col + w <= L, written in the
        order given (a later block wins where two overlap).
      batch: B.
      footer: (start, length), or None: each row's bytes [start, start + length), once filled,
        get TFRecord's masked crc32c in the 4 bytes after them (little-endian), which must be
        template bytes (no block may cover them).
    Returns:
      a C-ordered [B, L] uint8 array.
    Raises:
      ValueError if a block is not uint8 [B, w] or does not fit in the row, or the footer does
      not fit.
    """
    template = np.ascontiguousarray(template, dtype=np.uint8).reshape(-1)
    for col, rows in blocks:
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[0] != batch:
            raise ValueError(f"a block must be uint8 [{batch}, w], got {rows.dtype} with shape {rows.shape}")
        if col < 0 or col + rows.shape[1] > len(template):
            raise ValueError(f"a block of width {rows.shape[1]} at column {col} does not fit in rows of "
                             f"{len(template)} bytes")
    if footer is not None:
        start, length = footer
        if start < 0 or length < 0 or start + length + 4 > len(template):
            raise ValueError(f"a footer after bytes [{start}, {start + length}) does not fit in rows of "
                             f"{len(template)} bytes")
        if any(col < start + length + 4 and col + rows.shape[1] > start + length for col, rows in blocks):
            raise ValueError(f"a block covers the footer at [{start + length}, {start + length + 4})")
    if _KERNEL is not None and batch and _NATIVE.passed():
        return _native(template, blocks, batch, footer)
    return fill_rows_reference(template, blocks, batch, footer)
