"""The plan of a run, made once before launch: the run config checked against the model
signature, the input files and the output directory.

Everything a run would otherwise discover minutes later on a worker is checked here, in the
launcher, in seconds: that the config has no unfilled placeholders; that the SavedModel has the
signature with exactly the configured inputs (dtype, rank, static dims) and outputs (the first
a float32 [B, D] embedding); that the input pattern matches files (``transforms.inputs``: Parquet
footers, the first record of DataRecord files) holding the key column (integer or string) and every
configured column with a type the model input accepts, the same in every file; and that the
output directory holds no earlier export unless overwriting. Paths are made absolute (workers
may run in another directory). Also: that the output and model paths hold no pattern characters
(``[ ] * ?``); that the runner exists; that the model's variables checkpoint is there and not
truncated; that a local output directory is writable, not on a read-only mount, has no file where
the job needs its ``_temporary`` or ``_rejected`` directory, and has room for at least the export's
raw bytes; and that no other live run holds the output directory's claim (``transforms.claim``).
The result is a ``transforms.plan.ExportPlan``: everything the
transforms need, resolved; the job takes it as it is.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from typing import List, Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.config import ExportConfig, OutputConfig
from transforms.arrow_columns import is_list_type
from transforms.errors import PreflightError, PreflightProblems
from transforms.inputs.base import InputScan
from transforms.inputs.datarecord import CONTINUOUS, DISCRETE, DataRecordSource, FeatureColumn, scan_datarecord
from transforms.inputs.parquet import scan_parquet
from transforms.keys import default_key_id_feature, is_integer_key_type, is_string_key_type
from transforms.outputdir import absolute_path, static_manifest, utc_now
from transforms.ownership import check_output_dir, new_run_id
from transforms.plan import ExportPlan
from transforms.rejected import RESERVED_COLUMNS
from transforms.signature import finish_specs, resolve_model
from transforms.specs import KIND_SCALAR, InputSpec, OutputLayout, OutputSpec, PartitionSpec
from transforms.tf_runtime import import_tensorflow
from twml.feature_ids import feature_id

__all__ = ["preflight", "recheck_output", "find_placeholders", "datarecord_source", "schema_problems",
           "key_id_feature", "estimated_export_bytes"]

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


def schema_problems(path: str, schema: pa.Schema, config: ExportConfig, inputs: Sequence[InputSpec]) -> List[str]:
    """Every way the columns of ``schema`` do not fit the config and signature inputs."""
    problems: List[str] = []

    def column(name: str, role: str) -> Optional[pa.DataType]:
        if name not in schema.names:
            problems.append(f"{path}: column {name!r} ({role}) does not exist; the file has {schema.names}")
            return None
        return schema.field(name).type

    key_type = column(config.input.key, "input.key")
    if key_type is not None and not (is_integer_key_type(key_type) or is_string_key_type(key_type)):
        problems.append(f"{path}: key column {config.input.key!r} has type {key_type}; it must be an integer "
                        "type that fits int64, or a string (string, large_string, binary: see "
                        "docs/FORMAT.md section 5)")
    if config.partition.column:
        ptype = column(config.partition.column, "partition.column")
        if ptype is not None and not pa.types.is_integer(ptype):
            problems.append(f"{path}: partition column {config.partition.column!r} has type {ptype}; "
                            "it must be an integer type (the shard id)")
    for spec in inputs:
        ctype = column(spec.column, f"model.inputs.{spec.name}.column")
        if ctype is None:
            continue
        role = f"column {spec.column!r} (feeds {spec.dtype} input {spec.name!r})"
        if spec.kind == KIND_SCALAR:
            if is_list_type(ctype) or not _value_type_accepts(ctype, spec.dtype):
                problems.append(f"{path}: {role} has type {ctype}; expected a scalar column "
                                f"convertible to {spec.dtype}")
        else:
            if not is_list_type(ctype) or not _value_type_accepts(ctype.value_type, spec.dtype):
                problems.append(f"{path}: {role} has type {ctype}; expected a list column of values "
                                f"convertible to {spec.dtype}")
    for reserved in RESERVED_COLUMNS:
        if reserved in _read_columns(config, inputs):
            problems.append(f"input column {reserved!r} clashes with a column of the rejected-rows output")
    return problems


def _check_schema(path: str, schema: pa.Schema, config: ExportConfig, inputs: Sequence[InputSpec]) -> None:
    """PreflightError listing every problem of ``schema_problems``."""
    problems = schema_problems(path, schema, config, inputs)
    if problems:
        raise PreflightError.of(problems)


def key_id_feature(output: OutputConfig) -> str:
    """The discrete feature holding a string key's int64 id: output.key_id_feature or its default."""
    return output.key_id_feature or default_key_id_feature(output.key_feature)


