"""Rejected rows keep every column of their input row: the columns the job did not read are read
back, for the rejected rows only, from their source file.

The job reads only the columns it needs (key, model inputs, partition column): wide feature
tables are common, and Parquet decoding is the job's largest cost after the model. A rejected
row therefore reaches this step with the columns read, ``reason``, ``source_file``,
``source_row`` and ``error``. ``RestoreInputColumns`` reads the other columns of the row groups
that hold rejected rows (only those row groups, only those columns, at most ``READ_BYTES`` of
decoded columns at a time so that a wide row group never sits in memory whole), takes the
rejected rows and adds them. Rejected rows are rare (``output.max_reject_fraction``), so a clean run reads nothing more.

One run writes one rejected-rows schema (``transforms.rejected.rejected_layout``): the union of the input files'
columns, in the order they first appear (the first file's order, then the columns later files
add), each with the type of the first file that has it; then ``reason``, ``source_file``,
``source_row``, ``error``. A row from a file without one of the columns has null there. A file
whose column has another type has its values cast to the first file's type (the launcher warns);
where they do not cast, the column is null for those rows, and ``error`` says so. An input column named like one of
the four added columns is not restored (the names are taken).

A rejected row is never lost for want of its other columns: when its file cannot be read back,
or no longer holds the rows that were read (its row groups have other sizes, or the row at
``source_row`` holds another key), the row is written with the columns it has, the others null,
and ``error`` says why.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.inputs.base import READ_ATTEMPTS
from transforms.rejected import ERROR_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN
from transforms.validate import METRICS_NAMESPACE

__all__ = ["READ_BYTES", "read_batches", "restore_columns", "RestoreInputColumns"]

_LOG = logging.getLogger(__name__)

# Uncompressed column-chunk bytes read back at once (a single larger column is read alone).
READ_BYTES = 64 << 20


# ------------------------------------------------------------------------------------------------
# Reading the columns back.

class _Unrestorable(Exception):
    """A file's columns cannot be restored; the message says why (it goes into ``error``)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _column_bytes(meta: pq.RowGroupMetaData, names: Sequence[str]) -> Dict[str, int]:
    """Uncompressed bytes of each top-level column of ``names`` in one row group (all its leaves)."""
    sizes = dict.fromkeys(names, 0)
    for j in range(meta.num_columns):
        chunk = meta.column(j)
        path = chunk.path_in_schema
        top = next((n for n in names if path == n or path.startswith(n + ".")), None)
        if top is not None:
            sizes[top] += chunk.total_uncompressed_size
    return sizes


def read_batches(names: Sequence[str], sizes: Dict[str, int], budget: int) -> List[List[str]]:
    """``names``, in order, cut into reads of at most ``budget`` bytes (a larger column alone)."""
    reads: List[List[str]] = []
    held = 0
    for name in names:
        size = sizes.get(name, 0)
        if not reads or held + size > budget:
            reads.append([])
            held = 0
        reads[-1].append(name)
        held += size
    return reads


def _null_where(values: pa.Array, null: np.ndarray) -> pa.Array:
    """``values`` with null where ``null`` (bool) is True (by ``take``: any type, nested too)."""
    padded = pa.concat_arrays([values, pa.nulls(1, values.type)])
    return padded.take(pa.array(np.where(null, len(values), np.arange(len(values)))))


