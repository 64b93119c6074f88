"""The base of twml's layers: Keras 3 layers that take their inputs as they are."""
from __future__ import annotations

import keras

SERIALIZATION_PACKAGE = "twml"
"""Every twml layer is registered under ``twml>ClassName``: a ``.keras`` file holding one loads
with ``keras.saving.load_model`` once ``twml.layers`` is imported, without custom_objects."""


def serializable(cls):
    """Register a layer class for Keras serialization under the ``twml`` package."""
    return keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)(cls)


class RawInputLayer(keras.layers.Layer):
    """A Keras layer that neither casts nor converts its inputs.

    Keras 3 casts floating inputs to the layer's compute dtype (float64 would silently become
    float32) and refuses non-tensor positional arguments; twml's layers must see ids, keys and
    values in their own dtypes (strings included) and accept numpy arrays, as Keras's own
    string-handling layers do.

    Args:
      **kwargs: passed to ``keras.layers.Layer`` (``name``, ...).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