def _check_key_features(config: ExportConfig, string_keys: bool) -> None:
    """String keys: the key-id feature is no model output feature; integer keys: none is configured."""
    if not string_keys:
        if config.output.key_id_feature is not None:
            _LOG.warning("output.key_id_feature %r is not used: key column %r holds integers (the key is "
                         "exported as it is)", config.output.key_id_feature, config.input.key)
        return
    name = key_id_feature(config.output)
    taken = {o.feature for o in config.model.outputs.values()} | {config.output.key_feature}
    if name in taken:
        raise PreflightError(f"output.key_id_feature {name!r} (where string keys put their int64 id) is also "
                             "the key feature or a model output feature; set output.key_id_feature to another name")


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
                            rows_per_table=config.model.batch_size, string_key=inp.key_type == "string")


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


def recheck_output(plan: ExportPlan) -> ExportPlan:
    """The output directory checked again by a run that now holds its claim: what was found at
    preflight may have changed before the claim (another run finished there meanwhile). Returns
    the plan with the files this run may remove taken from this listing, marked ``claimed``."""
    path = plan.layout.path
    inventory = check_output_dir(path, plan.overwrite, own_run=plan.run_id)
    return dataclasses.replace(plan, claimed=True, previous_runs=inventory.runs,
                               stale_files=tuple(FileSystems.join(path, name) for name in inventory.ours))


_PATTERN_CHARACTERS = "[]*?"


def _check_literal_paths(config: ExportConfig) -> None:
    """Refuse an output or model path holding a character that Beam's ``FileSystems.match`` (and
    TensorFlow's file functions) read as a pattern: the job lists, deletes and loads these paths
    by pattern, and ``out[1]`` would match ``out1``, not itself."""
    for key, path in (("output.path", config.output.path), ("model.path", config.model.path)):
        found = sorted({c for c in path if c in _PATTERN_CHARACTERS})
        if found:
            raise PreflightError(f"{key} {path} holds {' '.join(repr(c) for c in found)}: Beam's file systems and "
                                 "TensorFlow read [ ] * ? in a path as a pattern, so the job could not list, "
                                 "replace or load exactly this path; use a path without them")


