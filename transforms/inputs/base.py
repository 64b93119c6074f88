"""What both inputs share: the files found by the scan, the scan's result and the read step's.

``match_input_files`` lists the files of an input pattern; each input's scan turns them into an
``InputScan``; the scan's ``reader`` is the read step the pipeline applies to the file paths,
and every read step returns a ``ReadResult``. ``SpreadOverWorkers`` hands the parts of the
input to the workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Hashable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.errors import PreflightError

__all__ = ["InputFile", "InputReader", "InputScan", "ReadResult", "SpreadOverWorkers", "match_input_files",
           "SCAN_THREADS", "READ_ATTEMPTS"]

SCAN_THREADS = 16   # files a scan opens at once (footers, first records): the launcher waits on I/O
READ_ATTEMPTS = 2   # tries to read a part of an input file: a transient read error is not corruption


@dataclass(frozen=True)
class InputFile:
    """One input file, as the scan found it.

    Args:
      path: the file.
      rows: rows by the file's metadata; None when the container holds no count (DataRecord files).
      row_groups: Parquet row groups (0 for DataRecord files).
      bytes: the file's size.
      row_group_rows: Parquet: rows of each row group, by the footer.
    """
    path: str
    rows: Optional[int]
    row_groups: int
    bytes: int
    row_group_rows: Tuple[int, ...] = ()


class SpreadOverWorkers(beam.PTransform):
    """Spread the parts of the input (files, row groups) over the workers, as ``beam.Reshuffle``
    does, but keyed by the part itself instead of a random key.

    Each part is its own key, so the spread is as even as Reshuffle's. The difference shows on
    runners that deal groups out to their workers in the order they were made, such as Beam's
    in-process FnApiRunner with several workers: given the parts in the same order (the pipeline
    creates them in one bundle, from the plan), every run gives each worker the same parts in
    the same order, so the bundles, the part files and the shards' bytes are the same run after
    run (guarantee 7 in docs/GUARANTEES.md). With random keys a worker's share changed from run
    to run.

    Args:
      key: the part's key: distinct for distinct parts, and encoded deterministically by Beam (a
        string or a tuple of strings and ints).
      key_type: the key's type, e.g. ``str`` or ``Tuple[str, int]``: Beam encodes the key with
        that type's coder.
    """

    def __init__(self, key: Callable[[Any], Hashable], key_type: Any):
        super().__init__()
        self._key = key
        self._key_type = key_type

    def expand(self, parts):
        key = self._key
        return (parts
                | "KeyByPart" >> beam.Map(lambda part: (key(part), part)).with_output_types(
                    Tuple[self._key_type, parts.element_type])
                | "Group" >> beam.GroupByKey()
                | "Parts" >> beam.FlatMap(lambda keyed: keyed[1]).with_output_types(parts.element_type))


class ReadResult(NamedTuple):
    """The PCollections a read step gives the pipeline (each one present, empty where the input
    has none of that kind).

    Args:
      tables: ``(file, Arrow table)`` of rows tagged with their index in the file
        (``transforms.rejected.SOURCE_ROW_TAG``).
      rejected: Arrow tables of rows rejected while reading, in the rejected-rows layout.
      rows_read: counts of rows read that are not in ``tables`` (the rejected ones).
      unreadable: parts of files skipped as unreadable (``input.on_bad_file: skip``), with rows
        and error (objects with ``path``, ``row_group``, ``rows``, ``error``).
    """
    tables: beam.PCollection
    rejected: beam.PCollection
    rows_read: beam.PCollection
    unreadable: beam.PCollection


class InputReader:
    """How the pipeline reads an input: a small picklable description of the read step.

    ``step_name`` names the step in the pipeline; ``read(files)`` is the PTransform from file
    paths to a ``ReadResult``.
    """

    step_name = "Read"

    def read(self, files: Sequence[InputFile]) -> beam.PTransform:
        raise NotImplementedError


@dataclass(frozen=True)
class InputScan:
    """What a scan found: the files, the columns the job reads, and how it reads them.

    Args:
      files: the readable input files, sorted.
      skipped: (path, why) of unreadable files skipped by ``input.on_bad_file: skip``.
      read_schema: the columns read and their types.
      input_schema: every column of the input files (their union) for the rejected rows, or None
        when the input has no columns beyond those read (DataRecord files).
      reader: the read step.
    """
    files: Tuple[InputFile, ...]
    skipped: Tuple[Tuple[str, str], ...]
    read_schema: pa.Schema
    input_schema: Optional[pa.Schema]
    reader: InputReader


def match_input_files(pattern: str) -> List[Tuple[str, int]]:
    """(path, size) of the input files ``pattern`` matches, sorted; hidden and ``_`` files left out.

    Raises:
      PreflightError: the pattern cannot be listed or matches nothing.
    """
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:
        raise PreflightError(f"input.path {pattern}: cannot list files: {err}") from None
    paths = sorted({m.path: m.size_in_bytes for m in matched}.items())
    paths = [(p, size) for p, size in paths if not os.path.basename(p).startswith((".", "_"))]
    if not paths:
        raise PreflightError(f"input.path {pattern} matches no files")
    return paths
