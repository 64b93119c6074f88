"""Run configuration: the YAML schema of ``run_configs/*.yaml``, validated before anything starts.

Unknown keys are errors (a misspelt knob silently falling back to a default is how benchmarks end
up measuring the wrong thing), and every error names the key path and what is wrong with it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ConfigError", "ExportConfig", "InputConfig", "DataRecordColumn", "ModelConfig", "ModelInput", "ModelOutput",
           "PartitionConfig", "OutputConfig", "RunnerConfig", "load_config", "parse_config",
           "apply_overrides"]


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the key and the problem."""


class _Strict(BaseModel):
    # strict: a value of another type is an error, never coerced (YAML's ``true`` is not 1 shard,
    # nor a reject fraction of 1.0; ``"16"`` is not 16). An int is still accepted for a float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataRecordColumn(_Strict):
    """One column built from DataRecord features (``input.features.<column>``): exactly one of
    ``continuous`` (doubles), ``discrete`` (int64s) or ``sparse_binary`` (string sets -> hashed
    int64 ids, see transforms/inputs/datarecord.py). One feature name gives a scalar column, a list
    of names a list column in that order. ``default`` fills a missing continuous/discrete feature
    (unset: the row is rejected)."""
    continuous: Optional[Union[str, List[str]]] = None
    discrete: Optional[Union[str, List[str]]] = None
    sparse_binary: Optional[Union[str, List[str]]] = None
    default: Optional[Union[int, float]] = None

    @property
    def kind(self) -> str:
        return next(k for k in ("continuous", "discrete", "sparse_binary") if getattr(self, k) is not None)

    @property
    def names(self) -> List[str]:
        value = getattr(self, self.kind)
        return [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _one_kind(self) -> "DataRecordColumn":
        kinds = [k for k in ("continuous", "discrete", "sparse_binary") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("set exactly one of continuous, discrete, sparse_binary"
                             + (f" (got {', '.join(kinds)})" if kinds else ""))
        names = self.names
        if not names or any(not n for n in names):
            raise ValueError(f"{self.kind}: feature names must be non-empty (got {names})")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind}: a feature is listed twice: {names}")
        if self.default is not None:
            if self.kind == "sparse_binary":
                raise ValueError("default does not apply to sparse_binary (a missing feature is an empty list)")
            if self.kind == "discrete" and not isinstance(self.default, int):
                raise ValueError(f"default of discrete features must be an integer, got {self.default!r}")
        return self


class InputConfig(_Strict):
    format: Literal["parquet", "datarecord"] = "parquet"
    path: str = Field(..., min_length=1, description="file pattern, local, gs:// or hdfs://")
    key: str = Field("user_id", min_length=1,
                     description="user key: an integer or string column (parquet), or a discrete feature "
                                 "name (datarecord); string keys: docs/FORMAT.md section 5")
    key_type: Optional[Literal["int64", "string"]] = Field(
        None, description="datarecord only: the key is a discrete feature (int64, the default) or a string "
                          "feature; parquet reads the key type from the files")
    on_bad_file: Literal["fail", "skip"] = "fail"
    container: Optional[Literal["tfrecord", "block"]] = Field(None, description="datarecord only: the file container")
    features: Optional[Dict[str, DataRecordColumn]] = Field(None, description="datarecord only: column -> features")

    @model_validator(mode="after")
    def _datarecord_keys(self) -> "InputConfig":
        if self.format == "parquet":
            extra = [k for k in ("container", "features", "key_type") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{' and '.join(extra)} apply to format: datarecord only")
            return self
        if self.container is None:
            raise ValueError("format datarecord needs container: tfrecord or block")
        if not self.features:
            raise ValueError("format datarecord needs features: the columns to build from the records")
        for reserved in (self.key, "record_index"):
            if reserved in self.features:
                raise ValueError(f"features: column name {reserved!r} is taken (the key column or record_index)")
        return self


class ModelInput(_Strict):
    """Where one signature input comes from."""
    column: str = Field(..., min_length=1)
    length: Optional[int] = Field(None, gt=0, description="for variable-length id lists: pad/truncate to this")
    pad: int = 0


class ModelOutput(_Strict):
    """One signature output and the feature it is exported under."""
    feature: str = Field(..., min_length=1)


class ModelConfig(_Strict):
    path: str = Field(..., min_length=1)
    signature: str = "serving_default"
    batch_size: int = Field(4096, gt=0, le=1_000_000)
    inputs: Dict[str, ModelInput] = Field(..., min_length=1)
    outputs: Dict[str, ModelOutput] = Field(..., min_length=1,
                                            description="the signature outputs to export, in this order "
                                                        "after the embedding")
    embedding: Optional[str] = Field(None, min_length=1,
                                     description="which of model.outputs is the embedding (float32 [B, D]); "
                                                 "unset: the first one written")
    intra_op_threads: int = Field(0, ge=0, description="TF intra-op threads per model call; the embed step then runs cores // n calls at once (1 is fastest on small machines); 0 = TF default, one call at a time")
    inter_op_threads: int = Field(0, ge=0, description="TF inter-op threads per worker process; 0 = TF default")

    @model_validator(mode="after")
    def _embedding_is_an_output(self) -> "ModelConfig":
        if self.embedding is not None and self.embedding not in self.outputs:
            raise ValueError(f"embedding {self.embedding!r} is not one of model.outputs {list(self.outputs)}")
        return self

    @property
    def embedding_output(self) -> str:
        """The signature output exported as the embedding: ``embedding``, else the first written."""
        return self.embedding if self.embedding is not None else next(iter(self.outputs))

    @property
    def ordered_outputs(self) -> List[str]:
        """The exported outputs in record order: the embedding, then the others as written."""
        first = self.embedding_output
        return [first] + [name for name in self.outputs if name != first]


class PartitionConfig(_Strict):
    num_shards: int = Field(16, gt=0, le=100_000)
    by: Literal["hash", "column"] = "hash"
    column: Optional[str] = None

    @model_validator(mode="after")
    def _column_needed(self) -> "PartitionConfig":
        if self.by == "column" and not self.column:
            raise ValueError("partition.by is 'column' but partition.column is not set")
        if self.by == "hash" and self.column:
            raise ValueError("partition.column is set but partition.by is 'hash'; set by: column")
        return self


class OutputConfig(_Strict):
    path: str = Field(..., min_length=1)
    format: Literal["tfrecord", "block", "parquet"] = "tfrecord"
    compression: Literal["none", "gzip"] = "none"
    key_feature: str = Field("meta.user_id", min_length=1)
    key_id_feature: Optional[str] = Field(None, min_length=1,
                                          description="string keys: the discrete feature holding the key's int64 "
                                                      "id; unset: '<key_feature>.id'")
    records_per_block: int = Field(100, gt=0)
    overwrite: bool = False
    max_reject_fraction: float = Field(0.01, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _parquet_uncompressed(self) -> "OutputConfig":
        if self.format == "parquet" and self.compression != "none":
            raise ValueError("output.compression applies to tfrecord and block; parquet compresses by codec")
        return self


class RunnerConfig(_Strict):
    name: str = "DirectRunner"
    options: List[str] = Field(default_factory=list)

    @field_validator("options")
    @classmethod
    def _flags(cls, options: List[str]) -> List[str]:
        for opt in options:
            if not opt.startswith("--"):
                raise ValueError(f"runner option {opt!r} must look like --name=value")
        return options


class ExportConfig(_Strict):
    input: InputConfig
    model: ModelConfig
    partition: PartitionConfig = PartitionConfig()
    output: OutputConfig
    runner: RunnerConfig = RunnerConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExportConfig":
        feats = [o.feature for o in self.model.outputs.values()]
        if len(set(feats)) != len(feats):
            raise ValueError(f"model.outputs: two outputs are exported under the same feature: {feats}")
        if self.output.key_feature in feats:
            raise ValueError(f"output.key_feature {self.output.key_feature!r} is also a model output feature")
        key_id = self.output.key_id_feature
        if key_id is not None and (key_id in feats or key_id == self.output.key_feature):
            raise ValueError(f"output.key_id_feature {key_id!r} is also the key feature or a model output feature")
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid run config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see run_configs/local.yaml for the schema)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) to a raw config dict.

    The written order of every mapping is kept: ``model.outputs`` is ordered (the record layout
    follows it), so no round trip through ``yaml.safe_dump`` (which sorts keys).
    """
    out = copy.deepcopy(raw) if raw else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, value = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return out


def parse_config(raw: Any, source: str = "<dict>") -> ExportConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid run config {source}: the top level must be a mapping")
    try:
        return ExportConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str, overrides: Sequence[str] = ()) -> ExportConfig:
    """Read, override and validate a YAML run config."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read run config {path}: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"run config {path} is not valid YAML: {err}") from None
    return parse_config(apply_overrides(raw, overrides), source=str(path))
