"""Read the input Parquet files one row group at a time, naming the file when one cannot be read.

Beam's ``ReadAllFromParquetBatched`` fails on a damaged page with pyarrow's bare message
("Couldn't deserialize thrift ...") and no file name. Here each element is one row group
``(file, index, rows by the footer read at launch)``, spread over workers by a Reshuffle, read
with ``ParquetFile.read_row_group`` as Beam does (so a table is still exactly one row group,
whatever the runner), each row tagged with its index in the file (``validate.tag_rows``: the
row group's first row is the sum of the rows of the groups before it). A row group that cannot
be read, or no longer holds the rows its footer promised at launch, is tried once more (a
transient read error is not corruption) and then either fails the job with the file, row group
and error (``on_bad_file: fail``), or goes to the ``unreadable`` output (``on_bad_file: skip``):
the manifest lists it and counts its rows as unreadable, so nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.finalize import ExportError
from transforms.pause_points import pause_point
from transforms.validate import METRICS_NAMESPACE, tag_rows

__all__ = ["RowGroup", "UnreadableRowGroup", "ReadParquetRowGroups", "UNREADABLE", "read_row_group"]

UNREADABLE = "unreadable"
_ATTEMPTS = 2


@dataclass(frozen=True)
class RowGroup:
    """One row group to read: the file, its index, its rows by the footer read at launch, and
    the index in the file of its first row."""
    path: str
    index: int
    rows: int
    first_row: int = 0


@dataclass(frozen=True)
class UnreadableRowGroup:
    """A row group skipped by ``on_bad_file: skip``: where, how many rows, and the error."""
    path: str
    row_group: int
    rows: int
    error: str


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
@beam.typehints.with_output_types(Tuple[str, pa.Table])
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
        for _ in range(_ATTEMPTS):
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
    """Input file paths -> (file, Arrow table of one row group, plus SOURCE_ROW_TAG); tagged
    output ``unreadable`` (UnreadableRowGroup) for row groups skipped by ``on_bad_file: skip``.

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

    def expand(self, paths):
        row_groups = self._row_groups
        return (paths
                | "RowGroups" >> beam.FlatMap(
                    lambda path: _row_groups(path, row_groups[path])).with_output_types(RowGroup)
                | "Spread" >> beam.Reshuffle()
                | "ReadRowGroup" >> beam.ParDo(_ReadRowGroupFn(self._columns, self._on_bad_file)).with_outputs(
                    UNREADABLE, main="tables"))
