"""The Parquet input: the launcher's scan of the footers, and the read step, one row group at a time.

``scan_parquet`` reads every file's footer before launch (in parallel): the columns and their
types (checked by the caller's ``check_schema``, the same in every file), the rows of each row
group, and the union of all columns for the rejected rows. A file whose footer cannot be read
fails the scan naming it, or is skipped (``input.on_bad_file: skip``) and listed in the manifest.

The read step (``ReadParquetRowGroups``, a ``ReadResult``) names the file when one cannot be read.

Beam's ``ReadAllFromParquetBatched`` fails on a damaged page with pyarrow's bare message
("Couldn't deserialize thrift ...") and no file name. Here each element is one row group
``(file, index, rows by the footer read at launch)``, spread over workers (``SpreadOverWorkers``), read
with ``ParquetFile.read_row_group`` as Beam does (so a table is still exactly one row group,
whatever the runner), each row tagged with its index in the file (``rejected.tag_rows``: the
row group's first row is the sum of the rows of the groups before it). A row group that cannot
be read, or no longer holds the rows its footer promised at launch, is tried once more (a
transient read error is not corruption) and then either fails the job with the file, row group
and error (``on_bad_file: fail``), or goes to the ``unreadable`` output (``on_bad_file: skip``):
the manifest lists it and counts its rows as unreadable, so nothing is dropped silently.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.elements import UnreadableRowGroup
from transforms.errors import ExportError, PreflightError
from transforms.inputs.base import (READ_ATTEMPTS, SCAN_THREADS, InputFile, InputReader, InputScan, ReadResult,
                                    SpreadOverWorkers, match_input_files)
from transforms.pause_points import pause_point
from transforms.rejected import union_schema, unread_columns, tag_rows
from transforms.validate import METRICS_NAMESPACE

__all__ = ["RowGroup", "ReadParquetRowGroups", "ParquetReader", "UNREADABLE",
           "read_row_group", "scan_parquet"]

_LOG = logging.getLogger(__name__)
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class RowGroup:
    """One row group to read: the file, its index, its rows by the footer read at launch, and
    the index in the file of its first row."""
    path: str
    index: int
    rows: int
    first_row: int = 0


def read_row_group(parquet: pq.ParquetFile, group: RowGroup, columns: Sequence[str]) -> pa.Table:
    """The row group's columns; ValueError when it does not hold the rows the launcher counted."""
    table = parquet.read_row_group(group.index, columns=list(columns))
    if table.num_rows != group.rows:
        raise ValueError(f"it holds {table.num_rows} rows, its footer said {group.rows} at launch "
                         "(the file changed during the run)")
    return table


def _row_groups(path: str, group_rows: Sequence[int]) -> List[RowGroup]:
    """The row groups of ``path`` with their rows and first rows, from its footer's row counts."""
    first = 0
    groups = []
    for i, rows in enumerate(group_rows):
        groups.append(RowGroup(path, i, rows, first))
        first += rows
    return groups


