"""The export job: the transforms assembled into one Beam pipeline, and the blocking entry point.

    Parquet files --ReadParquetRowGroups-------> (file, Arrow table)  (+ unreadable row groups, skip only)
    (or DataRecord files --ReadDataRecords-----> the same   + undecodable records, rejected)
      --ValidateAndBatch--> tables of model.batch_size good rows   (+ rejected rows, rows read)
      --EmbedBatches------> EmbeddedBatch                          (+ rows with non-finite outputs)
      --PartitionBatches--> (shard, slice of the batch)
      --WriteShards-------> one complete temporary file per shard
    rejected rows --RestoreInputColumns (Parquet: the columns not read, for these rows only)--> WriteRejected
      --FinalizeExport----> shard files, _rejected/, _MANIFEST.json, then _SUCCESS

``run_export`` checks everything it can before launching (``pipeline.preflight``), runs the
pipeline on the configured runner and returns the manifest it wrote.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipeline.config import ExportConfig
from pipeline.datarecord_input import datarecord_source
from pipeline.manifest import manifest_base, read_manifest
from pipeline.preflight import ExportPlan, PreflightError, preflight, recheck_output
from pipeline.progress import ReportRowsRead
from transforms.claim import ClaimRefused, Heartbeat, acquire, release
from transforms.duplicates import CountDuplicateKeys, bucket_count
from transforms.embed import EmbedBatches, SavedModelHandler
from transforms.finalize import TEMP_DIR, ExportError, FinalizeExport, rejected_dir_of_failed_run
from transforms.formats import make_format
from transforms.isolate import with_error_column
from transforms.ownership import JOURNAL_NAME
from transforms.pause_points import pause_point
from transforms.parquet_input import ReadParquetRowGroups
from transforms.partition import PartitionBatches
from transforms.read_datarecord import ReadDataRecords
from transforms.rejected_columns import RestoreInputColumns
from transforms.validate import ValidateAndBatch
from transforms.write import DEFAULT_BUFFER_BYTES, WriteRejected, WriteShards

__all__ = ["build_pipeline", "pipeline_options", "run_export", "ExportError"]

_LOG = logging.getLogger(__name__)


def pipeline_options(config: ExportConfig, beam_args: Sequence[str] = ()) -> PipelineOptions:
    """Beam options: the config's runner and options, then the extra arguments (which win)."""
    return PipelineOptions([f"--runner={config.runner.name}", *config.runner.options, *beam_args])


