"""The plan of a run, made once before launch: the run config checked against the model
signature, the input files and the output directory.

Everything a run would otherwise discover minutes later on a worker is checked here, in the
launcher, in seconds: that the config has no unfilled placeholders; that the SavedModel has the
signature with exactly the configured inputs (dtype, rank, static dims) and outputs (the first
a float32 [B, D] embedding); that the input pattern matches files (``transforms.inputs``: Parquet
footers, the first record of DataRecord files) holding the key column (integer) and every
configured column with a type the model input accepts, the same in every file; and that the
output directory holds no earlier export unless overwriting. Paths are made absolute (workers
may run in another directory). The result is a ``transforms.plan.ExportPlan``: everything the
transforms need, resolved; the job takes it as it is.
"""
from __future__ import annotations

import logging
import re
from typing import List, Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.config import ExportConfig
from transforms.arrow_columns import is_list_type
from transforms.errors import PreflightError
from transforms.inputs.base import InputScan
from transforms.inputs.datarecord import CONTINUOUS, DISCRETE, DataRecordSource, FeatureColumn, scan_datarecord
from transforms.inputs.parquet import scan_parquet
from transforms.outputdir import absolute_path, static_manifest, utc_now
from transforms.ownership import check_output_dir, new_run_id
from transforms.plan import ExportPlan
from transforms.rejected import RESERVED_COLUMNS
from transforms.signature import model_specs
from transforms.specs import KIND_SCALAR, InputSpec, OutputLayout, PartitionSpec
from twml.feature_ids import feature_id

__all__ = ["preflight", "find_placeholders", "datarecord_source"]

_LOG = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def find_placeholders(config: ExportConfig, beam_args: Sequence[str] = ()) -> List[str]:
    """'key: value' for every config value or Beam argument still holding a <PLACEHOLDER>."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and _PLACEHOLDER.search(node):
            found.append(f"{where}: {node!r}")

    walk(config.model_dump(mode="json"), "")
    walk(list(beam_args), "beam args")
    return found


# ------------------------------------------------------------------------------------------------
# The input: the config's columns, checked against the files' (``transforms.inputs`` scans them).

def _value_type_accepts(value_type: pa.DataType, dtype: str) -> bool:
    """Whether Parquet values of ``value_type`` can feed a ``dtype`` input (ints may feed floats)."""
    if dtype.startswith("float"):
        return pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
    if dtype.startswith("int"):
        return pa.types.is_integer(value_type)
    if dtype == "bool":
        return pa.types.is_boolean(value_type)
    return False


def _check_schema(path: str, schema: pa.Schema, config: ExportConfig, inputs: Sequence[InputSpec]) -> None:
    def column(name: str, role: str) -> pa.DataType:
        if name not in schema.names:
            raise PreflightError(f"{path}: column {name!r} ({role}) does not exist; the file has "
                                 f"{schema.names}")
        return schema.field(name).type

    key_type = column(config.input.key, "input.key")
    if not pa.types.is_integer(key_type) or key_type == pa.uint64():
        raise PreflightError(f"{path}: key column {config.input.key!r} has type {key_type}; it must be an "
                             "integer type that fits int64 (keys are exported as int64)")
    if config.partition.column:
        ptype = column(config.partition.column, "partition.column")
        if not pa.types.is_integer(ptype):
            raise PreflightError(f"{path}: partition column {config.partition.column!r} has type {ptype}; "
                                 "it must be an integer type (the shard id)")
    for spec in inputs:
        ctype = column(spec.column, f"model.inputs.{spec.name}.column")
        role = f"column {spec.column!r} (feeds {spec.dtype} input {spec.name!r})"
        if spec.kind == KIND_SCALAR:
            if is_list_type(ctype) or not _value_type_accepts(ctype, spec.dtype):
                raise PreflightError(f"{path}: {role} has type {ctype}; expected a scalar column "
                                     f"convertible to {spec.dtype}")
        else:
            if not is_list_type(ctype) or not _value_type_accepts(ctype.value_type, spec.dtype):
                raise PreflightError(f"{path}: {role} has type {ctype}; expected a list column of values "
                                     f"convertible to {spec.dtype}")
    for reserved in RESERVED_COLUMNS:
        if reserved in _read_columns(config, inputs):
            raise PreflightError(f"input column {reserved!r} clashes with a column of the rejected-rows output")


def _read_columns(config: ExportConfig, inputs: Sequence[InputSpec]) -> List[str]:
    names = [config.input.key]
    if config.partition.column:
        names.append(config.partition.column)
    for spec in inputs:
        names.append(spec.column)
    return list(dict.fromkeys(names))


def _used_columns(config: ExportConfig) -> List[str]:
    used = [spec.column for spec in config.model.inputs.values()]
    if config.partition.column:
        used.append(config.partition.column)
    return used


def datarecord_source(config: ExportConfig) -> DataRecordSource:
    """``input.features`` resolved: the feature columns that the model inputs and partition column
    use (others are not decoded), feature names hashed to ids."""
    inp = config.input
    features = inp.features or {}
    used = set(_used_columns(config))
    unused = [name for name in features if name not in used]
    if unused:
        _LOG.warning("input.features %s feed no model input or partition column; they are not read", unused)
    columns = []
    for name, column in features.items():
        if name not in used:
            continue
        default = column.default
        if default is not None and column.kind == CONTINUOUS:
            default = float(default)
        columns.append(FeatureColumn(name=name, kind=column.kind,
                                     feature_ids=tuple(feature_id(n) for n in column.names),
                                     scalar=isinstance(getattr(column, column.kind), str)
                                     and column.kind in (CONTINUOUS, DISCRETE),
                                     default=default))
    return DataRecordSource(container=inp.container or "tfrecord", key_column=inp.key,
                            key_feature_id=feature_id(inp.key), columns=tuple(columns),
                            rows_per_table=config.model.batch_size)


def _scan_input(config: ExportConfig, inputs: Sequence[InputSpec]) -> InputScan:
    """The configured input's scan: Parquet footers, or the first record of each DataRecord file."""
    if config.input.format == "parquet":
        return scan_parquet(config.input.path, _read_columns(config, inputs),
                            lambda path, schema: _check_schema(path, schema, config, inputs),
                            config.input.on_bad_file, config.model.batch_size)
    source = datarecord_source(config)
    features = sorted(config.input.features or {})
    for name, spec in config.model.inputs.items():
        if spec.column not in features:
            raise PreflightError(f"model.inputs.{name}.column {spec.column!r} is not one of input.features "
                                 f"{features}")
    if config.partition.column and config.partition.column not in features:
        raise PreflightError(f"partition.column {config.partition.column!r} is not one of input.features {features}")
    _check_schema("input.features", source.schema, config, inputs)
    return scan_datarecord(config.input.path, source, config.input.on_bad_file)


