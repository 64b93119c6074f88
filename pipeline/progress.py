"""Progress of local runs on a terminal, and the closing summary.

Beam's local runners cannot report progress while they run: ``FnApiRunner.run_pipeline`` (what
``FnApiRunner`` and the batch ``DirectRunner`` are) executes the whole pipeline inside
``Pipeline.run()`` and only then returns a result whose metrics can be queried, so polling
``result.metrics()`` shows nothing until the end. The job therefore reports progress through a
side channel that works for every local runner, in-process or multi-process: ``ReportRowsRead``
consumes the ``rows_read`` counts (one per input table, i.e. per row group or per chunk of
records, never per row) and each DoFn instance keeps its running total in its own small file in
a local directory, rewritten atomically at most every quarter second and at the end of each
bundle. ``RunProgress`` polls that directory from a thread in the launcher and drives a ``rich``
progress bar: rows done of the total from the Parquet footers, rows/s and the time left.

Nothing is shown when the stream is not a terminal or when ``CI`` is set, and remote runners
(Dataflow, Flink) get no side channel: their workers cannot write to the launcher's disk, and
their own UIs show the ``EmbeddingExport`` counters. Counts from retried bundles may be counted
twice, so the bar is capped at the total; the accounting that matters is the finalize step's.

``rich`` (the ``tools`` extra) is imported only on the launcher, when drawing: workers import
this module for ``ReportRowsRead`` and need not have it; without it there is no live bar and the
summary is plain lines.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import apache_beam as beam

from pipeline.extras import available

from transforms.outputdir import REJECTED_DIR

__all__ = ["progress_wanted", "is_local_run", "rows_done", "ReportRowsRead", "RunProgress", "summary_rows",
           "format_summary_lines", "summary_table", "print_summary"]

_COUNT_SUFFIX = ".rows"
_WRITE_INTERVAL_S = 0.25
_POLL_INTERVAL_S = 0.5
_LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner",
                  "TestDirectRunner"}
_FALSE = {"", "0", "false", "no", "off"}


def progress_wanted(stream: TextIO, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether to draw live progress on ``stream``: a terminal, not in CI (``CI`` set), rich installed."""
    environ = os.environ if environ is None else environ
    if environ.get("CI", "").strip().lower() not in _FALSE:
        return False
    if not available("rich"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def is_local_run(runner: str, options: Sequence[str] = ()) -> bool:
    """Whether the workers of this run share the launcher's disk (the local runners, and the
    portable runner with the LOOPBACK environment)."""
    name = runner.rsplit(".", 1)[-1]
    if name in _LOCAL_RUNNERS:
        return True
    if name in ("PortableRunner", "PrismRunner"):
        env = [o.split("=", 1)[1] for o in options if o.startswith("--environment_type=")]
        if not env:
            return name == "PrismRunner"  # Prism's default environment is LOOPBACK
        return env[-1].upper() == "LOOPBACK"
    return False


def rows_done(directory: str) -> int:
    """The rows reported so far by every ``ReportRowsRead`` instance writing to ``directory``."""
    total = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if not name.endswith(_COUNT_SUFFIX):
            continue
        try:
            with open(os.path.join(directory, name)) as handle:
                total += int(handle.read() or 0)
        except (OSError, ValueError):  # replaced or removed while reading: next poll reads it
            continue
    return total


# ------------------------------------------------------------------------------------------------
# The worker side: running totals in per-instance files.

@beam.typehints.with_input_types(int)
@beam.typehints.with_output_types(None)
class _CountRowsFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory
        self._path: Optional[str] = None
        self._rows = 0
        self._written_at = 0.0

    def setup(self):
        self._path = os.path.join(self._directory, f"{os.getpid()}-{uuid.uuid4().hex}{_COUNT_SUFFIX}")
        self._rows = 0

    def process(self, rows: int):
        self._rows += int(rows)
        if time.monotonic() - self._written_at >= _WRITE_INTERVAL_S:
            self._write()
        return ()

    def finish_bundle(self):
        self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        tmp = f"{self._path}.tmp"
        try:  # progress must never fail the export
            with open(tmp, "w") as handle:
                handle.write(str(self._rows))
            os.replace(tmp, self._path)
        except OSError:
            pass


class ReportRowsRead(beam.PTransform):
    """Row counts (ints) -> nothing; their running totals go to files in ``directory`` for
    ``RunProgress`` / ``rows_done`` to read.

    Args:
      directory: a local directory the workers and the launcher share.
    """

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, counts):
        return counts | "CountRows" >> beam.ParDo(_CountRowsFn(self._directory))


# ------------------------------------------------------------------------------------------------
# The launcher side: a rich progress bar fed by a polling thread.