def _one_line(text: str) -> str:
    """Whitespace runs as one space, unprintable characters escaped (pyarrow quotes raw bytes)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


@beam.typehints.with_input_types(RowGroup)
@beam.typehints.with_output_types(Tuple[str, pa.Table], **{UNREADABLE: UnreadableRowGroup})
class _ReadRowGroupFn(beam.DoFn):
    def __init__(self, columns: Sequence[str], on_bad_file: str):
        self._columns = tuple(columns)
        self._skip = on_bad_file == "skip"
        self._unreadable = Metrics.counter(METRICS_NAMESPACE, "row_groups_unreadable")
        self._path: Optional[str] = None
        self._handle = None
        self._parquet: Optional[pq.ParquetFile] = None

    def _open(self, path: str) -> pq.ParquetFile:
        # Consecutive row groups of one file (the usual order) reuse its open handle and footer.
        if self._path != path:
            self._close()
            self._handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
            self._path = path
            self._parquet = pq.ParquetFile(self._handle)
        return self._parquet

    def _close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except Exception:  # closing a handle that already failed: nothing to add
                pass
        self._path, self._handle, self._parquet = None, None, None

    def process(self, group: RowGroup) -> Iterable[Tuple[str, pa.Table]]:
        error: Optional[BaseException] = None
        for _ in range(READ_ATTEMPTS):
            try:
                table = read_row_group(self._open(group.path), group, self._columns)
            except Exception as err:  # damaged bytes surface as OSError, ArrowInvalid, ...
                error = err
                self._close()
                continue
            pause_point("read.row_group")
            yield group.path, tag_rows(table, group.first_row)
            return
        message = _one_line(f"{type(error).__name__}: {error}")
        if self._skip:
            self._unreadable.inc()
            yield beam.pvalue.TaggedOutput(UNREADABLE, UnreadableRowGroup(group.path, group.index, group.rows,
                                                                          message))
            return
        raise ExportError(f"{group.path}: row group {group.index} ({group.rows} rows) cannot be read: {message}; "
                          "set input.on_bad_file: skip to export the rest and count these rows as unreadable")

    def finish_bundle(self):
        self._close()

    def teardown(self):
        self._close()


class ReadParquetRowGroups(beam.PTransform):
    """Input file paths -> ``ReadResult``: tables (file, Arrow table of one row group, plus
    SOURCE_ROW_TAG) and ``unreadable`` (UnreadableRowGroup) for row groups skipped by
    ``on_bad_file: skip``.

    Args:
      row_groups: {file path: rows of each of its row groups, by the footer read at launch}.
      columns: the columns to read.
      on_bad_file: "fail" or "skip".
    """

    def __init__(self, row_groups: Dict[str, Sequence[int]], columns: Sequence[str], on_bad_file: str = "fail"):
        super().__init__()
        self._row_groups = {path: tuple(int(r) for r in rows) for path, rows in row_groups.items()}
        self._columns = tuple(columns)
        self._on_bad_file = on_bad_file

    def expand(self, paths) -> ReadResult:
        row_groups = self._row_groups
        read = (paths
                | "RowGroups" >> beam.FlatMap(
                    lambda path: _row_groups(path, row_groups[path])).with_output_types(RowGroup)
                | "Spread" >> SpreadOverWorkers(key=attrgetter("path", "index"), key_type=Tuple[str, int])
                | "ReadRowGroup" >> beam.ParDo(_ReadRowGroupFn(self._columns, self._on_bad_file)).with_outputs(
                    UNREADABLE, main="tables"))
        # Parquet rows are rejected by validation, not while reading: no rejected rows, no counts.
        rejected = paths.pipeline | "NoRejectedWhileReading" >> beam.Create([]).with_output_types(pa.Table)
        counted = paths.pipeline | "NoRowsCountedWhileReading" >> beam.Create([]).with_output_types(int)
        return ReadResult(read.tables, rejected, counted, read[UNREADABLE])


@dataclass(frozen=True)
class ParquetReader(InputReader):
    """The Parquet read step of a plan: the columns read and what to do with an unreadable row group.

    Args:
      columns: the columns to read.
      on_bad_file: "fail" or "skip".
    """
    columns: Tuple[str, ...]
    on_bad_file: str = "fail"

    step_name = "ReadParquet"

    def read(self, files: Sequence[InputFile]) -> ReadParquetRowGroups:
        return ReadParquetRowGroups({f.path: f.row_group_rows for f in files}, self.columns, self.on_bad_file)


# ------------------------------------------------------------------------------------------------
# The scan: every footer, read in parallel before launch.

def _read_footer(path: str):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        meta = pq.ParquetFile(handle).metadata
        group_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        return meta.num_rows, group_rows, meta.schema.to_arrow_schema()


def scan_parquet(pattern: str, columns: Sequence[str], check_schema: Callable[[str, pa.Schema], None],
                 on_bad_file: str = "fail", batch_size: Optional[int] = None) -> InputScan:
    """The Parquet files of ``pattern``, their row groups, the columns read and the input's columns.

    Args:
      pattern: the input file pattern.
      columns: the columns the job reads.
      check_schema: ``(path, file schema)`` -> None, raising PreflightError when the file's
        columns do not fit the job.
      on_bad_file: "fail" or "skip" a file whose footer cannot be read.
      batch_size: the model batch size: a warning when row groups are much smaller (None: no check).
    Raises:
      PreflightError: naming the file and what is wrong.
    """
    paths = match_input_files(pattern)

    def footer(item):
        path, _ = item
        try:
            return _read_footer(path), None
        except Exception as err:  # unreadable footer: report the file, never a bare pyarrow error
            return None, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=min(SCAN_THREADS, len(paths))) as pool:
        footers = list(pool.map(footer, paths))
    files, skipped = [], []
    first_schema, first_path = None, None
    columns = list(columns)
    distinct: List[Tuple[str, pa.Schema]] = []  # (file, schema) where the schema changes
    for (path, size), (result, error) in zip(paths, footers):
        if error is not None:
            if on_bad_file == "skip":
                skipped.append((path, error))
                continue
            raise PreflightError(f"{path}: not a readable Parquet file ({error}); set input.on_bad_file: skip "
                                 "to export the other files")
        rows, group_rows, schema = result
        check_schema(path, schema)
        read = pa.schema([schema.field(c).with_nullable(True) for c in columns])
        if first_schema is None:
            first_schema, first_path = read, path
        elif not read.equals(first_schema, check_metadata=False):
            diffs = [f"{c}: {first_schema.field(c).type} vs {read.field(c).type}"
                     for c in columns if first_schema.field(c).type != read.field(c).type]
            raise PreflightError(f"{path}: column types differ from {first_path}: {'; '.join(diffs)}")
        files.append(InputFile(path, rows, len(group_rows), size, group_rows))
        if not distinct or not schema.equals(distinct[-1][1], check_metadata=False):
            distinct.append((path, schema))
    if not files:
        raise PreflightError(f"input.path {pattern}: no readable Parquet files (skipped: {skipped})")
    if batch_size is not None:
        _warn_small_row_groups(files, batch_size)
    return InputScan(tuple(files), tuple(skipped), first_schema, _input_schema(distinct, first_schema),
                     ParquetReader(tuple(columns), on_bad_file))


def _input_schema(schemas: Sequence[Tuple[str, pa.Schema]], read_schema: pa.Schema) -> pa.Schema:
    """The union of the input files' columns (``union_schema``), warning about what the rejected
    rows cannot keep as is: unread columns with other types in some files (cast to the first
    type, null where a value does not cast) and unread columns named like the added columns."""
    union, conflicts = union_schema(schemas)
    unread = unread_columns(read_schema, union).names
    for name, where in conflicts.items():
        if name in unread:
            path, other = where[0]
            _LOG.warning("input column %r is %s in the first file that has it but %s in %s%s: the rejected "
                         "rows of those files get it cast to %s (null, with a note in error, where it does not "
                         "cast)", name, union.field(name).type, other, path,
                         f" and {len(where) - 1} more files" if len(where) > 1 else "", union.field(name).type)
    taken = [name for name in union.names if name not in read_schema.names and name not in unread]
    if taken:
        _LOG.warning("input columns %s are not kept in the rejected rows: the rejected-rows output uses "
                     "these names", taken)
    return union


def _warn_small_row_groups(files: Sequence[InputFile], batch_size: int) -> None:
    """Batches never span row groups (so every runner feeds the model the same batches): say so
    when the row groups are much smaller than the batch size, which makes model calls small."""
    groups = sum(f.row_groups for f in files)
    rows = sum(f.rows for f in files)
    if groups and rows / groups < batch_size / 2:
        _LOG.warning("input row groups hold %.0f rows on average, model.batch_size is %d: batches never "
                     "span row groups, so model calls will be small; write the input with row groups of "
                     "at least %d rows for full batches", rows / groups, batch_size, batch_size)