def preflight(config: ExportConfig, overwrite: bool = False, beam_args: Sequence[str] = (),
              run_id: Optional[str] = None) -> ExportPlan:
    """Check the config against the model and the input files; return the resolved plan.

    Args:
      config: the validated run config.
      overwrite: replace an earlier export (also ``output.overwrite``).
      beam_args: extra Beam options (checked for placeholders).
      run_id: the run id (a new one by default).
    Raises:
      PreflightError: with a message naming the key, file or column and what is wrong.
    """
    placeholders = find_placeholders(config, beam_args)
    if placeholders:
        raise PreflightError("the run config still has placeholders to fill in (edit the file or use "
                             "--set section.key=value): " + "; ".join(placeholders))
    config = config.model_copy(update={
        "input": config.input.model_copy(update={"path": absolute_path(config.input.path)}),
        "model": config.model.model_copy(update={"path": absolute_path(config.model.path)}),
        "output": config.output.model_copy(update={"path": absolute_path(config.output.path)}),
    })
    overwrite = overwrite or config.output.overwrite
    if overwrite != config.output.overwrite:
        config = config.model_copy(update={"output": config.output.model_copy(update={"overwrite": overwrite})})

    specs = model_specs(config.model)
    inputs, outputs, dim = specs.inputs, specs.outputs, specs.embedding_dim
    scan = _scan_input(config, inputs)
    inventory = check_output_dir(config.output.path, overwrite)
    run_id = run_id or new_run_id()
    partition = PartitionSpec(config.partition.num_shards,
                              config.partition.column if config.partition.by == "column" else None)
    layout = OutputLayout(path=config.output.path, run_id=run_id, format=config.output.format,
                          compression=config.output.compression, num_shards=config.partition.num_shards,
                          key_feature_id=feature_id(config.output.key_feature),
                          records_per_block=config.output.records_per_block)
    created = utc_now()
    files = scan.files
    rows = None if any(f.rows is None for f in files) else sum(f.rows for f in files)
    manifest_base = static_manifest(
        fmt=layout.format, compression=layout.compression, num_shards=partition.num_shards,
        key_feature=config.output.key_feature, key_feature_id=layout.key_feature_id, outputs=outputs,
        embedding_dim=int(dim), model_path=config.model.path, signature=config.model.signature,
        partition_column=partition.column, input_path=config.input.path, files=len(files), rows=rows,
        skipped_files=scan.skipped, config=config.model_dump(mode="json"), created_at=created)
    model = specs.model
    return ExportPlan(run_id=run_id, files=files, skipped_files=scan.skipped, read_schema=scan.read_schema,
                      inputs=inputs, outputs=outputs, partition=partition, layout=layout, embedding_dim=int(dim),
                      overwrite=overwrite, reader=scan.reader, key_column=config.input.key, model=model,
                      max_reject_fraction=config.output.max_reject_fraction, manifest_base=manifest_base,
                      created_at=created,
                      stale_files=tuple(FileSystems.join(config.output.path, name) for name in inventory.ours),
                      previous_runs=inventory.runs, input_schema=scan.input_schema, config=config)
