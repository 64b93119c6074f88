"""The model's side of the specs: the SavedModel signature read (no variables loaded, no TF
runtime started) and checked against the run config's ``model`` section.

``model_specs(model)`` turns that section (the ``model:`` mapping of a run config, or
``pipeline.config.ExportConfig.model``) into a ``ModelSpecs``: the ``ModelSpec``, the
``InputSpec``s and ``OutputSpec``s the transforms need, and the embedding dimension. It reads
the model only: no input file and no output directory is touched, so a Beam user can build the
specs of their own pipeline from a config and a model alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import PreflightError, PreflightProblems
from transforms.model_files import local_model_dir, model_files, tensorflow_opens
from transforms.specs import KIND_FIXED, KIND_PADDED, KIND_SCALAR, InputSpec, ModelSpec, OutputSpec
from transforms.tf_runtime import import_tensorflow
from twml.encode import DTYPE_TO_DATA_TYPE
from twml.feature_ids import feature_id

__all__ = ["SignatureTensor", "ModelSpecs", "model_specs", "read_signature", "resolve_inputs", "resolve_outputs",
           "probe_embedding_dim", "check_model_copyable", "resolve_model", "finish_specs"]


@dataclass(frozen=True)
class SignatureTensor:
    """A signature input or output: numpy dtype name (None if not numeric) and shape (None = open)."""
    name: str
    dtype: Optional[str]
    shape: Optional[Tuple[Optional[int], ...]]


def read_signature(model_path: str, signature: str) -> Tuple[Dict[str, SignatureTensor], Dict[str, SignatureTensor]]:
    """(inputs, outputs) of ``signature`` in the SavedModel at ``model_path``."""
    tf = import_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

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


def check_model_copyable(model_path: str) -> None:
    """For a model on a scheme TensorFlow cannot open (hdfs://, s3://), check that the workers can
    copy it to a local directory through Beam's FileSystems (``transforms.model_files``)."""
    if tensorflow_opens(model_path):
        return
    try:
        names = {name for name, _ in model_files(model_path)}
    except Exception as err:
        raise PreflightError(f"model.path {model_path}: TensorFlow cannot open this scheme, and listing the "
                             f"SavedModel through Beam's file system failed: {err}") from err
    if "variables/variables.index" not in names:
        raise PreflightError(f"model.path {model_path}: no variables/variables.index under it; workers copy "
                             f"the whole SavedModel directory (TensorFlow cannot open this scheme)")


def _fmt_shape(shape) -> str:
    return "unknown rank" if shape is None else "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def resolve_inputs(model, sig_inputs: Dict[str, SignatureTensor]) -> Tuple[InputSpec, ...]:
    """The ``InputSpec`` of every configured model input; raises with every input that does not fit."""
    where = f"model {model.path} signature {model.signature!r}"
    unknown = sorted(set(model.inputs) - set(sig_inputs))
    unfed = sorted(set(sig_inputs) - set(model.inputs))
    if unknown or unfed:
        raise PreflightError(
            f"model.inputs do not match the inputs of {where}: "
            + (f"not in the signature: {unknown}; " if unknown else "")
            + (f"not configured: {unfed}; " if unfed else "")
            + f"the signature takes {sorted(sig_inputs)}")
    problems = PreflightProblems()
    specs = [problems.run(_resolve_input, name, cfg, sig_inputs[name]) for name, cfg in model.inputs.items()]
    problems.raise_any()   # every input that does not fit, not only the first
    return tuple(specs)


def _resolve_input(name: str, cfg: Any, tensor: SignatureTensor) -> InputSpec:
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
        return InputSpec(name, cfg.column, tensor.dtype, KIND_SCALAR)
    if cfg.length is not None:
        if shape[1] is not None and shape[1] != cfg.length:
            raise PreflightError(f"{key}.length is {cfg.length} but the signature input has shape "
                                 f"{_fmt_shape(shape)}")
        return InputSpec(name, cfg.column, tensor.dtype, KIND_PADDED, cfg.length, cfg.pad)
    if shape[1] is None:
        raise PreflightError(f"{key}: the signature input has shape {_fmt_shape(shape)} (open length); "
                             f"set {key}.length to pad/truncate the lists to a fixed length")
    return InputSpec(name, cfg.column, tensor.dtype, KIND_FIXED, shape[1])


def resolve_outputs(model, sig_outputs: Dict[str, SignatureTensor]) -> Tuple[OutputSpec, ...]:
    """The ``OutputSpec`` of every exported output, the embedding first; raises with every output
    that does not fit."""
    missing = [name for name in model.outputs if name not in sig_outputs]
    if missing:
        raise PreflightError(f"model.outputs {missing} are not outputs of model {model.path} signature "
                             f"{model.signature!r}; it has {sorted(sig_outputs)}")
    problems = PreflightProblems()
    specs = [problems.run(_resolve_output, model, name, sig_outputs[name]) for name in model.ordered_outputs]
    problems.raise_any()   # every output that does not fit, not only the first
    return tuple(specs)


def _resolve_output(model: Any, name: str, tensor: SignatureTensor) -> OutputSpec:
    cfg = model.outputs[name]
    key = f"model.outputs.{name}"
    if tensor.shape is None or len(tensor.shape) < 1:
        raise PreflightError(f"{key}: output shape {_fmt_shape(tensor.shape)} has no batch dimension")
    if name == model.embedding_output and (tensor.dtype != "float32" or len(tensor.shape) != 2):
        how = "model.embedding names it" if model.embedding else "the first output written"
        raise PreflightError(f"{key} is the embedding ({how}) and must be float32 [batch, D]; "
                             f"the signature gives {tensor.dtype or 'string'} {_fmt_shape(tensor.shape)}")
    if tensor.dtype is not None and tensor.dtype not in {d.name for d in DTYPE_TO_DATA_TYPE}:
        raise PreflightError(f"{key}: dtype {tensor.dtype} cannot be written as a DataRecord tensor")
    return OutputSpec(name, cfg.feature, feature_id(cfg.feature), tensor.dtype or "string", tuple(tensor.shape[1:]))


def probe_embedding_dim(model, inputs: Sequence[InputSpec]) -> int:
    """Run the model on one neutral row to learn D when the signature leaves it open."""
    tf = import_tensorflow()

    fn = tf.saved_model.load(local_model_dir(model.path)).signatures[model.signature]
    feeds = {}
    for spec in inputs:
        shape = (1,) if spec.kind == KIND_SCALAR else (1, spec.length)
        fill = spec.pad if spec.kind == KIND_PADDED else 0
        feeds[spec.name] = tf.constant(np.full(shape, fill, dtype=spec.np_dtype))
    out = fn(**feeds)[model.embedding_output]
    return int(out.shape[1])


@dataclass(frozen=True)
class ModelSpecs:
    """What the transforms need to know about the model, resolved against its signature.

    Args:
      model: the SavedModel, signature, batch size and thread pools.
      inputs: the signature inputs and the columns that feed them.
      outputs: the exported outputs, the embedding first, with their feature ids and shapes.
      embedding_dim: D of the embedding.
    """
    model: ModelSpec
    inputs: Tuple[InputSpec, ...]
    outputs: Tuple[OutputSpec, ...]
    embedding_dim: int


def _section(model: Any) -> Any:
    """The ``model`` config section with attribute access, from a mapping (a YAML ``model:``
    section) or an object that already has it (``ExportConfig.model``)."""
    if not isinstance(model, Mapping):
        return model
    outputs = {name: SimpleNamespace(feature=out["feature"]) for name, out in model["outputs"].items()}
    embedding = model.get("embedding")
    first = embedding if embedding is not None else next(iter(outputs))
    return SimpleNamespace(
        path=model["path"], signature=model.get("signature", "serving_default"),
        batch_size=model.get("batch_size", 4096), embedding=embedding, embedding_output=first,
        ordered_outputs=[first] + [name for name in outputs if name != first],
        inputs={name: SimpleNamespace(column=spec["column"], length=spec.get("length"), pad=spec.get("pad", 0))
                for name, spec in model["inputs"].items()},
        outputs=outputs, intra_op_threads=model.get("intra_op_threads", 0),
        inter_op_threads=model.get("inter_op_threads", 0))


def resolve_model(model: Any, problems: PreflightProblems) -> Optional[Tuple[Tuple[InputSpec, ...],
                                                                              Tuple[OutputSpec, ...]]]:
    """(inputs, outputs) of the ``model`` section checked against the signature, or None after
    noting every problem in ``problems`` (the signature, the copy to workers, each input and output:
    independent checks all run, so one report lists them all)."""
    model = _section(model)
    signature = problems.run(read_signature, model.path, model.signature)
    problems.run(check_model_copyable, model.path)
    if signature is None:
        return None
    sig_inputs, sig_outputs = signature
    inputs = problems.run(resolve_inputs, model, sig_inputs)
    outputs = problems.run(resolve_outputs, model, sig_outputs)
    if inputs is None or outputs is None:
        return None
    return inputs, outputs


def finish_specs(model: Any, inputs: Tuple[InputSpec, ...], outputs: Tuple[OutputSpec, ...]) -> ModelSpecs:
    """The ``ModelSpecs`` of resolved inputs and outputs; D probed when the signature leaves it open."""
    model = _section(model)
    dim = outputs[0].shape[0]
    if dim is None:
        dim = probe_embedding_dim(model, inputs)
        first = outputs[0]
        outputs = (OutputSpec(first.name, first.feature, first.feature_id, first.dtype, (dim,)),) + outputs[1:]
    spec = ModelSpec(model.path, model.signature, model.batch_size, model.intra_op_threads, model.inter_op_threads)
    return ModelSpecs(spec, inputs, outputs, int(dim))


def model_specs(model: Any) -> ModelSpecs:
    """The specs of the run config's ``model`` section, checked against the model's signature.

    Args:
      model: the ``model:`` section, as a mapping (keys as in ``run_configs/*.yaml``) or as
        ``ExportConfig.model``.
    Raises:
      PreflightError: naming the config key and what does not fit the signature (every problem found).
    """
    problems = PreflightProblems()
    resolved = resolve_model(model, problems)
    problems.raise_any()
    return finish_specs(model, *resolved)
