"""The export job: ``transforms.ExportEmbeddings`` (these steps) on one Beam pipeline, and the blocking entry point.

    input files --plan.reader (transforms.inputs)--> (file, Arrow table)
                  ReadParquetRowGroups | ReadDataRecords   (+ rows rejected, counted or unreadable while reading)
      --ValidateAndBatch--> tables of model.batch_size good rows   (+ rejected rows, rows read)
      --EmbedBatches------> EmbeddedBatch                          (+ rows with non-finite outputs)
      --PartitionBatches--> ShardedBatch (the batch in shard order)
      --WriteShards-------> one complete temporary file per shard
    rejected rows --RestoreInputColumns (Parquet: the columns not read, for these rows only)--> WriteRejected
      --FinalizeExport----> shard files, _rejected/, _MANIFEST.json, then _SUCCESS

``run_export`` runs a plan (``pipeline.plan.preflight`` made it, checking everything it can
before launch) on the configured runner and returns the manifest it wrote.
"""
from __future__ import annotations

import gc
import logging
import os
import re
from typing import Callable, Dict, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipeline.config import ExportConfig
from pipeline.local_engines import note_once, resolve_local_engine
from pipeline.plan import recheck_output
from pipeline.progress import ReportRowsRead
from transforms.claim import ClaimRefused, Heartbeat, acquire, release
from transforms.errors import ExportError, PreflightError
from transforms.export import ExportEmbeddings
from transforms.file_listing import list_files
from transforms.finalize import rejected_dir_of_failed_run
from transforms.outputdir import JOURNAL_NAME, TEMP_DIR, read_manifest
from transforms.pause_points import pause_point
from transforms.plan import ExportPlan
from transforms.write import DEFAULT_BUFFER_BYTES

__all__ = ["build_pipeline", "pipeline_options", "run_export", "freeze_heap"]

_LOG = logging.getLogger(__name__)


def pipeline_options(config: ExportConfig, beam_args: Sequence[str] = ()) -> PipelineOptions:
    """Beam options: the config's runner and options, then the extra arguments (which win).

    ``DirectRunner`` and ``PrismRunner`` are pointed at this machine's Prism binary, or (the
    DirectRunner) run on the FnApiRunner with a one-line note: never a download
    (``pipeline.local_engines``).
    """
    runner, options, note = resolve_local_engine(config.runner.name, [*config.runner.options, *beam_args])
    if note:
        note_once(note)
    return PipelineOptions([f"--runner={runner}", *options])


def build_pipeline(p: beam.Pipeline, plan: ExportPlan, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                   progress_dir: Optional[str] = None) -> beam.PCollection:
    """Add the export to ``p`` (``transforms.ExportEmbeddings``); returns the PCollection holding
    the manifest once it is published.

    Args:
      p: the pipeline to build on.
      plan: the checked, resolved job (``pipeline.plan.preflight``).
      buffer_bytes: framed output bytes a bundle buffers before writing a part file.
      progress_dir: a local directory to report rows read to (``pipeline.progress``), or None.
    """
    progress = ReportRowsRead(progress_dir) if progress_dir else None
    return p | "ExportEmbeddings" >> ExportEmbeddings(plan, buffer_bytes, rows_read_to=progress)


def freeze_heap() -> None:
    """Exempt every object alive now from Python's full garbage collections (``gc.freeze``).

    For a process that exists to launch one export, once its imports and plan are made. Such a
    process holds about 480,000 objects (TensorFlow, Beam, pyarrow, the plan), alive to its end,
    and a full collection walks every one of them: on the development VM one came in each export
    of 200,000 or 400,000 rows, at a random moment, and took 0.22-0.30 s (about 5% of a
    200,000-row run); with those objects frozen it took 0.01-0.03 s. Frozen objects are still freed when their last
    reference goes; only reference cycles among them are never collected. So library code does
    not call this: a process that goes on with other work keeps its collector as it was. The
    command line calls it when it owns the process (``embedding-export run``).
    """
    gc.freeze()


def _export_error(err: BaseException) -> Optional[str]:
    """The message of an ExportError raised on a worker, however the runner wrapped it.

    In-process runners keep the exception chain. Runners with a job service (Prism, portable
    runners) report only the worker's traceback as text, so the message is read from it.
    """
    seen = set()
    found = None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ExportError):
            found = str(err)  # the innermost one carries the message without runner decoration
        elif found is None:
            quoted = _EXPORT_ERROR_LINE.findall(str(err))
            if quoted:
                found = quoted[-1]
        err = err.__cause__ or err.__context__
    if found is not None:
        found = re.sub(r" \[while running '[^']*'\]$", "", found)
    return found


