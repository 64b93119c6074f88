"""twml's Keras layers in the native ``.keras`` format: registered for serialization, with a
config that rebuilds them, so a saved model loads with ``keras.saving.load_model`` (no
custom_objects) and computes the same bytes and tensors."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from twml.encode import encode_batch_prediction_response, encode_continuous_records
from twml.feature_ids import feature_id
from twml.layers import (BatchPredictionTensorWriter, BatchPredictionWriter, DataRecordTensorWriter, Partition,
                         Stitch)

LAYERS = [Partition(3), Stitch(), DataRecordTensorWriter(["a", 7]),
          BatchPredictionWriter(["s0", "s1", "s2", "s3"]), BatchPredictionTensorWriter(["output", "user.score"])]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_every_layer_is_registered_and_rebuilt_from_its_config(layer):
    cls = type(layer)
    assert keras.saving.get_registered_name(cls) == f"twml>{cls.__name__}"
    assert keras.saving.get_registered_object(f"twml>{cls.__name__}") is cls
    config = layer.get_config()
    again = cls.from_config(config)
    assert again.get_config() == config
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(rebuilt) is cls and rebuilt.get_config() == config


def _writer_model():
    x = keras.Input((8,), dtype="float32", name="x")
    scores = keras.layers.Dense(4, name="scores")(x)
    embedding = keras.layers.Dense(6, name="embedding")(x)
    score = keras.layers.Dense(1, name="score")(x)
    continuous = BatchPredictionWriter(["s0", "s1", "s2", "s3"], name="continuous")(scores)
    tensors = BatchPredictionTensorWriter(["output", "user.score"], name="tensors")([embedding, score])
    return keras.Model(x, {"continuous": continuous, "tensors": tensors, "scores": scores})


def _partition_model():
    ids = keras.Input((), dtype="int32", name="ids")
    vals = keras.Input((3,), dtype="float32", name="vals")
    keys = keras.Input((), dtype="int64", name="keys")
    vals_parts, keys_parts, indices = Partition(3, name="partition")(ids, vals, keys)
    back_vals, back_keys = Stitch(name="stitch")(vals_parts, keys_parts, indices)
    return keras.Model([ids, vals, keys], [back_vals, back_keys, *keys_parts])


def test_writer_model_saves_and_loads_as_a_keras_file(tmp_path):
    model = _writer_model()
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    before = model(tf.constant(x))
    path = str(tmp_path / "writers.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)   # no custom_objects: the layers are registered
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert loaded.get_layer("continuous").keys == ("s0", "s1", "s2", "s3")
    after = loaded(tf.constant(x))
    for name in ("continuous", "tensors", "scores"):
        assert after[name].numpy().tobytes() == before[name].numpy().tobytes(), name
    # and the bytes are still the encoder's
    assert after["continuous"].numpy().tobytes() == encode_batch_prediction_response(
        encode_continuous_records([feature_id(k) for k in ("s0", "s1", "s2", "s3")], after["scores"].numpy()))


def test_partition_stitch_model_saves_and_loads_as_a_keras_file(tmp_path):
    model = _partition_model()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, size=11).astype(np.int32)
    vals = rng.normal(size=(11, 3)).astype(np.float32)
    keys = rng.integers(-2**62, 2**62, size=11)
    path = str(tmp_path / "partition.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("partition").partitions == 3
    out = loaded([tf.constant(ids), tf.constant(vals), tf.constant(keys)])
    np.testing.assert_array_equal(out[0].numpy(), vals)
    np.testing.assert_array_equal(out[1].numpy(), keys)
    for p in range(3):
        np.testing.assert_array_equal(out[2 + p].numpy(), keys[ids == p])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 3\)"):
        loaded([tf.constant([0, 5], tf.int32), tf.constant(vals[:2]), tf.constant(keys[:2])])