def _check_runner(config: ExportConfig) -> None:
    """The runner exists in this Beam installation (a misspelt runner would fail after the
    preflight's minutes of footer reading, at launch)."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(config.runner.name)
    except (ValueError, ImportError) as err:
        raise PreflightError(f"runner.name {config.runner.name!r}: {err}") from None


def _check_variables(model_path: str) -> None:
    """The SavedModel's ``variables/`` checkpoint is there and whole: the index lists every
    variable (shape and dtype) and the data files must hold at least their bytes. A missing or
    truncated checkpoint would otherwise fail on every worker, after launch."""
    prefix = FileSystems.join(model_path, "variables", "variables")
    index = prefix + ".index"
    if not FileSystems.exists(index):
        raise PreflightError(f"model.path {model_path}: {index} does not exist (the SavedModel's variables are "
                             "missing: copy the whole SavedModel directory)")
    data = FileSystems.match([prefix + ".data-*"])[0].metadata_list
    if not data:
        raise PreflightError(f"model.path {model_path}: no variables data file ({prefix}.data-*) beside {index}")
    if "://" in model_path:
        return  # the sizes below need TensorFlow to read the index: checked for local models only
    import numpy as np
    tf = import_tensorflow()

    try:
        listed = tf.train.list_variables(prefix)
    except Exception as err:
        raise PreflightError(f"model.path {model_path}: cannot read the variables index {index}: {err}") from None
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    need = 0
    for name, shape in listed:
        dtype = dtypes.get(name)
        if dtype is not None and dtype != tf.string:
            need += int(np.prod(shape, dtype=np.int64)) * dtype.size
    have = sum(m.size_in_bytes for m in data)
    if have < need:
        raise PreflightError(f"model.path {model_path}: the variables data files hold {have:,} bytes but the "
                             f"index lists {need:,} bytes of variables: the checkpoint is truncated")


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_output_writable(path: str) -> None:
    """A local output directory the run can write: ``_temporary`` and ``_rejected`` there are
    directories if anything, and the directory (or its nearest existing ancestor) is writable
    and not on a read-only mount."""
    if "://" in path:
        return  # object stores and HDFS: permissions are checked by the first write (the claim)
    if os.path.exists(path) and not os.path.isdir(path):
        return  # not a directory at all: transforms.ownership.check_output_dir says so
    for name in ("_temporary", "_rejected"):
        entry = os.path.join(path, name)
        if os.path.lexists(entry) and not os.path.isdir(entry):
            raise PreflightError(f"output.path {path}: {entry} is a file, where the job needs a directory "
                                 f"({name}/ holds its {'scratch files' if name == '_temporary' else 'rejected rows'}); "
                                 "move it away")
    base = _nearest_existing(path)
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        raise PreflightError(f"output.path {path}: {base} is on a read-only file system")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PreflightError(f"output.path {path}: {base} is not writable by this user")


def estimated_export_bytes(rows: int, outputs: Sequence[OutputSpec]) -> int:
    """A lower bound of an uncompressed export's bytes: per record the key (8 bytes) and every
    output value (open dims counted as 1), no framing or Thrift overhead."""
    import numpy as np

    per_row = 8
    for spec in outputs:
        values = 1
        for dim in spec.shape:
            values *= dim or 1
        per_row += values * (np.dtype(spec.dtype).itemsize if spec.dtype != "string" else 1)
    return rows * per_row


def _check_free_space(config: ExportConfig, outputs: Sequence[OutputSpec], rows: Optional[int]) -> None:
    """Refuse an export that cannot fit the local disk of the output directory (uncompressed
    tfrecord and block output, where ``estimated_export_bytes`` is a lower bound)."""
    path = config.output.path
    if "://" in path or rows is None or config.output.format == "parquet" or config.output.compression != "none":
        return
    need = estimated_export_bytes(rows, outputs)
    free = shutil.disk_usage(_nearest_existing(path)).free
    if free < need:
        raise PreflightError(f"output.path {path}: the export needs at least {need:,} bytes ({rows:,} records of at "
                             f"least {need // max(rows, 1):,} bytes) but its file system has {free:,} bytes free")


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
    _check_literal_paths(config)
    _check_runner(config)

    # Independent checks all run, so a run (and --dry-run) reports every problem at once: a wrong
    # signature does not hide an input column that is missing or an output directory in use.
    problems = PreflightProblems()
    resolved = resolve_model(config.model, problems)   # signature, copy to workers, inputs, outputs
    problems.run(_check_variables, config.model.path)
    scan = problems.run(_scan_input, config, resolved[0] if resolved else ())
    problems.run(_check_output_writable, config.output.path)
    inventory = problems.run(check_output_dir, config.output.path, overwrite)
    string_keys = False
    if scan is not None:
        string_keys = is_string_key_type(scan.read_schema.field(config.input.key).type)
        problems.run(_check_key_features, config, string_keys)
    problems.raise_any()
    specs = finish_specs(config.model, *resolved)
    inputs, outputs, dim = specs.inputs, specs.outputs, specs.embedding_dim

    _check_free_space(config, outputs, None if any(f.rows is None for f in scan.files) else sum(f.rows for f in scan.files))
    run_id = run_id or new_run_id()
    partition = PartitionSpec(config.partition.num_shards,
                              config.partition.column if config.partition.by == "column" else None)
    key_feature_id, key_string_feature_id = feature_id(config.output.key_feature), None
    if string_keys:
        key_feature_id, key_string_feature_id = feature_id(key_id_feature(config.output)), key_feature_id
    layout = OutputLayout(path=config.output.path, run_id=run_id, format=config.output.format,
                          compression=config.output.compression, num_shards=config.partition.num_shards,
                          key_feature_id=key_feature_id, records_per_block=config.output.records_per_block,
                          key_string_feature_id=key_string_feature_id)
    created = utc_now()
    files = scan.files
    rows = None if any(f.rows is None for f in files) else sum(f.rows for f in files)
    manifest_base = static_manifest(
        fmt=layout.format, compression=layout.compression, num_shards=partition.num_shards,
        key_feature=config.output.key_feature,
        key_feature_id=layout.key_string_feature_id if string_keys else layout.key_feature_id,
        key_id_feature=key_id_feature(config.output) if string_keys else None,
        key_id_feature_id=layout.key_feature_id if string_keys else None, outputs=outputs,
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
