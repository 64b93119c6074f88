"""Stitch: put partitioned hashmap entries back in their original order (undoes Partition)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import keras
import tensorflow as tf

from twml.layers._base import RawInputLayer, serializable

__all__ = ["Stitch"]


@serializable
class Stitch(RawInputLayer):
    """``tf.dynamic_stitch`` of partitioned values and keys by their original positions.

    ``call(vals_parts, keys_parts, indices_parts)`` returns ``[vals, keys]`` where entry
    ``indices_parts[p][i]`` of the output is ``vals_parts[p][i]`` (and the same for keys), so
    ``Stitch()(*Partition(P)(ids, vals, keys))`` gives back ``[vals, keys]``.

    Args:
      **kwargs: passed to ``keras.layers.Layer``.

    Inputs:
      vals_parts: list of P tensors ``[n_p, ...]``, one dtype.
      keys_parts: list of P tensors ``[n_p, ...]``, one dtype.
      indices_parts: list of P int32 (or int64) ``[n_p]`` original positions.
    """

    def compute_output_shape(self, vals_parts_shape, keys_parts_shape=None,
                             indices_parts_shape=None) -> List[Tuple]:
        if keys_parts_shape is None and indices_parts_shape is None:  # Keras 2 style
            vals_parts_shape, keys_parts_shape, indices_parts_shape = vals_parts_shape
        _check_part_counts(len(vals_parts_shape), len(keys_parts_shape), len(indices_parts_shape))
        return [_stitched_shape(vals_parts_shape), _stitched_shape(keys_parts_shape)]

    def compute_output_spec(self, vals_parts, keys_parts, indices_parts):
        vals_shape, keys_shape = self.compute_output_shape(
            [v.shape for v in vals_parts], [k.shape for k in keys_parts],
            [i.shape for i in indices_parts])
        return [keras.KerasTensor(vals_shape, dtype=vals_parts[0].dtype),
                keras.KerasTensor(keys_shape, dtype=keys_parts[0].dtype)]

    def call(self, vals_parts, keys_parts, indices_parts):
        vals_parts = [tf.convert_to_tensor(v) for v in vals_parts]
        keys_parts = [tf.convert_to_tensor(k) for k in keys_parts]
        indices = [tf.convert_to_tensor(i) for i in indices_parts]
        _check_part_counts(len(vals_parts), len(keys_parts), len(indices))
        for i in indices:
            if i.dtype not in (tf.int32, tf.int64):
                raise TypeError(f"Stitch: indices_parts must be int32 or int64, got {i.dtype.name}")
        indices = [tf.cast(i, tf.int32) for i in indices]
        return [tf.dynamic_stitch(indices, vals_parts), tf.dynamic_stitch(indices, keys_parts)]


def _check_part_counts(vals: int, keys: int, indices: int) -> None:
    if not vals or not vals == keys == indices:
        raise ValueError(f"Stitch: needs the same non-zero number of vals, keys and indices parts, "
                         f"got {vals}, {keys} and {indices}")


def _stitched_shape(part_shapes: Sequence) -> Tuple:
    return (None,) + tuple(tf.TensorShape(part_shapes[0]).as_list()[1:])
