"""Partition: split the entries of a hashmap (values, keys) by a partition id per entry."""
from __future__ import annotations

from typing import List, Tuple, Union

import keras
import tensorflow as tf

from twml.layers._base import RawInputLayer, serializable

__all__ = ["Partition"]

ShapeLike = Union[Tuple, List, tf.TensorShape]


@serializable
class Partition(RawInputLayer):
    """``tf.dynamic_partition`` of values, keys and original positions by partition id.

    ``call(partition_ids, input_vals, input_keys)`` returns ``[vals_parts, keys_parts,
    indices_parts]``, each a list of ``partitions`` tensors: part p holds, in their original
    order, the entries whose id is p, and ``indices_parts[p]`` (int32) their positions in the
    input, so ``Stitch`` can put them back.

    Args:
      partitions: the number of partitions P (>= 1). Ids must lie in [0, P); others fail with
        an InvalidArgumentError that names the range and the offending ids.
      **kwargs: passed to ``keras.layers.Layer``.

    Inputs:
      partition_ids: int32 or int64 ``[N]``.
      input_vals: ``[N, ...]``, any dtype.
      input_keys: ``[N, ...]``, any dtype.
    """

    def __init__(self, partitions: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be an int >= 1, got {partitions!r}")
        self.partitions = partitions

    def get_config(self) -> dict:
        return {**super().get_config(), "partitions": self.partitions}

    def compute_output_shape(self, partition_ids_shape: ShapeLike, input_vals_shape: ShapeLike = None,
                             input_keys_shape: ShapeLike = None) -> List[List[Tuple]]:
        if input_vals_shape is None and input_keys_shape is None:  # Keras 2 style: one list of shapes
            partition_ids_shape, input_vals_shape, input_keys_shape = partition_ids_shape
        _check_shapes(tf.TensorShape(partition_ids_shape), tf.TensorShape(input_vals_shape),
                      tf.TensorShape(input_keys_shape))
        return partition_output_shapes(self.partitions, input_vals_shape, input_keys_shape)

    def compute_output_spec(self, partition_ids, input_vals, input_keys):
        _check_ids_dtype(partition_ids.dtype)
        vals_shapes, keys_shapes, index_shapes = self.compute_output_shape(
            partition_ids.shape, input_vals.shape, input_keys.shape)
        return [[keras.KerasTensor(s, dtype=input_vals.dtype) for s in vals_shapes],
                [keras.KerasTensor(s, dtype=input_keys.dtype) for s in keys_shapes],
                [keras.KerasTensor(s, dtype="int32") for s in index_shapes]]

    def call(self, partition_ids, input_vals, input_keys):
        ids = tf.convert_to_tensor(partition_ids)
        vals = tf.convert_to_tensor(input_vals)
        keys = tf.convert_to_tensor(input_keys)
        _check_ids_dtype(ids.dtype)
        _check_shapes(ids.shape, vals.shape, keys.shape)
        ids = checked_partition_ids(ids, self.partitions)
        positions = tf.range(tf.shape(ids)[0], dtype=tf.int32)
        return [tf.dynamic_partition(vals, ids, self.partitions),
                tf.dynamic_partition(keys, ids, self.partitions),
                tf.dynamic_partition(positions, ids, self.partitions)]


def _check_ids_dtype(dtype) -> None:
    if tf.as_dtype(dtype) not in (tf.int32, tf.int64):
        raise TypeError(f"Partition: partition_ids must be int32 or int64, got {tf.as_dtype(dtype).name}")


def _check_shapes(ids: tf.TensorShape, vals: tf.TensorShape, keys: tf.TensorShape) -> None:
    if ids.rank is not None and ids.rank != 1:
        raise ValueError(f"Partition: partition_ids must be 1-D [N], got shape {ids}")
    for name, shape in (("input_vals", vals), ("input_keys", keys)):
        if shape.rank == 0:
            raise ValueError(f"Partition: {name} needs dim 0 = N, got a scalar")
        if ids.rank and shape.rank and not ids[:1].is_compatible_with(shape[:1]):
            raise ValueError(f"Partition: {name} has dim 0 = {shape[0]} but partition_ids has "
                             f"{ids[0]} entries")


def partition_output_shapes(partitions: int, vals_shape: ShapeLike, keys_shape: ShapeLike):
    """Shapes of ``[vals_parts, keys_parts, indices_parts]``: dim 0 of every part is unknown."""
    vals_rest = tuple(tf.TensorShape(vals_shape).as_list()[1:])
    keys_rest = tuple(tf.TensorShape(keys_shape).as_list()[1:])
    return [[(None,) + vals_rest for _ in range(partitions)],
            [(None,) + keys_rest for _ in range(partitions)],
            [(None,) for _ in range(partitions)]]


def checked_partition_ids(ids: tf.Tensor, partitions: int) -> tf.Tensor:
    """``ids`` as int32, after a run-time check that every id lies in [0, partitions)."""
    in_range = tf.logical_and(ids >= 0, ids < tf.cast(partitions, ids.dtype))
    bad = tf.boolean_mask(ids, tf.logical_not(in_range))
    check = tf.debugging.Assert(
        tf.reduce_all(in_range),
        [f"Partition: partition ids must lie in [0, {partitions}); number of ids outside:",
         tf.size(bad), "first bad ids:", bad[:10], "at positions:",
         tf.where(tf.logical_not(in_range))[:10, 0]],
        summarize=10)
    with tf.control_dependencies([check]):
        return tf.cast(ids, tf.int32)  # safe: the ids lie in [0, partitions)