def _restore_file(parquet: pq.ParquetFile, path: str, rows: np.ndarray, keys: pa.Array, key_column: str,
                  launch_groups: Sequence[int], unread: pa.Schema,
                  budget: int) -> Tuple[Dict[str, pa.Array], List[List[str]]]:
    """The ``unread`` columns of an open file at ``rows`` (int64), in that order, and notes per row.

    ``keys`` are the rejected rows' keys: a row whose key in the file differs is another row
    (the file changed since it was read), so its values are left null and noted.
    Raises:
      _Unrestorable: the file no longer has the row groups it had at launch, or not the row.
    """
    meta = parquet.metadata
    current = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if current != tuple(launch_groups):
        raise _Unrestorable(f"{path} no longer holds the rows that were read (row groups of "
                            f"{list(launch_groups)} rows at launch, {list(current)} now)")
    starts = np.concatenate([[0], np.cumsum(current, dtype=np.int64)])
    if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise _Unrestorable(f"{path} has {int(starts[-1])} rows, no row {int(rows.max())}")
    file_types = {f.name: f.type for f in parquet.schema_arrow}
    present = [f.name for f in unread if f.name in file_types]
    notes: List[List[str]] = [[] for _ in rows]
    pieces: Dict[str, List[pa.Array]] = {name: [] for name in present}
    group_of = np.searchsorted(starts, rows, side="right") - 1
    order = []
    for group in np.unique(group_of):
        at = np.flatnonzero(group_of == group)
        order.append(at)
        local = pa.array(rows[at] - starts[group])
        names = [key_column] + present
        got = {}
        for columns in read_batches(names, _column_bytes(meta.row_group(int(group)), names), budget):
            read = parquet.read_row_group(int(group), columns=columns).take(local)
            got.update((name, read.column(name).combine_chunks()) for name in columns)
        moved = np.zeros(len(at), dtype=bool)
        for j, (want, held) in enumerate(zip(keys.take(pa.array(at)).to_pylist(), got[key_column].to_pylist())):
            if want != held:
                moved[j] = True
                notes[at[j]].append(f"row {int(rows[at[j]])} of {path} now holds key {held}, not {want} "
                                    "(the file changed since it was read)")
        for name in present:
            values, target = got[name], unread.field(name).type
            if values.type != target:
                try:
                    values = values.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                    for i in at:
                        notes[i].append(f"column {name!r} is {file_types[name]} in {path} and does not "
                                        f"cast to {target} ({_one_line(err)})")
                    values = pa.nulls(len(at), target)
            pieces[name].append(_null_where(values, moved) if moved.any() else values)
    back = pa.array(np.argsort(np.concatenate(order), kind="stable")) if order else pa.array([], pa.int64())
    restored = {}
    for f in unread:
        if f.name in pieces:
            restored[f.name] = pa.concat_arrays(pieces[f.name]).take(back)
        else:
            restored[f.name] = pa.nulls(len(rows), f.type)  # the file has no such column: null
    return restored, notes


def _open_parquet(path: str):
    """(handle to close, ``pq.ParquetFile`` on it), through Beam's FileSystems."""
    handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return handle, pq.ParquetFile(handle)


def _read_back(path: str, rows: np.ndarray, keys: pa.Array, key_column: str, launch_groups: Sequence[int],
               unread: pa.Schema, open_parquet, budget: int) -> Tuple[Dict[str, pa.Array], List[List[str]]]:
    """``_restore_file`` on ``path``, tried twice (a transient read error is not a changed file).
    Raises _Unrestorable with why when both tries fail."""
    error: Optional[BaseException] = None
    for _ in range(READ_ATTEMPTS):
        handle = None
        try:
            handle, parquet = open_parquet(path)
            return _restore_file(parquet, path, rows, keys, key_column, launch_groups, unread, budget)
        except _Unrestorable as err:
            error = err
        except Exception as err:  # unreadable now: OSError, ArrowInvalid, ...
            error = _Unrestorable(f"{path} cannot be read back: {type(err).__name__}: {_one_line(err)}")
        finally:
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # closing a handle that already failed: nothing to add
                    pass
    raise error


def _merge_notes(table: pa.Table, notes: Sequence[str]) -> pa.Table:
    """``error`` of each row followed by its note (``error`` is the note where it was null)."""
    errors = table.column(ERROR_COLUMN).to_pylist()
    merged = ["; ".join(t for t in (error, note) if t) or None for error, note in zip(errors, notes)]
    return table.set_column(table.schema.get_field_index(ERROR_COLUMN), ERROR_COLUMN, pa.array(merged, pa.string()))