def build_pipeline(p: beam.Pipeline, plan: Union[ExportPlan, ExportConfig],
                   buffer_bytes: int = DEFAULT_BUFFER_BYTES, progress_dir: Optional[str] = None) -> beam.PCollection:
    """Add the export to ``p``; returns the PCollection holding the manifest once it is published.

    Args:
      p: the pipeline to build on.
      plan: the checked, resolved job (``pipeline.preflight.preflight``), or a config to check now.
      buffer_bytes: framed output bytes a bundle buffers before writing a part file.
      progress_dir: a local directory to report rows read to (``pipeline.progress``), or None.
    """
    if isinstance(plan, ExportConfig):
        plan = preflight(plan)
    cfg = plan.config
    files = p | "InputFiles" >> beam.Create([f.path for f in plan.files])
    read_rejected, read_rows = [], []  # DataRecord input: undecodable records, rejected while reading
    unreadable = None  # Parquet input: row groups skipped by on_bad_file: skip
    if cfg.input.format == "datarecord":
        read = files | "ReadDataRecords" >> ReadDataRecords(datarecord_source(cfg))
        tables, read_rejected, read_rows = read.tables, [read.rejected], [read.rows_read]
    else:
        read = files | "ReadParquet" >> ReadParquetRowGroups(
            {f.path: f.row_group_rows for f in plan.files}, plan.read_schema.names, cfg.input.on_bad_file)
        tables, unreadable = read.tables, read.unreadable
    validated = tables | "Validate" >> ValidateAndBatch(plan.rules, cfg.model.batch_size)
    handler = SavedModelHandler(cfg.model.path, cfg.model.signature, plan.inputs, plan.outputs,
                                cfg.model.intra_op_threads, cfg.model.inter_op_threads)
    embedded = validated.batches | "Embed" >> EmbedBatches(handler, cfg.input.key, plan.partition.column,
                                                           max_failed_rows=_failure_budget(plan))
    slices = embedded.embedded | "Partition" >> PartitionBatches(plan.partition)
    shards = slices | "WriteShards" >> WriteShards(make_format(plan.layout, plan.outputs), buffer_bytes)
    rows_read = validated.rows_read
    if read_rows:
        rows_read = (validated.rows_read, *read_rows) | "AllRowsRead" >> beam.Flatten()
    if progress_dir:
        _ = rows_read | "Progress" >> ReportRowsRead(progress_dir)
    rejected = ((validated.rejected, embedded.rejected, *read_rejected)
                | "AllRejected" >> beam.Flatten()
                | "WithErrorColumn" >> beam.Map(with_error_column))
    if len(plan.unread_columns):  # Parquet input with columns the job does not read
        rejected = rejected | "RestoreInputColumns" >> RestoreInputColumns(
            plan.unread_columns, cfg.input.key, {f.path: f.row_group_rows for f in plan.files})
    rejected = rejected | "WriteRejected" >> WriteRejected(plan.layout, plan.rejected_schema)
    duplicates = embedded.embedded | "CountDuplicateKeys" >> CountDuplicateKeys(bucket_count(plan.total_rows))
    finalize_inputs = {"shards": shards, "rows_read": rows_read, "rejected": rejected, "duplicates": duplicates}
    if unreadable is not None:
        finalize_inputs["unreadable"] = unreadable
    return (finalize_inputs
            | "Finalize" >> FinalizeExport(plan.layout, manifest_base(plan), expected_rows=plan.total_rows,
                                           max_reject_fraction=cfg.output.max_reject_fraction,
                                           stale=plan.stale_files, require_claim=plan.claimed))


def _failure_budget(plan: ExportPlan) -> Optional[int]:
    """Rows the model may fail on before the run is sure to exceed output.max_reject_fraction."""
    total, fraction = plan.total_rows, plan.config.output.max_reject_fraction
    if total is None or fraction >= 1.0:
        return None
    return int(fraction * total)


def _export_error(err: BaseException) -> Optional[str]:
    """The message of an ExportError raised on a worker, however the runner wrapped it."""
    seen = set()
    found = None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ExportError):
            found = str(err)  # the innermost one carries the message without runner decoration
        err = err.__cause__ or err.__context__
    if found is not None:
        found = re.sub(r" \[while running '[^']*'\]$", "", found)
    return found


def run_export(config: ExportConfig, beam_args: Sequence[str] = (), overwrite: bool = False,
               plan: Optional[ExportPlan] = None, progress_dir: Optional[str] = None) -> Dict:
    """Run the export to completion and return its manifest.

    Args:
      config: the run config.
      beam_args: extra Beam options (after the config's runner options, so they win).
      overwrite: replace an earlier export in the output directory.
      plan: an already checked plan (skips the preflight).
      progress_dir: a local directory to report rows read to (``pipeline.progress.RunProgress``).
    The run claims the output directory before it launches (``transforms.claim``) and checks it
    again (``pipeline.preflight.recheck_output``); the claim is released when the run ends.

    Raises:
      PreflightError: the config, model or input does not fit, or another run holds the output
        directory (raised before launching).
      ExportError: the run finished but could not be published (accounting, rejects), or failed.
    """
    options = pipeline_options(config, beam_args)
    # The launcher reads the input footers and the model signature through Beam's FileSystems,
    # which take their settings (HDFS host, GCS project, ...) from the pipeline options.
    FileSystems.set_options(options)
    plan = plan or preflight(config, overwrite=overwrite, beam_args=beam_args)
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
            _run_pipeline(plan, options, progress_dir)
    finally:
        release(out, plan.run_id)
    return read_manifest(out)


def _run_pipeline(plan: ExportPlan, options: PipelineOptions, progress_dir: Optional[str]) -> None:
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, progress_dir=progress_dir)
    try:
        result = p.run()
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
        files = [m.path for m in FileSystems.match([FileSystems.join(scratch, "**")])[0].metadata_list]
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
