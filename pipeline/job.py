"""The export job: the transforms assembled into one Beam pipeline, and the blocking entry point.

    Parquet files --ReadAllFromParquetBatched--> (file, Arrow table)
      --ValidateAndBatch--> tables of model.batch_size good rows   (+ rejected rows, rows read)
      --EmbedBatches------> EmbeddedBatch                          (+ rows with non-finite outputs)
      --PartitionBatches--> (shard, slice of the batch)
      --WriteShards-------> one complete temporary file per shard
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
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipeline.config import ExportConfig
from pipeline.manifest import manifest_base, read_manifest
from pipeline.preflight import ExportPlan, preflight
from transforms.embed import EmbedBatches, SavedModelHandler
from transforms.finalize import TEMP_DIR, ExportError, FinalizeExport
from transforms.formats import make_format
from transforms.partition import PartitionBatches
from transforms.validate import ValidateAndBatch
from transforms.write import DEFAULT_BUFFER_BYTES, WriteRejected, WriteShards

__all__ = ["build_pipeline", "pipeline_options", "run_export", "ExportError"]

_LOG = logging.getLogger(__name__)


def pipeline_options(config: ExportConfig, beam_args: Sequence[str] = ()) -> PipelineOptions:
    """Beam options: the config's runner and options, then the extra arguments (which win)."""
    return PipelineOptions([f"--runner={config.runner.name}", *config.runner.options, *beam_args])


def build_pipeline(p: beam.Pipeline, plan: Union[ExportPlan, ExportConfig],
                   buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> beam.PCollection:
    """Add the export to ``p``; returns the PCollection holding the manifest once it is published.

    Args:
      p: the pipeline to build on.
      plan: the checked, resolved job (``pipeline.preflight.preflight``), or a config to check now.
      buffer_bytes: framed output bytes a bundle buffers before writing a part file.
    """
    if isinstance(plan, ExportConfig):
        plan = preflight(plan)
    cfg = plan.config
    tables = (p
              | "InputFiles" >> beam.Create([f.path for f in plan.files])
              | "ReadParquet" >> ReadAllFromParquetBatched(columns=list(plan.read_schema.names),
                                                            with_filename=True))
    validated = tables | "Validate" >> ValidateAndBatch(plan.rules, cfg.model.batch_size)
    handler = SavedModelHandler(cfg.model.path, cfg.model.signature, plan.inputs, plan.outputs,
                                cfg.model.intra_op_threads, cfg.model.inter_op_threads)
    embedded = validated.batches | "Embed" >> EmbedBatches(handler, cfg.input.key, plan.partition.column)
    slices = embedded.embedded | "Partition" >> PartitionBatches(plan.partition)
    shards = slices | "WriteShards" >> WriteShards(make_format(plan.layout, plan.outputs), buffer_bytes)
    rejected = ((validated.rejected, embedded.rejected)
                | "AllRejected" >> beam.Flatten()
                | "WriteRejected" >> WriteRejected(plan.layout, plan.rejected_schema))
    return ({"shards": shards, "rows_read": validated.rows_read, "rejected": rejected}
            | "Finalize" >> FinalizeExport(plan.layout, manifest_base(plan), expected_rows=plan.total_rows,
                                           max_reject_fraction=cfg.output.max_reject_fraction,
                                           overwrite=plan.overwrite))


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
               plan: Optional[ExportPlan] = None) -> Dict:
    """Run the export to completion and return its manifest.

    Args:
      config: the run config.
      beam_args: extra Beam options (after the config's runner options, so they win).
      overwrite: replace an earlier export in the output directory.
      plan: an already checked plan (skips the preflight).
    Raises:
      PreflightError: the config, model or input does not fit (raised before launching).
      ExportError: the run finished but could not be published (accounting, rejects), or failed.
    """
    options = pipeline_options(config, beam_args)
    # The launcher reads the input footers and the model signature through Beam's FileSystems,
    # which take their settings (HDFS host, GCS project, ...) from the pipeline options.
    FileSystems.set_options(options)
    plan = plan or preflight(config, overwrite=overwrite, beam_args=beam_args)
    _LOG.info("exporting %d rows from %d files to %s (run %s)", plan.total_rows, len(plan.files),
              plan.layout.path, plan.run_id)
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan)
    try:
        result = p.run()
        state = result.wait_until_finish()
    except Exception as err:
        _discard_scratch(plan)
        message = _export_error(err)
        if message is not None:
            raise ExportError(message) from err
        raise
    if state != PipelineState.DONE:
        _discard_scratch(plan)
        raise ExportError(f"the pipeline ended in state {state}; nothing was published to {plan.layout.path}")
    return read_manifest(plan.layout.path)


def _discard_scratch(plan: ExportPlan) -> None:
    """After a failed run, remove its own scratch files (``_temporary/<run_id>``), nothing else."""
    scratch = FileSystems.join(plan.layout.path, TEMP_DIR, plan.run_id)
    try:
        if "://" not in scratch:
            if FileSystems.exists(scratch):
                FileSystems.delete([scratch])
            parent = os.path.dirname(scratch)
            if os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
        else:
            files = [m.path for m in FileSystems.match([FileSystems.join(scratch, "**")])[0].metadata_list]
            if files:
                FileSystems.delete(files)
    except Exception as err:  # the run's own error is the one to report
        _LOG.warning("could not remove the scratch files of failed run %s: %s", plan.run_id, err)