def restore_columns(table: pa.Table, unread: pa.Schema, key_column: str, row_groups: Dict[str, Sequence[int]],
                    open_parquet: Callable = _open_parquet, budget: int = READ_BYTES) -> pa.Table:
    """``table`` (rejected rows: the columns read, reason, source_file, source_row, error) with the
    ``unread`` columns appended, read back from each row's ``source_file`` at ``source_row``.

    Args:
      table: rejected rows.
      unread: the columns to restore, with their types (``transforms.rejected.unread_columns``).
      key_column: the key column, compared with the file's to catch a file changed since launch.
      row_groups: {file: rows of each of its row groups at launch} (``InputFile.row_group_rows``).
      open_parquet: path -> (handle to close, ``pq.ParquetFile``).
      budget: uncompressed column bytes read at once.
    Returns:
      the table with the ``unread`` columns appended: null where a row's file lacks the column,
      and where it could not be restored, for which ``error`` then says why (after the row's own
      error, if any).
    """
    count = table.num_rows
    if count == 0 or len(unread) == 0:
        return table
    sources = table.column(SOURCE_COLUMN).to_pylist()
    rows = table.column(SOURCE_ROW_COLUMN).to_pylist()
    keys = table.column(key_column).combine_chunks()
    notes = [""] * count
    by_file: Dict[str, List[int]] = {}
    for i, (source, row) in enumerate(zip(sources, rows)):
        if source is None or row is None:
            notes[i] = f"input columns not restored: the row has no {SOURCE_COLUMN} or {SOURCE_ROW_COLUMN}"
        elif source not in row_groups:
            notes[i] = f"input columns not restored: {source} is not one of the input files"
        else:
            by_file.setdefault(source, []).append(i)
    pieces: Dict[str, List[pa.Array]] = {f.name: [] for f in unread}
    done: List[np.ndarray] = [np.zeros(0, np.int64)]           # positions of the values in pieces
    for path in sorted(by_file):
        at = np.asarray(by_file[path], dtype=np.int64)
        try:
            restored, file_notes = _read_back(path, np.asarray([rows[i] for i in at], np.int64),
                                              keys.take(pa.array(at)), key_column, row_groups[path], unread,
                                              open_parquet, budget)
        except _Unrestorable as err:
            _LOG.warning("rejected rows of %s keep only the columns read: %s", path, err)
            for i in at:
                notes[i] = f"input columns not restored: {err}"
            continue
        done.append(at)
        for name, values in restored.items():
            pieces[name].append(values)
        for i, row_notes in zip(at, file_notes):
            if row_notes:
                notes[i] = "input columns not restored: " + "; ".join(row_notes)
    done = np.concatenate(done)
    missing = np.setdiff1d(np.arange(count), done)               # rows not restored: null
    back = pa.array(np.argsort(np.concatenate([done, missing]), kind="stable"))
    for f in unread:
        parts = pieces[f.name] + [pa.nulls(len(missing), f.type)]
        table = table.append_column(f, pa.concat_arrays(parts).take(back))
    return _merge_notes(table, notes) if any(notes) else table


# ------------------------------------------------------------------------------------------------

@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(pa.Table)
class _RestoreColumnsFn(beam.DoFn):
    def __init__(self, unread: pa.Schema, key_column: str, row_groups: Dict[str, Sequence[int]]):
        self._unread = unread
        self._key_column = key_column
        self._row_groups = row_groups
        self._restored = Metrics.counter(METRICS_NAMESPACE, "rejected_rows_restored")

    def process(self, table: pa.Table) -> Iterable[pa.Table]:
        if table.num_rows:
            self._restored.inc(table.num_rows)
        yield restore_columns(table, self._unread, self._key_column, self._row_groups)


class RestoreInputColumns(beam.PTransform):
    """Tables of rejected rows -> the same rows with the input columns the job did not read.

    Args:
      unread: the columns to restore and their types (``unread_columns``).
      key_column: the key column (checked against the file, so a changed file is noticed).
      row_groups: {file path: rows of each of its row groups, by the footer read at launch}.
    """

    def __init__(self, unread: pa.Schema, key_column: str, row_groups: Dict[str, Sequence[int]]):
        super().__init__()
        self._unread = unread
        self._key_column = key_column
        self._row_groups = {path: tuple(int(r) for r in rows) for path, rows in row_groups.items()}

    def expand(self, tables):
        return tables | "RestoreColumns" >> beam.ParDo(
            _RestoreColumnsFn(self._unread, self._key_column, self._row_groups))
