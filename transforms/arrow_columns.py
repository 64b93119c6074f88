"""Arrow columns -> numpy model inputs, vectorised (no Python object per row or per value).

List columns are taken apart into their flat values and per-row lengths; a fixed-length list
becomes a reshape, a variable-length id list a right-padded ``[B, length]`` array built by
index arithmetic on the lengths. Null lists count as length 0 here: rows with nulls never
reach these functions because validation rejects them first.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.specs import KIND_FIXED, KIND_PADDED, KIND_SCALAR, InputSpec

__all__ = ["as_array", "is_list_type", "list_values_and_lengths", "to_numpy", "pad_or_truncate",
           "column_to_input", "table_to_feeds"]


def as_array(column: Union[pa.Array, pa.ChunkedArray]) -> pa.Array:
    """One contiguous Array from a column (chunks are combined only when there are several)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return column.chunk(0)
        if column.num_chunks == 0:
            return pa.array([], type=column.type)
        return column.combine_chunks()
    return column


def is_list_type(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type))


def to_numpy(array: pa.Array) -> np.ndarray:
    """Values of a null-free primitive array as numpy (zero-copy where Arrow allows)."""
    return array.to_numpy(zero_copy_only=False)


def list_values_and_lengths(column: pa.Array) -> Tuple[pa.Array, np.ndarray]:
    """(flat values of the non-null rows, int64 [B] row lengths with null rows as 0)."""
    lengths = pc.list_value_length(column).fill_null(0)
    return pc.list_flatten(column), to_numpy(lengths).astype(np.int64, copy=False)


def pad_or_truncate(values: np.ndarray, lengths: np.ndarray, length: int, pad,
                    dtype: np.dtype) -> Tuple[np.ndarray, int]:
    """Rows of ``values`` (split by ``lengths``) right-padded with ``pad`` / cut to ``length``.

    Returns the [B, length] array and how many rows were longer than ``length`` (truncated).
    """
    out = np.full((len(lengths), length), pad, dtype=dtype)
    # The kept cells in row-major order are each row's first min(len, length) slots, so when no
    # row is cut they take the flat values as they are; otherwise gather the kept ones first.
    kept = np.arange(length) < lengths[:, None]
    truncated = int(np.count_nonzero(lengths > length))
    if truncated:
        starts = np.cumsum(lengths) - lengths
        values = values[(starts[:, None] + np.arange(length))[kept]]
    out[kept] = values
    return out, truncated


def column_to_input(column: Union[pa.Array, pa.ChunkedArray], spec: InputSpec) -> Tuple[np.ndarray, int]:
    """The model input ``spec`` from its column: ([B] or [B, length] array, rows truncated)."""
    array = as_array(column)
    dtype = spec.np_dtype
    if spec.kind == KIND_SCALAR:
        return to_numpy(array).astype(dtype, copy=False), 0
    values, lengths = list_values_and_lengths(array)
    flat = to_numpy(values).astype(dtype, copy=False)
    if spec.kind == KIND_FIXED:
        if len(flat) != len(lengths) * spec.length:
            raise ValueError(f"column {spec.column!r}: rows must hold exactly {spec.length} values "
                             "(validation should have rejected the others)")
        return flat.reshape(len(lengths), spec.length), 0
    if spec.kind == KIND_PADDED:
        return pad_or_truncate(flat, lengths, spec.length, spec.pad, dtype)
    raise ValueError(f"unknown input kind {spec.kind!r}")


def table_to_feeds(table: pa.Table, specs) -> Tuple[dict, dict]:
    """{input name: array} for a signature call, and {input name: rows truncated} for padded inputs."""
    feeds = {}
    truncated = {}
    for spec in specs:
        feeds[spec.name], cut = column_to_input(table.column(spec.column), spec)
        if spec.kind == KIND_PADDED:
            truncated[spec.name] = cut
    return feeds, truncated
