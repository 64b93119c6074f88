"""The export as Beam transforms a pipeline composes: the whole job, or its steps on one's own data.

    ExportEmbeddings(plan)        the whole export (what ``embedding-export run`` builds):
                                  input files -> shards, _rejected/, _MANIFEST.json, _SUCCESS;
                                  returns the manifest as a one-element PCollection
    EmbedTables(handler, ...)     Arrow tables or dict rows -> validated, batched, embedded:
                                  ``EmbedResult`` (EmbeddedBatch, rejected rows, rows read)
    WriteDataRecordShards(...)    keyed embeddings from any source (``(key, vector)``,
                                  ``(key, PredictionResult)``, EmbeddedBatch) -> this project's
                                  output directory, published atomically with its manifest

Each is a composite of the steps in ``transforms`` with a stable name per stage, so a run reads
top to bottom in the runner's UI as it does here.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.transforms.window import GlobalWindows

from transforms.duplicates import CountDuplicateKeys, DuplicateCounts, bucket_count, shard_duplicates
from transforms.elements import EmbeddedBatch, RejectedPart
from transforms.embed import EmbedBatches, SavedModelHandler
from transforms.finalize import FinalizeExport
from transforms.formats import make_format
from transforms.outputdir import FORMATS, absolute_path, join_path, static_manifest
from transforms.ownership import check_output_dir, new_run_id
from transforms.partition import PartitionBatches
from transforms.plan import ExportPlan
from transforms.rejected import tag_rows, with_error_column
from transforms.rejected_columns import RestoreInputColumns
from transforms.specs import OutputLayout, OutputSpec, PartitionSpec
from transforms.validate import ValidateAndBatch, ValidationRules
from transforms.write import DEFAULT_BUFFER_BYTES, WriteRejected, WriteShards
from twml.feature_ids import feature_id

__all__ = ["ExportEmbeddings", "EmbedTables", "EmbedResult", "WriteDataRecordShards"]


class ExportEmbeddings(beam.PTransform):
    """The whole export of ``plan``, applied to a pipeline: ``manifest = p | ExportEmbeddings(plan)``.

    The output directory is written as the command line writes it (shards, ``_rejected/``,
    ``_MANIFEST.json``, then ``_SUCCESS``, published only when every check passes); the returned
    PCollection holds the manifest (a dict) once it is published.

    Args:
      plan: the checked, resolved job (``pipeline.plan.preflight`` makes it from a run config).
      buffer_bytes: framed output bytes a bundle buffers before writing a part file.
      rows_read_to: a PTransform that takes the PCollection of rows-read counts (ints), e.g. to
        report progress; None for none.
    """

    def __init__(self, plan: ExportPlan, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 rows_read_to: Optional[beam.PTransform] = None):
        super().__init__()
        self._plan = plan
        self._buffer_bytes = buffer_bytes
        self._rows_read_to = rows_read_to

    def expand(self, pbegin):
        plan = self._plan
        # One bundle lists the parts in plan order; the read step spreads them (SpreadOverWorkers).
        files = pbegin | "InputFiles" >> beam.Create([f.path for f in plan.files], reshuffle=False)
        read = files | plan.reader.step_name >> plan.reader.read(plan.files)
        validated = read.tables | "Validate" >> ValidateAndBatch(plan.rules, plan.model.batch_size)
        handler = SavedModelHandler(plan.model.path, plan.model.signature, plan.inputs, plan.outputs,
                                    plan.model.intra_op_threads, plan.model.inter_op_threads)
        embedded = validated.batches | "Embed" >> EmbedBatches(handler, plan.key_column, plan.partition.column,
                                                               max_failed_rows=plan.failure_budget)
        sharded = embedded.embedded | "Partition" >> PartitionBatches(plan.partition)
        # Hash placement puts every copy of a key in one shard: duplicates are counted per shard,
        # from the writer's key logs, and no key crosses a shuffle (transforms.duplicates).
        per_shard = plan.partition.column is None
        shards = sharded | "WriteShards" >> WriteShards(make_format(plan.layout, plan.outputs), self._buffer_bytes,
                                                       count_duplicates=per_shard)
        rows_read = (validated.rows_read, read.rows_read) | "AllRowsRead" >> beam.Flatten()
        if self._rows_read_to is not None:
            _ = rows_read | "Progress" >> self._rows_read_to
        rejected = ((validated.rejected, embedded.rejected, read.rejected)
                    | "AllRejected" >> beam.Flatten()
                    | "WithErrorColumn" >> beam.Map(with_error_column).with_output_types(pa.Table))
        if len(plan.unread_columns):  # input columns the job does not read
            rejected = rejected | "RestoreInputColumns" >> RestoreInputColumns(
                plan.unread_columns, plan.key_column, {f.path: f.row_group_rows for f in plan.files})
        rejected = rejected | "WriteRejected" >> WriteRejected(plan.layout, plan.rejected_schema)
        if per_shard:
            duplicates = shards | "DuplicatesPerShard" >> beam.Map(shard_duplicates).with_output_types(DuplicateCounts)
        else:
            duplicates = embedded.embedded | "CountDuplicateKeys" >> CountDuplicateKeys(bucket_count(plan.total_rows))
        return ({"shards": shards, "rows_read": rows_read, "rejected": rejected, "duplicates": duplicates,
                 "unreadable": read.unreadable}
                | "Finalize" >> FinalizeExport(plan.layout, plan.manifest_base, expected_rows=plan.total_rows,
                                               max_reject_fraction=plan.max_reject_fraction,
                                               stale=plan.stale_files, require_claim=plan.claimed))


# ------------------------------------------------------------------------------------------------
# Rows or Arrow tables in -> embedded batches

class EmbedResult(NamedTuple):
    """What ``EmbedTables`` gives: ``embedded`` (EmbeddedBatch), ``rejected`` (Arrow tables of
    the rejected rows: their columns, ``reason``, ``source_file``, ``source_row``, ``error``) and
    ``rows_read`` (ints: rows taken in, per element)."""
    embedded: beam.PCollection
    rejected: beam.PCollection
    rows_read: beam.PCollection


@beam.typehints.with_output_types(beam.typehints.Tuple[str, pa.Table])
class _TablesFn(beam.DoFn):
    """Arrow tables pass as they are; dict rows are gathered into tables of ``rows`` rows (per
    bundle). Every row is tagged with its index in its element (``source_row`` of a rejected row)."""

    def __init__(self, source: str, schema: pa.Schema, rows: int):
        self._source = source
        self._schema = schema
        self._rows = rows
        self._pending: List[Mapping[str, Any]] = []

    def start_bundle(self):
        self._pending = []

    def process(self, element):
        if isinstance(element, pa.Table):
            yield self._source, tag_rows(element, 0)
            return
        self._pending.append(element)
        if len(self._pending) >= self._rows:
            yield self._flush()

    def _flush(self):
        table = pa.Table.from_pylist(self._pending, schema=self._schema)
        self._pending = []
        return self._source, tag_rows(table, 0)

    def finish_bundle(self):
        if self._pending:
            yield GlobalWindows.windowed_value(self._flush())


class EmbedTables(beam.PTransform):
    """Arrow tables (or dict rows) of users -> ``EmbedResult``: the rows checked, cut into model
    batches and run through the SavedModel, as the export does.

    A row the model cannot be fed (null key, wrong-length list, non-finite value, ...) or whose
    outputs are not finite is rejected with its reason, never dropped. Batches never span two
    input tables.

    Args:
      handler: the model (its ``inputs`` name the columns that feed it).
      key_column: the integer user-key column.
      schema: the columns read and their types (the key, the input columns, the partition column);
        tables are cast to it, dict rows are built with it.
      batch_size: rows per model call.
      partition: the shard count and partition-id column, when ids come from a column (checked
        to lie in 0..num_shards-1 and carried to ``EmbeddedBatch.partition_ids``).
      source: the name rejected rows give as their ``source_file``.
      max_failed_rows: rows the model may fail on (after bisection) before the step fails; None
        for no limit.
    """

    def __init__(self, handler: SavedModelHandler, key_column: str, schema: pa.Schema, batch_size: int = 4096,
                 partition: Optional[PartitionSpec] = None, source: str = "<pcollection>",
                 max_failed_rows: Optional[int] = None):
        super().__init__()
        self._handler = handler
        self._key_column = key_column
        self._schema = schema
        self._batch_size = batch_size
        self._partition = partition or PartitionSpec(1)
        self._source = source
        self._max_failed_rows = max_failed_rows

    def expand(self, elements) -> EmbedResult:
        rules = ValidationRules(self._key_column, self._handler.inputs, self._partition, self._schema)
        tables = elements | "AsTables" >> beam.ParDo(_TablesFn(self._source, self._schema, self._batch_size))
        validated = tables | "Validate" >> ValidateAndBatch(rules, self._batch_size)
        embedded = validated.batches | "Embed" >> EmbedBatches(self._handler, self._key_column,
                                                               self._partition.column, self._max_failed_rows)
        rejected = ((validated.rejected, embedded.rejected)
                    | "AllRejected" >> beam.Flatten()
                    | "WithErrorColumn" >> beam.Map(with_error_column).with_output_types(pa.Table))
        return EmbedResult(embedded.embedded, rejected, validated.rows_read)


# ------------------------------------------------------------------------------------------------
# Keyed embeddings in -> this project's output directory

@beam.typehints.with_output_types(EmbeddedBatch)
class _ToBatchesFn(beam.DoFn):
    """``(key, value)`` pairs -> EmbeddedBatch of up to ``rows`` users (per bundle); an
    EmbeddedBatch passes as it is. ``value``: the embedding, a {output name: value} mapping, or a
    ``PredictionResult`` holding either."""

    def __init__(self, outputs: Sequence[OutputSpec], rows: int):
        self._outputs = tuple(outputs)
        self._rows = rows
        self._keys: List[int] = []
        self._values: List[List[Any]] = []

    def start_bundle(self):
        self._keys, self._values = [], [[] for _ in self._outputs]

    def process(self, element) -> Iterable[EmbeddedBatch]:
        if isinstance(element, EmbeddedBatch):
            yield element
            return
        key, value = element
        if isinstance(value, PredictionResult):
            value = value.inference
        if isinstance(value, Mapping):
            values = [value[spec.name] for spec in self._outputs]
        elif len(self._outputs) == 1:
            values = [value]
        else:
            raise ValueError(f"key {key}: got one value, expected a mapping of the outputs "
                             f"{[spec.name for spec in self._outputs]}")
        self._keys.append(int(key))
        for column, item in zip(self._values, values):
            column.append(item)
        if len(self._keys) >= self._rows:
            yield self._flush()

    def _flush(self) -> EmbeddedBatch:
        outputs = [np.stack([np.asarray(v, dtype=spec.dtype) for v in column])
                   for spec, column in zip(self._outputs, self._values)]
        batch = EmbeddedBatch(np.asarray(self._keys, dtype=np.int64), outputs)
        self._keys, self._values = [], [[] for _ in self._outputs]
        return batch

    def finish_bundle(self):
        if self._keys:
            yield GlobalWindows.windowed_value(self._flush())


class WriteDataRecordShards(beam.PTransform):
    """Keyed embeddings from any source -> this project's output directory, published atomically.

    Writes ``num_shards`` shard files of one DataRecord per user (the key under ``key_feature``,
    each output as a tensor under its feature), a user's shard being ``fmix64(key) % num_shards``;
    then the manifest and ``_SUCCESS``, only once every shard is complete (a failed run publishes
    nothing; a finished export is replaced only with ``overwrite``). The output directory is
    checked when the transform is applied: it must be empty, hold only an unfinished run of this
    job, or (with ``overwrite``) an earlier export of this job. Returns the manifest PCollection.

    Elements: ``(key, embedding)`` (a float vector of ``embedding_dim``), ``(key, {output: value})``
    for several ``outputs``, ``(key, PredictionResult)`` holding either (``RunInference`` with a
    ``KeyedModelHandler``), or ``EmbeddedBatch``.

    Args:
      path: the output directory (local, gs://, hdfs://).
      num_shards: shard files.
      format: "tfrecord", "block" or "parquet".
      embedding_dim: D of the embedding (or give ``outputs``).
      outputs: the outputs and their features, the float32 [D] embedding first; default one
        output "embedding" under ``embedding_feature``.
      compression: "none" or "gzip" (tfrecord and block).
      key_feature / embedding_feature: the feature names of the key and the embedding.
      records_per_block: records per block of the block format.
      overwrite: replace an earlier export of this job in ``path``.
      batch_size: users per encoded batch.
      run_id: names this run's scratch directory (default: a new one).
    """

    def __init__(self, path: str, num_shards: int, format: str = "tfrecord", *,
                 embedding_dim: Optional[int] = None, outputs: Optional[Sequence[OutputSpec]] = None,
                 compression: str = "none", key_feature: str = "meta.user_id", embedding_feature: str = "output",
                 records_per_block: int = 100, overwrite: bool = False, batch_size: int = 4096,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES, run_id: Optional[str] = None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"format {format!r} is not one of {FORMATS}")
        if num_shards <= 0:
            raise ValueError(f"num_shards must be > 0, got {num_shards}")
        if outputs is None:
            if not embedding_dim or embedding_dim <= 0:
                raise ValueError("give embedding_dim (> 0) or outputs")
            outputs = (OutputSpec("embedding", embedding_feature, feature_id(embedding_feature), "float32",
                                  (int(embedding_dim),)),)
        self._outputs = tuple(outputs)
        self._path = absolute_path(path)
        self._num_shards = num_shards
        self._format = format
        self._compression = compression
        self._key_feature = key_feature
        self._records_per_block = records_per_block
        self._overwrite = overwrite
        self._batch_size = batch_size
        self._buffer_bytes = buffer_bytes
        self._run_id = run_id

    def expand(self, elements):
        inventory = check_output_dir(self._path, self._overwrite)
        layout = OutputLayout(path=self._path, run_id=self._run_id or new_run_id(), format=self._format,
                              compression=self._compression, num_shards=self._num_shards,
                              key_feature_id=feature_id(self._key_feature),
                              records_per_block=self._records_per_block)
        base = static_manifest(fmt=self._format, compression=self._compression, num_shards=self._num_shards,
                               key_feature=self._key_feature, key_feature_id=layout.key_feature_id,
                               outputs=self._outputs, embedding_dim=int(self._outputs[0].shape[0]))
        batches = elements | "ToBatches" >> beam.ParDo(_ToBatchesFn(self._outputs, self._batch_size))
        sharded = batches | "Partition" >> PartitionBatches(PartitionSpec(self._num_shards))
        shards = sharded | "WriteShards" >> WriteShards(make_format(layout, self._outputs), self._buffer_bytes,
                                                       count_duplicates=True)
        rows_read = batches | "CountRows" >> beam.Map(len).with_output_types(int)
        rejected = elements.pipeline | "NoRejected" >> beam.Create([]).with_output_types(RejectedPart)
        duplicates = shards | "DuplicatesPerShard" >> beam.Map(shard_duplicates).with_output_types(DuplicateCounts)
        return ({"shards": shards, "rows_read": rows_read, "rejected": rejected, "duplicates": duplicates}
                | "Finalize" >> FinalizeExport(layout, base,
                                               stale=[join_path(self._path, name) for name in inventory.ours]))
