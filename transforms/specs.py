"""What the transforms need to know about the job, resolved once before launch.

The run config names columns and signature inputs; the launcher checks them against the model
signature and the input files (``pipeline.plan``) and hands the transforms these small,
picklable, fully resolved descriptions, so no DoFn has to look at the config or the model again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["InputSpec", "OutputSpec", "ModelSpec", "PartitionSpec", "OutputLayout", "KIND_SCALAR", "KIND_FIXED",
           "KIND_PADDED"]

# How a Parquet column becomes one signature input of shape [B] or [B, length].
KIND_SCALAR = "scalar"   # primitive column -> [B]
KIND_FIXED = "fixed"     # list column whose every row must hold exactly ``length`` values -> [B, length]
KIND_PADDED = "padded"   # variable-length list column, right-padded with ``pad`` / truncated to ``length``


@dataclass(frozen=True)
class InputSpec:
    """One signature input and the column it is fed from.

    Args:
      name: the signature's input name (the keyword the signature is called with).
      column: the Parquet column it is read from.
      dtype: numpy dtype name the signature wants ("float32", "int64", ...).
      kind: KIND_SCALAR, KIND_FIXED or KIND_PADDED.
      length: values per row for KIND_FIXED / KIND_PADDED (None for KIND_SCALAR).
      pad: the pad value of KIND_PADDED inputs.
    """
    name: str
    column: str
    dtype: str
    kind: str
    length: Optional[int] = None
    pad: int = 0

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class OutputSpec:
    """One signature output and the DataRecord feature it is exported under.

    Args:
      name: the signature's output name.
      feature: the feature name; ``feature_id`` its int64 id (docs/FORMAT.md section 4).
      dtype: numpy dtype name of the output.
      shape: the per-row shape (dims after the batch dim); None for a dim the signature leaves open.
    """
    name: str
    feature: str
    feature_id: int
    dtype: str
    shape: Tuple[Optional[int], ...]


@dataclass(frozen=True)
class ModelSpec:
    """The SavedModel the job runs, and how.

    Args:
      path: the SavedModel directory (local, gs://, ...: whatever TF's file system reads).
      signature: the signature to call.
      batch_size: rows per model call (batches never span two input tables).
      intra_op_threads / inter_op_threads: TF thread pools of a worker process (0 = TF default).
    """
    path: str
    signature: str = "serving_default"
    batch_size: int = 4096
    intra_op_threads: int = 0
    inter_op_threads: int = 0


@dataclass(frozen=True)
class PartitionSpec:
    """How users are placed into shards (docs/FORMAT.md section 6).

    Args:
      num_shards: number of shard files.
      column: None for ``fmix64(uint64(key)) % num_shards``; else the int column holding the shard.
    """
    num_shards: int
    column: Optional[str] = None


@dataclass(frozen=True)
class OutputLayout:
    """Where and how the shard files are written.

    Args:
      path: the output directory (absolute, or a gs:// / hdfs:// URL), without trailing slash.
      run_id: this run's id; its scratch files live in ``<path>/_temporary/<run_id>/``.
      format: "tfrecord", "block" or "parquet".
      compression: "none" or "gzip" (tfrecord and block).
      num_shards: number of shard files.
      key_feature_id: the discreteFeatures id the int64 user key is stored under: the key
        feature for integer keys, the key-id feature for string keys (docs/FORMAT.md section 5).
      records_per_block: records per block of the block format.
      key_string_feature_id: string keys only: the stringFeatures id the key itself is stored
        under (the key feature); None for integer keys.
    """
    path: str
    run_id: str
    format: str
    compression: str
    num_shards: int
    key_feature_id: int
    records_per_block: int = 100
    key_string_feature_id: Optional[int] = None

    @property
    def string_keys(self) -> bool:
        return self.key_string_feature_id is not None