class RunProgress:
    """Live progress of one run, as a context manager; a no-op when disabled.

    Args:
      total: rows expected (the input footers' count), or None when unknown (DataRecord input):
        the bar then shows rows done and the rate, without a time left.
      console: the rich Console to draw on (default: one on stderr).
      enabled: draw at all (see ``progress_wanted`` and ``is_local_run``).
      poll_seconds: how often the side-channel files are read.

    ``directory`` is the side-channel directory to hand to the job (None when disabled).
    """

    def __init__(self, total: Optional[int], console=None, enabled: bool = True,
                 poll_seconds: float = _POLL_INTERVAL_S):
        self.total = total
        self.enabled = enabled
        self.directory: Optional[str] = None
        self._console = console
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._progress = None
        self._task = None

    def __enter__(self) -> "RunProgress":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.directory = tempfile.mkdtemp(prefix="embedding-export-progress-")
        console = self._console or Console(stderr=True)
        rows_column, rate_column = _count_columns()
        columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), rows_column(),
                   rate_column(), TimeElapsedColumn()]
        if self.total is not None:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=console, transient=False)
        self._task = self._progress.add_task("exporting", total=self.total)
        self._progress.start()
        self._thread = threading.Thread(target=self._run, name="export-progress", daemon=True)
        self._thread.start()
        return self

    def _update(self) -> None:
        done = rows_done(self.directory)
        if self.total is not None:
            done = min(done, self.total)
            if done >= self.total:
                self._progress.update(self._task, description="finishing")
        self._progress.update(self._task, completed=done)

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._update()

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._update()
        if exc_type is None:
            self._progress.update(self._task, description="done")
        else:
            self._progress.update(self._task, description="failed")
        self._progress.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _count_columns():
    """The rows and rate columns of the bar (rich classes, defined when rich is imported)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RowsColumn(ProgressColumn):
        """'12,345 / 100,000 rows' (or '12,345 rows' with no total)."""

        def render(self, task):
            done = int(task.completed)
            if task.total is None:
                return Text(f"{done:,} rows", style="progress.download")
            return Text(f"{done:,} / {int(task.total):,} rows", style="progress.download")

    class RateColumn(ProgressColumn):
        """Rows per second over rich's recent samples."""

        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("? rows/s" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")

    return RowsColumn, RateColumn


# ------------------------------------------------------------------------------------------------
# The closing summary.

def summary_rows(manifest: Dict, seconds: float, output_path: str) -> List[Tuple[str, str]]:
    """(label, value) rows of a finished run's summary; rejected reasons are labelled '  reason'."""
    shards = manifest.get("shards", [])
    rows_read = int(manifest.get("rows_read", 0))
    size = sum(int(s.get("bytes", 0)) for s in shards)
    rows = [("rows read", f"{rows_read:,}"),
            ("rows written", f"{int(manifest.get('rows_written', 0)):,}"),
            ("rows rejected", f"{int(manifest.get('rows_rejected', 0)):,}")]
    for reason, count in (manifest.get("rejected_by_reason") or {}).items():
        rows.append((f"  {reason}", f"{count:,}"))
    rejected_files = manifest.get("rejected_files") or []
    if int(manifest.get("rows_rejected", 0)) and rejected_files:
        rows.append(("  rejected rows in", f"{output_path.rstrip('/')}/{REJECTED_DIR}/ ({len(rejected_files)} "
                                           f"file{'s' if len(rejected_files) != 1 else ''}; inspect --key K "
                                           "explains a user's)"))
    collisions = (manifest.get("key_id_collisions") or {}).get("ids", 0)
    if collisions:  # string keys whose int64 ids coincide: consumers joining on the id must know
        rows.append(("key id collisions", f"{collisions:,} id(s) shared by different string keys "
                                          "(listed in _MANIFEST.json key_id_collisions)"))
    compression = manifest.get("compression")
    rows += [
        ("shards", f"{len(shards)} x {manifest.get('format')}"
                   f"{'' if compression in (None, 'none') else ' (' + compression + ')'}"
                   f", {size / 2**20:,.1f} MiB"),
        ("time", f"{seconds:,.1f} s ({rows_read / seconds:,.0f} rows/s)" if seconds > 0 else "n/a"),
        ("output", output_path),
    ]
    return rows


def format_summary_lines(rows: Sequence[Tuple[str, str]]) -> str:
    """The plain-text summary (log files, CI): aligned 'label value' lines."""
    return "\n".join(f"{label}: {value}" if label.startswith("  ") else f"{label:<13} {value}"
                     for label, value in rows)


def summary_table(rows: Sequence[Tuple[str, str]], title: str = "embedding-export run"):
    """The summary as a rich Table (for a terminal)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="left")
    for label, value in rows:
        table.add_row(label, value, style="dim" if label.startswith("  ") else None)
    return table


def print_summary(manifest: Dict, seconds: float, output_path: str, stream: TextIO,
                  use_rich: Optional[bool] = None) -> None:
    """Print the summary on ``stream``: a rich table on a terminal (outside CI), plain lines otherwise."""
    rows = summary_rows(manifest, seconds, output_path)
    if use_rich is None:
        use_rich = progress_wanted(stream)
    if not use_rich or not available("rich"):
        print(format_summary_lines(rows), file=stream)
        return
    from rich.console import Console

    Console(file=stream, force_terminal=True).print(summary_table(rows))