_EXPORT_ERROR_LINE = re.compile(r"^(?:\w+\.)*ExportError: (.+)$", re.MULTILINE)


def run_export(plan: ExportPlan, beam_args: Sequence[str] = (), progress_dir: Optional[str] = None,
               on_launch: Optional[Callable[[PipelineResult, PipelineOptions], None]] = None) -> Dict:
    """Run the export ``plan`` to completion and return its manifest.

    The plan is taken as it is (``pipeline.plan.preflight`` made and checked it); Beam's
    FileSystems keep the settings the caller gave them (the command line sets them once, from the
    same options, before making the plan).

    Args:
      plan: the checked plan.
      beam_args: extra Beam options (after the config's runner options, so they win).
      progress_dir: a local directory to report rows read to (``pipeline.progress.RunProgress``).
      on_launch: called with the runner's result and the options once the job is submitted,
        before waiting for it (the CLI prints a Dataflow job's id and console URL from it).

    The run claims the output directory before it launches (``transforms.claim``) and checks it
    again (``pipeline.plan.recheck_output``); the claim is released when the run ends.

    Raises:
      PreflightError: another run holds the output directory, or it changed since the plan was
        made so that this run may not write there (raised before launching).
      ExportError: the run finished but could not be published (accounting, rejects), or failed.
    """
    options = pipeline_options(plan.config, beam_args)
    _restore_symlinked_output(plan.layout.path)
    out = plan.layout.path
    try:
        claim = acquire(out, plan.run_id)
    except ClaimRefused as err:
        raise PreflightError(str(err)) from None
    except OSError as err:  # the first write of the run
        raise PreflightError(f"output.path {out}: cannot write there: {err}") from None
    try:
        plan = recheck_output(plan)
    except PreflightError:
        release(out, plan.run_id)
        raise
    _LOG.info("exporting %s rows from %d files to %s (run %s)", plan.total_rows, len(plan.files), out, plan.run_id)
    try:
        pause_point("run.claimed")
        with Heartbeat(out, claim):
            _run_pipeline(plan, options, progress_dir, on_launch)
    finally:
        release(out, plan.run_id)
    return read_manifest(out, require_success=True).raw


def _run_pipeline(plan: ExportPlan, options: PipelineOptions, progress_dir: Optional[str],
                  on_launch: Optional[Callable[[PipelineResult, PipelineOptions], None]]) -> None:
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, progress_dir=progress_dir)
    try:
        result = p.run()
        if on_launch is not None:
            on_launch(result, options)
        state = result.wait_until_finish()
    except BaseException as err:  # a signal (KeyboardInterrupt, the CLI's SIGTERM) cleans up too
        _discard_scratch(plan)
        if not isinstance(err, Exception):
            raise
        message = _export_error(err)
        if message is not None:
            raise ExportError(message) from err
        raise
    if state != PipelineState.DONE:
        _discard_scratch(plan)
        raise ExportError(f"the pipeline ended in state {state}; nothing was published to {plan.layout.path}")


def _restore_symlinked_output(path: str) -> None:
    """Make the missing target of a symlinked local output directory again (empty): a kill between
    the directory publish's two renames leaves the link dangling, and the run writes through it."""
    if "://" not in path and os.path.islink(path) and not os.path.exists(path):
        os.makedirs(os.path.realpath(path))


def _discard_scratch(plan: ExportPlan) -> None:
    """After a failed run, remove its own scratch files (``_temporary/<run_id>``), nothing else.

    The publish journal stays when there is one: finalize had started moving files into place,
    and the journal is what tells the next run that those files are this job's. So do the
    rejected rows a run kept in its scratch directory (too many rejected rows beside a finished
    export, ``transforms.finalize.rejected_dir_of_failed_run``).
    """
    scratch = FileSystems.join(plan.layout.path, TEMP_DIR, plan.run_id)
    try:
        files = [m.path for m in list_files(scratch)]
        kept = rejected_dir_of_failed_run(plan.layout.path, plan.run_id, True).rstrip("/") + "/"
        doomed = [f for f in files if f.rsplit("/", 1)[-1] != JOURNAL_NAME and not f.startswith(kept)]
        if doomed:
            FileSystems.delete(doomed)
        if "://" not in scratch:  # the empty local directories left: the run's, then _temporary
            for dirpath, _, _ in sorted(os.walk(scratch), key=lambda item: -len(item[0])):
                if not os.listdir(dirpath):
                    os.rmdir(dirpath)
            parent = os.path.dirname(scratch)
            if os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
    except Exception as err:  # the run's own error is the one to report
        _LOG.warning("could not remove the scratch files of failed run %s: %s", plan.run_id, err)
