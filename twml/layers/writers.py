"""The writer layers: model outputs -> Thrift-serialized DataRecords as a uint8 ``[1, len]`` tensor.

They sit at the output of exported models, so they are built from TensorFlow graph ops only
(``twml.layers._graph_encode``): a SavedModel ending in one of them loads and runs where our
Python code is absent, with any batch size. Their bytes equal the numpy batch encoder's
(``twml.encode``), which follows libtwml's writers (docs/FORMAT.md section 3).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from twml.feature_ids import resolve_feature_id
from twml.layers import _graph_encode as ge
from twml.layers._base import RawInputLayer, serializable

__all__ = ["DataRecordTensorWriter", "BatchPredictionWriter", "BatchPredictionTensorWriter"]

Key = Union[str, int, np.integer]


class _WriterLayer(RawInputLayer):
    """Common part of the writers: keys resolved to feature ids, a uint8 ``[1, len]`` output.

    Args:
      keys: feature names (hashed with ``twml.feature_id``) or int64 feature ids, one per
        value; the order of ``keys`` is the order of the map entries written.
      **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, keys: Sequence[Key], **kwargs):
        super().__init__(**kwargs)
        ge.require_little_endian_host()
        self.keys = tuple(_key_list(keys, type(self).__name__))
        self.feature_ids = tuple(resolve_keys(self.keys, type(self).__name__))

    def get_config(self) -> dict:
        return {**super().get_config(), "keys": list(self.keys)}

    def compute_output_shape(self, values_shape) -> Tuple:
        return (1, None)

    def compute_output_spec(self, values):
        self._check_static([(tf.TensorShape(v.shape), tf.as_dtype(v.dtype)) for v in self._value_list(values)])
        return keras.KerasTensor((1, None), dtype="uint8")

    def call(self, values):
        tensors = [tf.convert_to_tensor(v) for v in self._value_list(values)]
        self._check_static([(t.shape, t.dtype) for t in tensors])
        return self._encode(tensors)

    def _value_list(self, values) -> list:
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if len(values) != len(self.feature_ids):
            raise ValueError(f"{type(self).__name__}: {len(self.feature_ids)} keys but "
                             f"{len(values)} values; give one value tensor per key")
        return values

    def _what(self, j: int) -> str:
        return f"{type(self).__name__}: values[{j}] (key {self.keys[j]!r})"

    def _check_static(self, specs: List[Tuple[tf.TensorShape, tf.dtypes.DType]]) -> None:
        raise NotImplementedError

    def _encode(self, tensors: List[tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError


@serializable
class DataRecordTensorWriter(_WriterLayer):
    """ONE DataRecord holding only field 8 (tensors): entry i = keys[i] -> values[i] whole.

    The batch dimension, if any, is part of each tensor's shape. Equals
    ``twml.encode.encode_tensor_record(list(zip(feature_ids, values)))``.

    Args:
      keys: feature names or int64 ids, one per value.
      **kwargs: passed to ``keras.layers.Layer``.

    Input: ``values``, a list of tensors of any shape (scalars too); dtypes float32, float64,
    int32, int64, uint8, bool or string. Output: uint8 ``[1, len]``, the serialized record.
    """

    def _check_static(self, specs):
        for j, (shape, dtype) in enumerate(specs):
            ge.check_dtype(dtype, self._what(j))
            if shape.rank is None:
                raise ValueError(f"{self._what(j)}: needs a known rank")

    def _encode(self, tensors):
        one = tf.constant(1, tf.int32)
        pieces: List[ge.Piece] = [ge.map_header(8, ge.T_I64, ge.T_STRUCT, len(tensors))]
        for fid, values in zip(self.feature_ids, tensors):
            pieces += ge.tensor_entry_pieces(fid, values[tf.newaxis], one)
        pieces.append(b"\x00")
        return ge.assemble_records(one, pieces)[tf.newaxis, :]


@serializable
class BatchPredictionTensorWriter(_WriterLayer):
    """A BatchPredictionResponse of B DataRecords; record i holds only field 8 (tensors) with
    keys[j] -> row i of values[j] (shape = dims 1.. of values[j]).

    Equals ``encode_batch_prediction_response(encode_data_records(None, None,
    list(zip(feature_ids, values))))``.

    Args:
      keys: feature names or int64 ids, one per value.
      **kwargs: passed to ``keras.layers.Layer``.

    Input: ``values``, a list of tensors with the same dim 0 = B (checked at run time when
    not static); dtypes float32, float64, int32, int64, uint8, bool or string. Output: uint8
    ``[1, len]``, the serialized response.
    """

    def _check_static(self, specs):
        for j, (shape, dtype) in enumerate(specs):
            ge.check_dtype(dtype, self._what(j))
            if shape.rank is None or shape.rank == 0:
                raise ValueError(f"{self._what(j)}: needs a known rank >= 1 (dim 0 = B), got {shape}")
        first = specs[0][0][0]
        for j, (shape, _) in enumerate(specs[1:], start=1):
            if first is not None and shape[0] is not None and shape[0] != first:
                raise ValueError(f"{self._what(j)}: dim 0 is {shape[0]} but values[0] has {first}; "
                                 "all values need the same dim 0 (one row per record)")

    def _encode(self, tensors):
        batch = tf.shape(tensors[0])[0]
        checks = [tf.debugging.assert_equal(
            tf.shape(t)[0], batch,
            message=f"{self._what(j)}: dim 0 differs from values[0]'s; all values need the same "
                    "dim 0 (one row per record)")
            for j, t in enumerate(tensors[1:], start=1)
            if t.shape[0] is None or tensors[0].shape[0] is None]
        with tf.control_dependencies(checks):
            pieces: List[ge.Piece] = [ge.map_header(8, ge.T_I64, ge.T_STRUCT, len(tensors))]
            for fid, values in zip(self.feature_ids, tensors):
                pieces += ge.tensor_entry_pieces(fid, values, batch)
            pieces.append(b"\x00")
            return ge.batch_prediction_response(batch, ge.assemble_records(batch, pieces))


@serializable
class BatchPredictionWriter(_WriterLayer):
    """A BatchPredictionResponse of B DataRecords; record i holds only field 2
    (continuousFeatures) {keys[j]: double(values[i, j])}.

    Equals ``encode_batch_prediction_response(encode_continuous_records(feature_ids, values))``.

    Args:
      keys: feature names or int64 ids, one per column of values.
      **kwargs: passed to ``keras.layers.Layer``.

    Input: ``values``, float32 or float64 ``[B, P]`` with P == len(keys) (checked when the
    layer is built if P is static, else at run time). Output: uint8 ``[1, len]``.
    """

    def _value_list(self, values) -> list:
        if isinstance(values, (list, tuple)):
            if len(values) != 1:
                raise ValueError(f"BatchPredictionWriter: takes one [B, P] tensor, got a list of "
                                 f"{len(values)}")
            values = values[0]
        return [values]

    def _check_static(self, specs):
        (shape, dtype), = specs
        if dtype not in (tf.float32, tf.float64):
            raise TypeError(f"BatchPredictionWriter: values must be float32 or float64, got {dtype.name}")
        if shape.rank != 2:
            raise ValueError(f"BatchPredictionWriter: values must be [B, P], got shape {shape}")
        if shape[1] is not None and shape[1] != len(self.feature_ids):
            raise ValueError(f"BatchPredictionWriter: {len(self.feature_ids)} keys but values have "
                             f"{shape[1]} columns (last dim); give one key per column")

    def _encode(self, tensors):
        values, = tensors
        batch = tf.shape(values)[0]
        checks = []
        if values.shape[1] is None:
            checks.append(tf.debugging.assert_equal(
                tf.shape(values)[1], len(self.feature_ids),
                message=f"BatchPredictionWriter: {len(self.feature_ids)} keys but values have a "
                        "different number of columns (last dim); give one key per column"))
        with tf.control_dependencies(checks):
            pieces = ge.continuous_record_pieces(self.feature_ids, values, batch)
            return ge.batch_prediction_response(batch, ge.assemble_records(batch, pieces))


def _key_list(keys, layer: str) -> List[Key]:
    if isinstance(keys, (str, bytes, int, np.integer)) or not hasattr(keys, "__iter__"):
        raise TypeError(f"{layer}: keys must be a list of feature names or ids, got {keys!r}")
    keys = [k.item() if isinstance(k, np.generic) else k for k in keys]
    if not keys:
        raise ValueError(f"{layer}: keys must not be empty")
    return keys


def resolve_keys(keys: Sequence[Key], layer: str) -> List[int]:
    """Feature ids of ``keys`` (names hashed, ids checked), refusing duplicates."""
    ids = []
    for key in keys:
        try:
            ids.append(resolve_feature_id(key))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{layer}: bad key {key!r}: {err}") from None
    seen = {}
    for key, fid in zip(keys, ids):
        if fid in seen:
            raise ValueError(f"{layer}: keys {seen[fid]!r} and {key!r} are the same feature id {fid}; "
                             "a record cannot hold two entries with one key")
        seen[fid] = key
    return ids
