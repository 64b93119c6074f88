"""The export plan: everything a run does, resolved and checked once, before launch.

The command line (``pipeline.plan.preflight``) loads the run config, checks it against the model
signature, the input files and the output directory, and makes one ``ExportPlan``; the job and
``ExportEmbeddings`` take that plan and never look at the config again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import pyarrow as pa

from transforms.inputs.base import InputFile, InputReader
from transforms.rejected import rejected_layout, stamped, unread_columns
from transforms.specs import InputSpec, ModelSpec, OutputLayout, OutputSpec, PartitionSpec
from transforms.validate import ValidationRules

__all__ = ["ExportPlan"]


@dataclass(frozen=True)
class ExportPlan:
    """The job, resolved and checked.

    Args:
      run_id: this run's id (names its scratch directory).
      files: the input files, sorted, with their row counts where the container has them.
      skipped_files: (path, why) of unreadable files skipped by ``input.on_bad_file: skip``.
      read_schema: the columns read and their types.
      inputs / outputs: the signature inputs (with their columns) and exported outputs.
      partition: shard count and optional partition-id column.
      layout: the output directory, format and names.
      embedding_dim: D of the exported embedding.
      overwrite: replace an earlier export in the output directory.
      reader: the read step of the input (``transforms.inputs``).
      key_column: the integer user-key column.
      model: the SavedModel, its signature, batch size and thread pools.
      max_reject_fraction: the run fails when more of the rows read are rejected.
      manifest_base: the manifest's entries known before the run (``transforms.outputdir.static_manifest``).
      created_at: when the run was launched (UTC, ISO 8601).
      stale_files: files in the output directory that this job wrote earlier (an earlier export
        when overwriting, or what an unfinished run left): finalize removes these and no others.
      previous_runs: run ids of unfinished runs whose files are among them.
      claimed: the run holds the claim on the output directory (``transforms.claim``;
        ``pipeline.job.run_export`` claims it and sets this): finalize checks it still does.
      input_schema: every column of the Parquet input files (their union, in order of first
        appearance, each with the type of the first file that has it), for the rejected rows;
        None for DataRecord input.
      config: the effective run config the plan was made from (``pipeline.config.ExportConfig``,
        paths absolute), for display; nothing here reads it.
    """
    run_id: str
    files: Tuple[InputFile, ...]
    skipped_files: Tuple[Tuple[str, str], ...]
    read_schema: pa.Schema
    inputs: Tuple[InputSpec, ...]
    outputs: Tuple[OutputSpec, ...]
    partition: PartitionSpec
    layout: OutputLayout
    embedding_dim: int
    overwrite: bool
    reader: InputReader
    key_column: str
    model: ModelSpec
    max_reject_fraction: float = 1.0
    manifest_base: Dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    stale_files: Tuple[str, ...] = ()
    previous_runs: Tuple[str, ...] = ()
    input_schema: Optional[pa.Schema] = None
    config: Any = None
    claimed: bool = False

    @property
    def total_rows(self) -> Optional[int]:
        """Rows in the input by the file metadata; None when it is not known before reading."""
        if any(f.rows is None for f in self.files):
            return None
        return sum(f.rows for f in self.files)

    @property
    def rules(self) -> ValidationRules:
        return ValidationRules(self.key_column, self.inputs, self.partition, self.read_schema)

    @property
    def unread_columns(self) -> pa.Schema:
        """Input columns the job does not read: restored for the rejected rows only."""
        return unread_columns(self.read_schema, self.input_schema)

    @property
    def rejected_schema(self) -> pa.Schema:
        """Every input column (in the input files' order), ``reason``, ``source_file``,
        ``source_row``, ``error`` (``transforms.rejected.rejected_layout``), stamped with the run
        id that marks the rejected-rows files as this job's (``transforms.ownership``)."""
        return stamped(rejected_layout(self.read_schema, self.input_schema), self.run_id)

    @property
    def failure_budget(self) -> Optional[int]:
        """Rows the model may fail on before the run is sure to exceed ``max_reject_fraction``."""
        total = self.total_rows
        if total is None or self.max_reject_fraction >= 1.0:
            return None
        return int(self.max_reject_fraction * total)
