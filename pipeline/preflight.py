"""Checks before launch: the model signature and the input files against the run config.

Everything a run would otherwise discover minutes later on a worker is checked here, in the
launcher, in seconds: that the config has no unfilled placeholders; that the SavedModel has the
signature with exactly the configured inputs (dtype, rank, static dims) and outputs (the first
a float32 [B, D] embedding); that the input pattern matches Parquet files whose footers hold the
key column (integer) and every configured column with a type the model input accepts, the same
in every file; and that the output directory holds no earlier export unless overwriting. Also:
that the output and model paths hold no pattern characters (``[ ] * ?``); that the runner exists;
that the model's variables checkpoint is there and not truncated; that a local output directory
is writable, not on a read-only mount, has no file where the job needs its ``_temporary`` or
``_rejected`` directory, and has room for at least the export's raw bytes; and that no other live
run holds the output directory's claim (``transforms.claim``). Paths are made absolute (workers may run in another directory). The result is an ``ExportPlan``:
everything the transforms need, resolved.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.config import ExportConfig
from transforms.arrow_columns import is_list_type
from transforms.claim import LEASE_SECONDS, describe_live, live_claims
from transforms.finalize import MANIFEST_NAME, TEMP_DIR
from transforms.isolate import ERROR_COLUMN
from transforms.ownership import RUN_ID_METADATA_KEY, Inventory, publish_siblings, take_inventory
from transforms.rejected_columns import rejected_layout, union_schema, unread_columns
from transforms.specs import (KIND_FIXED, KIND_PADDED, KIND_SCALAR, InputSpec, OutputLayout, OutputSpec,
                              PartitionSpec)
from transforms.validate import (REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_ROW_TAG, SOURCE_TAG,
                                 ValidationRules)
from twml.encode import DTYPE_TO_DATA_TYPE
from twml.feature_ids import feature_id

__all__ = ["PreflightError", "InputFile", "ExportPlan", "preflight", "absolute_path", "read_signature",
           "SignatureTensor", "find_placeholders"]

_LOG = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
_FOOTER_THREADS = 16


class PreflightError(ValueError):
    """The job cannot run as configured; the message names the file, column or key and the problem."""


@dataclass(frozen=True)
class InputFile:
    path: str
    rows: Optional[int]  # None: the container holds no row count (DataRecord files)
    row_groups: int
    bytes: int
    row_group_rows: Tuple[int, ...] = ()  # Parquet: rows of each row group, by the footer


@dataclass(frozen=True)
class SignatureTensor:
    """A signature input or output: numpy dtype name (None if not numeric) and shape (None = open)."""
    name: str
    dtype: Optional[str]
    shape: Optional[Tuple[Optional[int], ...]]


@dataclass(frozen=True)
class ExportPlan:
    """The job, resolved and checked: what ``pipeline.job.build_pipeline`` assembles.

    Args:
      config: the effective config (absolute paths).
      run_id: this run's id (names its scratch directory).
      files: the input files, sorted, with their footer row counts.
      skipped_files: (path, why) of unreadable files skipped by ``input.on_bad_file: skip``.
      read_schema: the columns read and their types.
      input_schema: every column of the Parquet input files (their union, in order of first
        appearance, each with the type of the first file that has it), for the rejected rows;
        None for DataRecord input.
      inputs / outputs: the signature inputs (with their columns) and exported outputs.
      partition: shard count and optional partition-id column.
      layout: the output directory, format and names.
      embedding_dim: D of the exported embedding.
      overwrite: replace an earlier export in the output directory.
      created_at: when the run was launched (UTC, ISO 8601).
      stale_files: files in the output directory that this job wrote earlier (an earlier export
        when overwriting, or what an unfinished run left): finalize removes these and no others.
      previous_runs: run ids of unfinished runs whose files are among them.
      claimed: the run holds the claim on the output directory (``pipeline.job.run_export``
        claims it and sets this); finalize then checks it still does before publishing.
    """
    config: ExportConfig
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
    created_at: str = field(default="")
    stale_files: Tuple[str, ...] = ()
    previous_runs: Tuple[str, ...] = ()
    input_schema: Optional[pa.Schema] = None
    claimed: bool = False  # the run holds the output directory's claim (transforms.claim): finalize checks it

    @property
    def total_rows(self) -> Optional[int]:
        """Rows in the input by the file metadata; None when it is not known before reading."""
        if any(f.rows is None for f in self.files):
            return None
        return sum(f.rows for f in self.files)

    @property
    def rules(self) -> ValidationRules:
        return ValidationRules(self.config.input.key, self.inputs, self.partition, self.read_schema)

    @property
    def unread_columns(self) -> pa.Schema:
        """Input columns the job does not read: restored for the rejected rows only."""
        return unread_columns(self.read_schema, self.input_schema)

    @property
    def rejected_schema(self) -> pa.Schema:
        """Every input column (in the input files' order), ``reason``, ``source_file``,
        ``source_row``, ``error`` (``transforms.rejected_columns.rejected_layout``); the schema
        metadata carries the run-id stamp that marks the rejected-rows files as this job's
        (``transforms.ownership``)."""
        return (rejected_layout(self.read_schema, self.input_schema)
                .with_metadata({RUN_ID_METADATA_KEY: self.run_id.encode("utf-8")}))


def absolute_path(path: str) -> str:
    """Local paths made absolute (workers may have another cwd); URLs (gs://, hdfs://) unchanged."""
    if "://" in path:
        return path.rstrip("/") if not path.endswith("://") else path
    return os.path.abspath(os.path.expanduser(path))


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
# The model signature, read from saved_model.pb (no variables loaded, no TF runtime started).

def read_signature(model_path: str, signature: str) -> Tuple[Dict[str, SignatureTensor], Dict[str, SignatureTensor]]:
    """(inputs, outputs) of ``signature`` in the SavedModel at ``model_path``."""
    from tensorflow.core.protobuf import saved_model_pb2
    import tensorflow as tf

    pb_path = FileSystems.join(model_path, "saved_model.pb")
    if not FileSystems.exists(pb_path):
        hint = ("; `embedding-export demo` creates the demo model and data"
                if model_path.rstrip("/").endswith("demo/model") else "")
        raise PreflightError(f"model.path {model_path} is not a SavedModel directory: {pb_path} does not exist{hint}")
    with FileSystems.open(pb_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        data = handle.read()
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(data)
    except Exception as err:
        raise PreflightError(f"{pb_path} is not a valid SavedModel: {err}") from None
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    available = sorted({name for g in graphs for name in g.signature_def if not name.startswith("__")})
    for graph in graphs:
        if signature in graph.signature_def:
            sig = graph.signature_def[signature]
            break
    else:
        raise PreflightError(f"model.signature {signature!r} is not in the SavedModel {model_path}; "
                             f"it has {available}")

    def describe(name, info):
        try:
            dtype = tf.dtypes.as_dtype(info.dtype)
            np_dtype = None if dtype == tf.string else dtype.as_numpy_dtype().dtype.name
        except TypeError:
            np_dtype = None
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        return SignatureTensor(name, np_dtype, shape)

    return ({k: describe(k, v) for k, v in sig.inputs.items()},
            {k: describe(k, v) for k, v in sig.outputs.items()})


def _fmt_shape(shape) -> str:
    return "unknown rank" if shape is None else "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def _resolve_inputs(config: ExportConfig, sig_inputs: Dict[str, SignatureTensor]) -> Tuple[InputSpec, ...]:
    model = config.model
    where = f"model {model.path} signature {model.signature!r}"
    unknown = sorted(set(model.inputs) - set(sig_inputs))
    unfed = sorted(set(sig_inputs) - set(model.inputs))
    if unknown or unfed:
        raise PreflightError(
            f"model.inputs do not match the inputs of {where}: "
            + (f"not in the signature: {unknown}; " if unknown else "")
            + (f"not configured: {unfed}; " if unfed else "")
            + f"the signature takes {sorted(sig_inputs)}")
    specs = []
    for name, cfg in model.inputs.items():
        tensor = sig_inputs[name]
        key = f"model.inputs.{name}"
        if tensor.dtype is None or tensor.dtype not in ("float32", "float64", "int32", "int64", "bool"):
            raise PreflightError(f"{key}: signature input has dtype {tensor.dtype or 'string'}; the job feeds "
                                 "float32/float64/int32/int64/bool inputs from Parquet columns")
        shape = tensor.shape
        if shape is None or len(shape) not in (1, 2):
            raise PreflightError(f"{key}: signature input has shape {_fmt_shape(shape)}; the job feeds "
                                 "[batch] (a scalar column) or [batch, n] (a list column)")
        if shape[0] is not None:
            raise PreflightError(f"{key}: signature input has a fixed batch dimension {shape[0]}; "
                                 "the job needs [None, ...]")
        if len(shape) == 1:
            if cfg.length is not None:
                raise PreflightError(f"{key}.length is set but the signature input is a scalar per row "
                                     f"(shape {_fmt_shape(shape)})")
            specs.append(InputSpec(name, cfg.column, tensor.dtype, KIND_SCALAR))
        elif cfg.length is not None:
            if shape[1] is not None and shape[1] != cfg.length:
                raise PreflightError(f"{key}.length is {cfg.length} but the signature input has shape "
                                     f"{_fmt_shape(shape)}")
            specs.append(InputSpec(name, cfg.column, tensor.dtype, KIND_PADDED, cfg.length, cfg.pad))
        elif shape[1] is None:
            raise PreflightError(f"{key}: the signature input has shape {_fmt_shape(shape)} (open length); "
                                 f"set {key}.length to pad/truncate the lists to a fixed length")
        else:
            specs.append(InputSpec(name, cfg.column, tensor.dtype, KIND_FIXED, shape[1]))
    return tuple(specs)


def _resolve_outputs(config: ExportConfig, sig_outputs: Dict[str, SignatureTensor]) -> Tuple[OutputSpec, ...]:
    model = config.model
    missing = [name for name in model.outputs if name not in sig_outputs]
    if missing:
        raise PreflightError(f"model.outputs {missing} are not outputs of model {model.path} signature "
                             f"{model.signature!r}; it has {sorted(sig_outputs)}")
    specs = []
    for name in model.ordered_outputs:
        cfg = model.outputs[name]
        tensor = sig_outputs[name]
        key = f"model.outputs.{name}"
        if tensor.shape is None or len(tensor.shape) < 1:
            raise PreflightError(f"{key}: output shape {_fmt_shape(tensor.shape)} has no batch dimension")
        if name == model.embedding_output and (tensor.dtype != "float32" or len(tensor.shape) != 2):
            how = "model.embedding names it" if model.embedding else "the first output written"
            raise PreflightError(f"{key} is the embedding ({how}) and must be float32 [batch, D]; "
                                 f"the signature gives {tensor.dtype or 'string'} {_fmt_shape(tensor.shape)}")
        if tensor.dtype is not None and tensor.dtype not in {d.name for d in DTYPE_TO_DATA_TYPE}:
            raise PreflightError(f"{key}: dtype {tensor.dtype} cannot be written as a DataRecord tensor")
        specs.append(OutputSpec(name, cfg.feature, feature_id(cfg.feature), tensor.dtype or "string",
                                tuple(tensor.shape[1:])))
    return tuple(specs)


def _probe_embedding_dim(config: ExportConfig, inputs: Sequence[InputSpec]) -> int:
    """Run the model on one neutral row to learn D when the signature leaves it open."""
    import numpy as np
    import tensorflow as tf

    fn = tf.saved_model.load(config.model.path).signatures[config.model.signature]
    feeds = {}
    for spec in inputs:
        shape = (1,) if spec.kind == KIND_SCALAR else (1, spec.length)
        fill = spec.pad if spec.kind == KIND_PADDED else 0
        feeds[spec.name] = tf.constant(np.full(shape, fill, dtype=spec.np_dtype))
    out = fn(**feeds)[config.model.embedding_output]
    return int(out.shape[1])


# ------------------------------------------------------------------------------------------------
# The input files: their footers, read in parallel.

def _read_footer(path: str):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        meta = pq.ParquetFile(handle).metadata
        group_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        return meta.num_rows, group_rows, meta.schema.to_arrow_schema()


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
    for reserved in (REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN, ERROR_COLUMN, SOURCE_TAG, SOURCE_ROW_TAG):
        if reserved in _read_columns(config, inputs):
            raise PreflightError(f"input column {reserved!r} clashes with a column of the rejected-rows output")


def _read_columns(config: ExportConfig, inputs: Sequence[InputSpec]) -> List[str]:
    names = [config.input.key]
    if config.partition.column:
        names.append(config.partition.column)
    for spec in inputs:
        names.append(spec.column)
    return list(dict.fromkeys(names))


def match_input_files(pattern: str) -> List[Tuple[str, int]]:
    """(path, size) of the input files ``pattern`` matches, sorted; hidden and ``_`` files left out."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:
        raise PreflightError(f"input.path {pattern}: cannot list files: {err}") from None
    paths = sorted({m.path: m.size_in_bytes for m in matched}.items())
    paths = [(p, size) for p, size in paths if not os.path.basename(p).startswith((".", "_"))]
    if not paths:
        raise PreflightError(f"input.path {pattern} matches no files")
    return paths


def _scan_inputs(config: ExportConfig, inputs: Sequence[InputSpec]):
    pattern = config.input.path
    paths = match_input_files(pattern)

    def footer(item):
        path, _ = item
        try:
            return _read_footer(path), None
        except Exception as err:  # unreadable footer: report the file, never a bare pyarrow error
            return None, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, len(paths))) as pool:
        footers = list(pool.map(footer, paths))
    files, skipped = [], []
    first_schema, first_path = None, None
    columns = _read_columns(config, inputs)
    distinct: List[Tuple[str, pa.Schema]] = []  # (file, schema) where the schema changes
    for (path, size), (result, error) in zip(paths, footers):
        if error is not None:
            if config.input.on_bad_file == "skip":
                skipped.append((path, error))
                continue
            raise PreflightError(f"{path}: not a readable Parquet file ({error}); set input.on_bad_file: skip "
                                 "to export the other files")
        rows, group_rows, schema = result
        _check_schema(path, schema, config, inputs)
        read = pa.schema([schema.field(c).with_nullable(True) for c in columns])
        if first_schema is None:
            first_schema, first_path = read, path
        elif not read.equals(first_schema, check_metadata=False):
            diffs = [f"{c}: {first_schema.field(c).type} vs {read.field(c).type}"
                     for c in columns if first_schema.field(c).type != read.field(c).type]
            raise PreflightError(f"{path}: column types differ from {first_path}: {'; '.join(diffs)}")
        files.append(InputFile(path, rows, len(group_rows), size, group_rows))
        if not distinct or not schema.equals(distinct[-1][1], check_metadata=False):
            distinct.append((path, schema))
    if not files:
        raise PreflightError(f"input.path {pattern}: no readable Parquet files (skipped: {skipped})")
    return tuple(files), tuple(skipped), first_schema, _input_schema(distinct, first_schema)


def _input_schema(schemas: Sequence[Tuple[str, pa.Schema]], read_schema: pa.Schema) -> pa.Schema:
    """The union of the input files' columns (``union_schema``), warning about what the rejected
    rows cannot keep as is: unread columns with other types in some files (cast to the first
    type, null where a value does not cast) and unread columns named like the added columns."""
    union, conflicts = union_schema(schemas)
    unread = unread_columns(read_schema, union).names
    for name, where in conflicts.items():
        if name in unread:
            path, other = where[0]
            _LOG.warning("input column %r is %s in the first file that has it but %s in %s%s: the rejected "
                         "rows of those files get it cast to %s (null, with a note in error, where it does not "
                         "cast)", name, union.field(name).type, other, path,
                         f" and {len(where) - 1} more files" if len(where) > 1 else "", union.field(name).type)
    taken = [name for name in union.names if name not in read_schema.names and name not in unread]
    if taken:
        _LOG.warning("input columns %s are not kept in the rejected rows: the rejected-rows output uses "
                     "these names", taken)
    return union


def _shown(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _note_killed_publish(path: str) -> None:
    """Name the staging and moved-aside directories a killed directory publish left beside a
    local output path (the run's finalize removes the job's files in them; nothing else), and a
    symlinked output left dangling by a kill between the publish's two renames (``run_export``
    makes its target again before launching; preflight, which ``--dry-run`` runs too, writes
    nothing)."""
    if "://" in path:
        return
    siblings = publish_siblings(os.path.realpath(path))
    if siblings:
        _LOG.warning("beside output.path %s: %s, left by killed run(s) %s; once this run has published, it "
                     "removes the files in them that are this job's own", path,
                     ", ".join(os.path.basename(sibling) for sibling, _, _ in siblings),
                     ", ".join(sorted({run for _, run, _ in siblings})))
    if os.path.islink(path) and not os.path.exists(path):
        _LOG.warning("output.path %s is a symlink to %s, which does not exist (a killed run had moved it "
                     "aside); the run makes it again", path, os.path.realpath(path))


def _check_output_dir(path: str, overwrite: bool, own_run: Optional[str] = None) -> Inventory:
    """What the output directory holds, and whether this run may write there.

    Allowed: an empty or missing directory; one holding only what an unfinished run of this job
    left (no ``_SUCCESS``; scratch, journal-listed or stamped files: ``transforms.ownership``),
    which the run removes; and with ``overwrite``, an earlier export of this job, whose files are
    removed while foreign files stay, unless a foreign file has a name the export uses or a
    loader reads (then the run is refused: the job neither deletes nor mixes with it).
    """
    if own_run is None:
        _note_killed_publish(path)
    if "://" not in path and os.path.isfile(path):
        raise PreflightError(f"output.path {path} is a file; it must be a directory")
    try:
        inventory = take_inventory(path, skip_run=own_run)
    except Exception as err:
        raise PreflightError(f"output.path {path}: cannot list it: {err}") from None
    live = live_claims(path, except_run=own_run) if inventory.runs else []
    if live:
        raise PreflightError(f"output.path {path} is claimed by {describe_live(live)}: another export is "
                             "writing there; wait for it to finish or stop it (the claim of a killed run is "
                             "taken over: on this host at once, from another host "
                             f"{LEASE_SECONDS:g} s after its last heartbeat)")
    if inventory.empty:
        return inventory
    if inventory.debris_only:
        _LOG.warning("output.path %s holds only what unfinished run(s) %s of this job left (%d files); "
                     "this run removes them", path, ", ".join(inventory.runs) or "?", len(inventory.ours))
        return inventory
    if not overwrite:
        names = list(inventory.foreign) + list(inventory.ours)  # the foreign ones are why: first
        what = "the finished export there" if inventory.finished else "an earlier export"
        raise PreflightError(
            f"output.path {path} already holds {len(names)} file(s) ({_shown(names)}); "
            f"pass --overwrite (or set output.overwrite: true) to replace {what}: only the files this "
            f"job wrote (those its {MANIFEST_NAME} or publish journal names, and its {TEMP_DIR}/ "
            f"scratch files) are removed, others are kept")
    clashing = inventory.foreign_outputs
    if clashing:
        raise PreflightError(
            f"output.path {path} holds {len(clashing)} file(s) that no manifest or journal of this job names "
            f"but that look like export files ({_shown(clashing)}); the job does not delete or mix with "
            f"files it did not write: move them away, or choose another output.path")
    return inventory


def _warn_small_row_groups(files: Sequence[InputFile], batch_size: int) -> None:
    """Batches never span row groups (so every runner feeds the model the same batches): say so
    when the row groups are much smaller than the batch size, which makes model calls small."""
    groups = sum(f.row_groups for f in files)
    rows = sum(f.rows for f in files)
    if groups and rows / groups < batch_size / 2:
        _LOG.warning("input row groups hold %.0f rows on average, model.batch_size is %d: batches never "
                     "span row groups, so model calls will be small; write the input with row groups of "
                     "at least %d rows for full batches", rows / groups, batch_size, batch_size)


def recheck_output(plan: ExportPlan) -> ExportPlan:
    """The output directory checked again by a run that now holds its claim: what was found at
    preflight may have changed before the claim (another run finished there meanwhile). Returns
    the plan with the files this run may remove taken from this listing, marked ``claimed``."""
    path = plan.config.output.path
    inventory = _check_output_dir(path, plan.overwrite, own_run=plan.run_id)
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
    import tensorflow as tf

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
        return  # not a directory at all: _check_output_dir says so
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


def new_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


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

    sig_inputs, sig_outputs = read_signature(config.model.path, config.model.signature)
    _check_variables(config.model.path)
    inputs = _resolve_inputs(config, sig_inputs)
    outputs = _resolve_outputs(config, sig_outputs)
    dim = outputs[0].shape[0]
    if dim is None:
        dim = _probe_embedding_dim(config, inputs)
        first = outputs[0]
        outputs = (OutputSpec(first.name, first.feature, first.feature_id, first.dtype, (dim,)),) + outputs[1:]

    if config.input.format == "datarecord":
        from pipeline.datarecord_input import scan_datarecord_inputs  # it imports this module
        files, skipped, read_schema = scan_datarecord_inputs(config, inputs)
        input_schema = None
    else:
        files, skipped, read_schema, input_schema = _scan_inputs(config, inputs)
        _warn_small_row_groups(files, config.model.batch_size)
    _check_output_writable(config.output.path)
    inventory = _check_output_dir(config.output.path, overwrite)
    _check_free_space(config, outputs, sum(f.rows for f in files) if all(f.rows is not None for f in files) else None)
    run_id = run_id or new_run_id()
    partition = PartitionSpec(config.partition.num_shards,
                              config.partition.column if config.partition.by == "column" else None)
    layout = OutputLayout(path=config.output.path, run_id=run_id, format=config.output.format,
                          compression=config.output.compression, num_shards=config.partition.num_shards,
                          key_feature_id=feature_id(config.output.key_feature),
                          records_per_block=config.output.records_per_block)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return ExportPlan(config=config, run_id=run_id, files=files, skipped_files=skipped,
                      read_schema=read_schema, inputs=inputs, outputs=outputs, partition=partition,
                      layout=layout, embedding_dim=int(dim), overwrite=overwrite, created_at=created,
                      stale_files=tuple(FileSystems.join(config.output.path, name) for name in inventory.ours),
                      previous_runs=inventory.runs, input_schema=input_schema)
