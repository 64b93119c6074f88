"""The rejected rows: their schema, the hidden columns that let a row name its place in the
input, and the helpers every step that rejects rows uses.

A rejected row keeps its input columns and gets four more (``ADDED_COLUMNS``): ``reason`` (why,
e.g. ``null_key``, ``non_finite_embedding``, ``model_error:<type>``), ``source_file``,
``source_row`` (its 0-based index in that file) and ``error`` (an exception text, or null). One
run writes one schema (``rejected_layout``): the input columns in the input's order, then those
four. The files are stamped with the run id in their schema metadata (``RUN_ID_METADATA_KEY``)
so that a later run can tell them for its own (``transforms.ownership``).

Readers tag every row with its index in its file (the hidden ``SOURCE_ROW_TAG`` column,
``tag_rows``); validation adds the file (``SOURCE_TAG``, ``tag_source``) to the good rows it
batches, so that rows the embed step rejects later still name their place. The tags never reach
the model or the output.

Pure functions of Arrow tables and schemas: no Beam.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["REJECTED", "REASON_COLUMN", "SOURCE_COLUMN", "SOURCE_ROW_COLUMN", "ERROR_COLUMN", "SOURCE_TAG",
           "SOURCE_ROW_TAG", "ADDED_COLUMNS", "RESERVED_COLUMNS", "RUN_ID_METADATA_KEY", "rejected_table",
           "tag_rows", "source_rows", "tag_source", "tagged_rejected_rows", "rejected_from_tagged",
           "with_error_column", "union_schema", "unread_columns", "rejected_layout", "stamped",
           "reason_counts"]

# The tagged output of the steps that reject rows (Arrow tables of rejected rows).
REJECTED = "rejected"
REASON_COLUMN = "reason"
SOURCE_COLUMN = "source_file"
SOURCE_ROW_COLUMN = "source_row"  # int64: the row's 0-based index in its source file
ERROR_COLUMN = "error"       # exception text of a rejected row, null where there is none
# Good rows carry their file along (dictionary-encoded: 4 bytes a row) so that rows rejected
# later, after re-chunking, can still name it. Not a model input; dropped before writing.
SOURCE_TAG = "__source_file__"
# Every row read carries its index in its file (int64, set by the reader), for the same reason.
SOURCE_ROW_TAG = "__source_row__"
# What the job adds to a rejected row's input columns, in this order.
ADDED_COLUMNS = (pa.field(REASON_COLUMN, pa.string()), pa.field(SOURCE_COLUMN, pa.string()),
                 pa.field(SOURCE_ROW_COLUMN, pa.int64()), pa.field(ERROR_COLUMN, pa.string()))
_ADDED_NAMES = frozenset(f.name for f in ADDED_COLUMNS)
# Column names an input may not use: the added columns and the hidden tags.
RESERVED_COLUMNS = tuple(f.name for f in ADDED_COLUMNS) + (SOURCE_TAG, SOURCE_ROW_TAG)
# The schema metadata key of the run-id stamp on rejected-rows files.
RUN_ID_METADATA_KEY = b"embedding_export.run_id"


# ------------------------------------------------------------------------------------------------
# Tagging rows with their place in the input, and rejecting them.

def tag_rows(table: pa.Table, rows: Union[int, np.ndarray, pa.Array, pa.ChunkedArray]) -> pa.Table:
    """``table`` with the SOURCE_ROW_TAG column: each row's index in its file, given as the index
    of the first row (consecutive rows, a Parquet row group) or as one int64 index per row."""
    if isinstance(rows, (int, np.integer)):
        rows = np.arange(int(rows), int(rows) + table.num_rows, dtype=np.int64)
    if isinstance(rows, np.ndarray):
        rows = pa.array(rows.astype(np.int64, copy=False))
    if len(rows) != table.num_rows:
        raise ValueError(f"{len(rows)} row indices for a table of {table.num_rows} rows")
    return table.append_column(SOURCE_ROW_TAG, rows.cast(pa.int64()))


def source_rows(table: pa.Table, source: str) -> pa.ChunkedArray:
    """The SOURCE_ROW_TAG column its reader gave ``table``; ValueError naming the file without one."""
    if SOURCE_ROW_TAG not in table.column_names:
        raise ValueError(f"{source}: the table read has no {SOURCE_ROW_TAG} column; readers must tag each "
                         "row with its index in the file (transforms.rejected.tag_rows)")
    return table.column(SOURCE_ROW_TAG)


def tag_source(table: pa.Table, source: str, rows: Union[int, np.ndarray, pa.Array, pa.ChunkedArray]) -> pa.Table:
    """``table`` with the SOURCE_TAG column naming ``source`` on every row, then SOURCE_ROW_TAG
    (``rows`` as in ``tag_rows``): a batch whose rows can be rejected later, after re-chunking."""
    indices = pa.array(np.zeros(table.num_rows, dtype=np.int32))
    table = table.append_column(SOURCE_TAG, pa.DictionaryArray.from_arrays(indices, pa.array([source])))
    return tag_rows(table, rows)


def rejected_table(table: pa.Table, codes: np.ndarray, reasons: Sequence[str], source: str,
                   source_rows: pa.ChunkedArray) -> pa.Table:
    """The rows with a nonzero code, with ``reason``, ``source_file`` and ``source_row`` appended
    (``source_rows``: the int64 index in ``source`` of each row of ``table``)."""
    bad = codes != 0
    mask = pa.array(bad)
    rows = table.filter(mask)
    names = np.asarray(list(reasons), dtype=object)[codes[bad] - 1]
    rows = rows.append_column(REASON_COLUMN, pa.array(names, type=pa.string()))
    rows = rows.append_column(SOURCE_COLUMN, pa.array([source] * len(names), type=pa.string()))
    return rows.append_column(SOURCE_ROW_COLUMN, source_rows.filter(mask))


def tagged_rejected_rows(rows: pa.Table, reasons: pa.Array) -> pa.Table:
    """Rows of a batch carrying SOURCE_TAG and SOURCE_ROW_TAG as rejected rows: their columns,
    ``reason`` (one per row), ``source_file``, ``source_row``; the hidden tags dropped."""
    source = rows.column(SOURCE_TAG).cast(pa.string())
    index = rows.column(SOURCE_ROW_TAG)
    rows = rows.drop_columns([SOURCE_TAG, SOURCE_ROW_TAG])
    rows = rows.append_column(REASON_COLUMN, reasons)
    rows = rows.append_column(SOURCE_COLUMN, source)
    return rows.append_column(SOURCE_ROW_COLUMN, index)


def rejected_from_tagged(table: pa.Table, bad: np.ndarray, reason: str) -> pa.Table:
    """Rows ``bad`` of a tagged batch as a rejected table (columns, reason, source_file, source_row)."""
    rows = table.filter(pa.array(bad))
    return tagged_rejected_rows(rows, pa.array([reason] * rows.num_rows, type=pa.string()))


def with_error_column(table: pa.Table) -> pa.Table:
    """A rejected-rows table with an ``error`` column (all null when it had none)."""
    if ERROR_COLUMN in table.column_names:
        return table
    return table.append_column(ERROR_COLUMN, pa.nulls(table.num_rows, pa.string()))


def reason_counts(table: pa.Table) -> Dict[str, int]:
    """Rows per ``reason`` of a rejected-rows table."""
    counts = pc.value_counts(table.column(REASON_COLUMN).combine_chunks())
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


# ------------------------------------------------------------------------------------------------
# The schema of the rejected-rows files.

Conflicts = Dict[str, List[Tuple[str, pa.DataType]]]


def union_schema(schemas: Iterable[Tuple[str, pa.Schema]]) -> Tuple[pa.Schema, Conflicts]:
    """The columns of all ``(path, schema)``, in order of first appearance, each nullable with the
    type of the first file that has it; and {column: [(path, type)]} of the files where a column
    has another type (their values are cast to the first type when restored)."""
    fields: Dict[str, pa.Field] = {}
    conflicts: Conflicts = {}
    for path, schema in schemas:
        for f in schema:
            known = fields.get(f.name)
            if known is None:
                fields[f.name] = pa.field(f.name, f.type)
            elif known.type != f.type:
                conflicts.setdefault(f.name, []).append((path, f.type))
    return pa.schema(list(fields.values())), conflicts


def unread_columns(read_schema: pa.Schema, input_schema: Optional[pa.Schema]) -> pa.Schema:
    """The input columns the job does not read and restores for rejected rows (none when the
    input's columns are unknown or all read; never one named like an ADDED_COLUMNS column)."""
    if input_schema is None:
        return pa.schema([])
    read = set(read_schema.names)
    return pa.schema([f for f in input_schema if f.name not in read and f.name not in _ADDED_NAMES])


def rejected_layout(read_schema: pa.Schema, input_schema: Optional[pa.Schema] = None) -> pa.Schema:
    """The rejected-rows schema: the input columns in the input's order (the columns read with
    their read types, the others as ``unread_columns``), then ADDED_COLUMNS. With no
    ``input_schema`` (DataRecord input), the columns read."""
    read = {f.name: pa.field(f.name, f.type) for f in read_schema}
    unread = unread_columns(read_schema, input_schema)
    fields = []
    if input_schema is not None:
        fields = [read[f.name] if f.name in read else f for f in input_schema
                  if f.name in read or f.name in unread.names]
    named = {f.name for f in fields}
    fields += [f for name, f in read.items() if name not in named]
    return pa.schema(fields + list(ADDED_COLUMNS))


def stamped(schema: pa.Schema, run_id: str) -> pa.Schema:
    """``schema`` with the run-id stamp that marks a rejected-rows file as this run's."""
    return schema.with_metadata({RUN_ID_METADATA_KEY: run_id.encode("utf-8")})
