"""twml.layers: Partition / Stitch, and the writer layers' bytes against two references.

Every writer output is compared with the numpy batch encoder (twml.encode) and with thriftpy2's
C binary protocol serializing the equivalent thriftpy2 objects (an independent encoder).
Layers are called eagerly where shapes vary (no tracing per example) and inside tf.functions
with unknown dims where the graph path matters; functions are built once per module.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twml.encode import (encode_batch_prediction_response, encode_continuous_records,
                         encode_data_records, encode_tensor_record)
from twml.feature_ids import feature_id
from twml.layers import (BatchPredictionTensorWriter, BatchPredictionWriter, DataRecordTensorWriter,
                         Partition, Stitch)
from twml.schema import data_thrift, prediction_service_thrift, serialize, tensor_thrift

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool", "string"]
DATA_TYPE = {"float32": 0, "float64": 1, "int32": 2, "int64": 3, "uint8": 4, "bool": 7}
TF_SETTINGS = settings(max_examples=40, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------------------------
# Test data and the thriftpy2 reference.

def make_array(rng: np.random.Generator, dtype: str, shape) -> np.ndarray:
    """Random values of ``dtype``; strings are arbitrary bytes (not all UTF-8), some empty."""
    shape = tuple(shape)
    if dtype == "string":
        flat = [bytes(rng.integers(0, 256, size=rng.integers(0, 7)).astype(np.uint8))
                for _ in range(int(np.prod(shape, dtype=np.int64)))]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith("float"):
        return (rng.normal(size=shape) * 1e3).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def to_tensor(array: np.ndarray) -> tf.Tensor:
    return tf.constant(array, dtype=tf.string if array.dtype == object else None)


def thrift_tensor(row: np.ndarray):
    """A thriftpy2 GeneralTensor for one row, written the libtwml way."""
    shape = [int(d) for d in row.shape]
    if row.dtype == object:
        return tensor_thrift.GeneralTensor(stringTensor=tensor_thrift.StringTensor(
            strings=list(row.reshape(-1)), shape=shape))
    content = row.astype(np.uint8) if row.dtype == bool else row.astype(row.dtype.newbyteorder("<"))
    return tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=DATA_TYPE[row.dtype.name], content=content.tobytes(), shape=shape))


def thrift_tensor_records(ids, arrays):
    batch = arrays[0].shape[0]
    return [data_thrift.DataRecord(tensors={fid: thrift_tensor(a[i, ...]) for fid, a in zip(ids, arrays)})
            for i in range(batch)]


def thrift_response(records) -> bytes:
    return serialize(prediction_service_thrift.BatchPredictionResponse(predictions=records))


def output_bytes(tensor: tf.Tensor) -> bytes:
    array = tensor.numpy()
    assert array.dtype == np.uint8 and array.ndim == 2 and array.shape[0] == 1
    return array.tobytes()


def expected_tensor_response(ids, arrays) -> bytes:
    encoded = encode_batch_prediction_response(encode_data_records(None, None, list(zip(ids, arrays))))
    assert encoded == thrift_response(thrift_tensor_records(ids, arrays))
    return encoded


def expected_tensor_record(ids, arrays) -> bytes:
    encoded = encode_tensor_record(list(zip(ids, arrays)))
    reference = data_thrift.DataRecord(tensors={fid: thrift_tensor(a) for fid, a in zip(ids, arrays)})
    assert encoded == serialize(reference)
    return encoded


def expected_continuous_response(ids, values) -> bytes:
    encoded = encode_batch_prediction_response(encode_continuous_records(ids, values))
    records = [data_thrift.DataRecord(continuousFeatures={fid: float(v) for fid, v in zip(ids, row)})
               for row in values]
    assert encoded == thrift_response(records)
    return encoded


# ----------------------------------------------------------------------------------------------
# Writers: every dtype, eager.

@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_prediction_tensor_writer_each_dtype(dtype):
    rng = np.random.default_rng(1)
    arrays = [make_array(rng, dtype, (3, 2, 3)), make_array(rng, dtype, (3,))]
    ids = [feature_id("output"), -5]
    layer = BatchPredictionTensorWriter(["output", -5])
    assert output_bytes(layer([to_tensor(a) for a in arrays])) == expected_tensor_response(ids, arrays)


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_record_tensor_writer_each_dtype(dtype):
    rng = np.random.default_rng(2)
    arrays = [make_array(rng, dtype, (4, 2)), make_array(rng, dtype, ()), make_array(rng, dtype, (0, 3))]
    ids = [7, feature_id("a.b#c"), 1 << 62]
    layer = DataRecordTensorWriter([7, "a.b#c", 1 << 62])
    assert output_bytes(layer([to_tensor(a) for a in arrays])) == expected_tensor_record(ids, arrays)


def test_tensor_writers_mixed_dtypes_and_numpy_inputs():
    rng = np.random.default_rng(3)
    arrays = [make_array(rng, d, (5,) + (2,) * (i % 3)) for i, d in enumerate(DTYPES)]
    ids = list(range(100, 100 + len(arrays)))
    response = BatchPredictionTensorWriter(ids)(arrays)  # numpy in: no cast, strings kept
    assert output_bytes(response) == expected_tensor_response(ids, arrays)
    record = DataRecordTensorWriter(ids)(arrays)
    assert output_bytes(record) == expected_tensor_record(ids, arrays)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_prediction_writer_values(dtype):
    values = np.array([[1.5, -0.0, np.inf], [-np.inf, np.nan, 1e-30], [3.0, 2.0, 1.0]], dtype=dtype)
    keys = ["x", "y", 3]
    ids = [feature_id("x"), feature_id("y"), 3]
    out = output_bytes(BatchPredictionWriter(keys)(values))
    assert out == encode_batch_prediction_response(encode_continuous_records(ids, values))
    finite = np.nan_to_num(values, nan=0.25)
    assert output_bytes(BatchPredictionWriter(keys)(finite)) == expected_continuous_response(ids, finite)


def test_float64_is_not_cast_by_keras():
    values = np.array([[1.0 + 2.0 ** -40]], dtype=np.float64)  # not representable in float32
    out = output_bytes(BatchPredictionWriter([1])(values))
    assert out == expected_continuous_response([1], values)


@pytest.mark.parametrize("batch", [0, 1])
def test_writers_with_batch_zero_and_one(batch):
    rng = np.random.default_rng(4)
    arrays = [make_array(rng, d, (batch, 2)) for d in DTYPES]
    ids = list(range(1, len(arrays) + 1))
    tensors = [to_tensor(a) for a in arrays]
    assert output_bytes(BatchPredictionTensorWriter(ids)(tensors)) == expected_tensor_response(ids, arrays)
    assert output_bytes(DataRecordTensorWriter(ids)(tensors)) == expected_tensor_record(ids, arrays)
    values = make_array(rng, "float32", (batch, 3))
    assert output_bytes(BatchPredictionWriter([1, 2, 3])(values)) == \
        expected_continuous_response([1, 2, 3], values)


def test_scalar_per_row():
    rng = np.random.default_rng(5)
    arrays = [make_array(rng, d, (4,)) for d in DTYPES]
    ids = [feature_id(f"scalar.{d}") for d in DTYPES]
    layer = BatchPredictionTensorWriter([f"scalar.{d}" for d in DTYPES])
    assert output_bytes(layer([to_tensor(a) for a in arrays])) == expected_tensor_response(ids, arrays)


def test_names_and_ids_give_the_same_bytes():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    by_name = BatchPredictionTensorWriter(["output"])([values])
    by_id = BatchPredictionTensorWriter([np.int64(feature_id("output"))])([values])
    assert output_bytes(by_name) == output_bytes(by_id)
    assert BatchPredictionWriter(list("abcd")).feature_ids == tuple(feature_id(c) for c in "abcd")


# ----------------------------------------------------------------------------------------------
# Writers: random shapes (hypothesis), eager.

@st.composite
def tensor_columns(draw, with_batch: bool):
    batch = draw(st.integers(0, 4)) if with_batch else None
    count = draw(st.integers(1, 3))
    columns = []
    for _ in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        dims = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
        shape = ([batch] if with_batch else []) + dims
        columns.append((dtype, tuple(shape)))
    ids = draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=count, max_size=count,
                        unique=True))
    return ids, columns, draw(st.integers(0, 2 ** 32 - 1))


@TF_SETTINGS
@given(tensor_columns(with_batch=True))
def test_batch_prediction_tensor_writer_random_shapes(case):
    ids, columns, seed = case
    rng = np.random.default_rng(seed)
    arrays = [make_array(rng, dtype, shape) for dtype, shape in columns]
    out = BatchPredictionTensorWriter(ids)([to_tensor(a) for a in arrays])
    assert output_bytes(out) == expected_tensor_response(ids, arrays)


@TF_SETTINGS
@given(tensor_columns(with_batch=False))
def test_data_record_tensor_writer_random_shapes(case):
    ids, columns, seed = case
    rng = np.random.default_rng(seed)
    arrays = [make_array(rng, dtype, shape) for dtype, shape in columns]
    out = DataRecordTensorWriter(ids)([to_tensor(a) for a in arrays])
    assert output_bytes(out) == expected_tensor_record(ids, arrays)


@TF_SETTINGS
@given(st.integers(0, 5), st.integers(1, 6), st.sampled_from(["float32", "float64"]),
       st.integers(0, 2 ** 32 - 1))
def test_batch_prediction_writer_random_shapes(batch, width, dtype, seed):
    rng = np.random.default_rng(seed)
    values = make_array(rng, dtype, (batch, width))
    ids = rng.integers(-(1 << 63), (1 << 63) - 1, size=width, dtype=np.int64).tolist()
    out = BatchPredictionWriter(ids)(values)
    assert output_bytes(out) == expected_continuous_response(ids, values)


# ----------------------------------------------------------------------------------------------
# Writers in tf.function with unknown dims (the serving path), traced once per module.

@pytest.fixture(scope="module")
def dynamic_writers():
    tensor_ids = [feature_id("output"), 11, 12, 13]
    tensor_writer = BatchPredictionTensorWriter(["output", 11, 12, 13])
    record_writer = DataRecordTensorWriter(["output", 11, 12, 13])
    continuous_writer = BatchPredictionWriter(["p0", "p1", "p2"])
    specs = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, None], tf.string),
             tf.TensorSpec([None, None, 2], tf.bool), tf.TensorSpec([None], tf.int64)]

    @tf.function(input_signature=specs)
    def tensors(a, b, c, d):
        return tensor_writer([a, b, c, d])

    @tf.function(input_signature=specs)
    def record(a, b, c, d):
        return record_writer([a, b, c, d])

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float64)])
    def continuous(values):
        return continuous_writer(values)

    return tensor_ids, tensors, record, continuous


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_writers_in_tf_function_with_unknown_dims(dynamic_writers, batch):
    tensor_ids, tensors, record, continuous = dynamic_writers
    rng = np.random.default_rng(batch)
    width = batch % 3 + 1
    arrays = [make_array(rng, "float32", (batch, 4)), make_array(rng, "string", (batch, width)),
              make_array(rng, "bool", (batch, width, 2)), make_array(rng, "int64", (batch,))]
    tensors_in = [to_tensor(a) for a in arrays]
    assert output_bytes(tensors(*tensors_in)) == expected_tensor_response(tensor_ids, arrays)
    assert output_bytes(record(*tensors_in)) == expected_tensor_record(tensor_ids, arrays)
    values = make_array(rng, "float64", (batch, 3))
    assert output_bytes(continuous(values)) == \
        expected_continuous_response([feature_id(f"p{j}") for j in range(3)], values)


def test_writers_in_keras_functional_model():
    inputs = [keras.Input((4,), dtype="float32"), keras.Input((2,), dtype="string")]
    dense = keras.layers.Dense(3)(inputs[0])
    response = BatchPredictionTensorWriter(["emb", "tags"])([dense, inputs[1]])
    continuous = BatchPredictionWriter(["a", "b", "c"])(dense)
    model = keras.Model(inputs, [response, continuous])
    assert model.outputs[0].dtype == "uint8" and tuple(model.outputs[0].shape) == (1, None)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tags = np.array([[b"a", b""], [b"bc", b"\xff"]], dtype=object)
    got_response, got_continuous = model([tf.constant(x), tf.constant(tags)])
    embedding = keras.Model(inputs[0], dense)(x).numpy()
    assert output_bytes(got_response) == expected_tensor_response(
        [feature_id("emb"), feature_id("tags")], [embedding, tags])
    assert output_bytes(got_continuous) == expected_continuous_response(
        [feature_id(c) for c in "abc"], embedding)


# ----------------------------------------------------------------------------------------------
# Writers: clear errors.

def test_keys_values_count_mismatch():
    with pytest.raises(ValueError, match="2 keys but 3 values"):
        BatchPredictionTensorWriter([1, 2])([np.zeros((2,))] * 3)
    with pytest.raises(ValueError, match="3 keys but 1 values"):
        DataRecordTensorWriter([1, 2, 3])([np.zeros(2)])


def test_batch_prediction_writer_keys_vs_last_dim_static():
    with pytest.raises(ValueError, match="4 keys but values have 3 columns"):
        BatchPredictionWriter([1, 2, 3, 4])(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="4 keys but values have 3 columns"):  # at model build time
        BatchPredictionWriter([1, 2, 3, 4])(keras.Input((3,)))


def test_batch_prediction_writer_keys_vs_last_dim_dynamic(dynamic_writers):
    continuous = dynamic_writers[3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 keys but values have a different"):
        continuous(np.zeros((2, 5)))


def test_batch_prediction_writer_bad_values():
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        BatchPredictionWriter([1])(np.zeros((2, 1), np.int32))
    with pytest.raises(ValueError, match=r"must be \[B, P\]"):
        BatchPredictionWriter([1])(np.zeros((2, 1, 1), np.float32))


@pytest.mark.parametrize("dtype", [tf.int8, tf.complex64, tf.float16, tf.uint16])
def test_unsupported_dtype(dtype):
    values = tf.zeros([2, 3], dtype=dtype)
    with pytest.raises(TypeError, match=f"key 'bad'.*unsupported dtype {dtype.name}"):
        BatchPredictionTensorWriter(["ok", "bad"])([tf.zeros([2]), values])
    with pytest.raises(TypeError, match=f"unsupported dtype {dtype.name}"):
        DataRecordTensorWriter(["bad"])([values])


def test_mismatched_dim0_static():
    with pytest.raises(ValueError, match=r"values\[1\] \(key 2\): dim 0 is 3 but values\[0\] has 2"):
        BatchPredictionTensorWriter([1, 2])([np.zeros((2, 4)), np.zeros((3,))])


def test_mismatched_dim0_dynamic():
    layer = BatchPredictionTensorWriter([1, 2])
    fn = tf.function(lambda a, b: layer([a, b]), input_signature=[
        tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.string)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values\[1\] \(key 2\): dim 0 differs"):
        fn(tf.zeros([2, 2]), tf.constant(["a", "b", "c"]))


def test_scalar_value_rejected_by_batch_writer():
    with pytest.raises(ValueError, match="rank >= 1"):
        BatchPredictionTensorWriter([1])([np.float32(1.0)])


@pytest.mark.parametrize("keys, error, message", [
    ([], ValueError, "must not be empty"),
    ("output", TypeError, "must be a list"),
    ([1, 1.5], TypeError, "bad key 1.5"),
    ([True], TypeError, "bad key True"),
    ([1 << 63], ValueError, "does not fit in int64"),
    (["a", feature_id("a")], ValueError, "same feature id"),
])
def test_bad_keys(keys, error, message):
    for cls in (DataRecordTensorWriter, BatchPredictionWriter, BatchPredictionTensorWriter):
        with pytest.raises(error, match=message):
            cls(keys)


def test_writer_config_round_trip():
    layer = BatchPredictionTensorWriter(["output", np.int64(5)], name="writer")
    config = layer.get_config()
    json.dumps(config)
    clone = BatchPredictionTensorWriter.from_config(config)
    assert clone.feature_ids == layer.feature_ids and clone.name == "writer"


# ----------------------------------------------------------------------------------------------
# Partition and Stitch.

@st.composite
def partition_cases(draw):
    partitions = draw(st.integers(1, 4))
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(0, partitions - 1), min_size=n, max_size=n))
    return (partitions, np.array(ids, dtype=draw(st.sampled_from([np.int32, np.int64]))),
            draw(st.integers(0, 2)), draw(st.integers(0, 2 ** 32 - 1)))


@TF_SETTINGS
@given(partition_cases())
def test_stitch_undoes_partition(case):
    partitions, ids, extra_dims, seed = case
    rng = np.random.default_rng(seed)
    vals = rng.normal(size=(len(ids),) + (2,) * extra_dims).astype(np.float32)
    keys = rng.integers(0, 1 << 40, size=len(ids))
    vals_parts, keys_parts, index_parts = Partition(partitions)(ids, vals, keys)
    assert len(vals_parts) == len(keys_parts) == len(index_parts) == partitions
    for p in range(partitions):  # order kept within a partition; indices are original positions
        where = np.flatnonzero(ids == p)
        np.testing.assert_array_equal(index_parts[p].numpy(), where)
        np.testing.assert_array_equal(vals_parts[p].numpy(), vals[where])
        np.testing.assert_array_equal(keys_parts[p].numpy(), keys[where])
    stitched_vals, stitched_keys = Stitch()(vals_parts, keys_parts, index_parts)
    np.testing.assert_array_equal(stitched_vals.numpy(), vals)
    np.testing.assert_array_equal(stitched_keys.numpy(), keys)


@pytest.fixture(scope="module")
def partition_fn():
    partition, stitch = Partition(3), Stitch()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([None], tf.string)])
    def round_trip(ids, vals, keys):
        parts = partition(ids, vals, keys)
        return parts, stitch(*parts)

    return round_trip


def test_partition_stitch_in_tf_function(partition_fn):
    ids = np.array([2, 0, 1, 2, 2, 0], np.int64)
    vals = np.arange(12, dtype=np.float32).reshape(6, 2)
    keys = np.array([b"a", b"b", b"c", b"d", b"e", b"f"], dtype=object)
    (vals_parts, _, index_parts), (got_vals, got_keys) = partition_fn(ids, vals, tf.constant(keys))
    np.testing.assert_array_equal(index_parts[2].numpy(), [0, 3, 4])
    np.testing.assert_array_equal(vals_parts[0].numpy(), vals[[1, 5]])
    np.testing.assert_array_equal(got_vals.numpy(), vals)
    assert got_keys.numpy().tolist() == keys.tolist()


@pytest.mark.parametrize("bad", [[0, 3, 1], [-1, 0, 0], [0, 1, 1 << 40]])
def test_partition_rejects_ids_out_of_range(partition_fn, bad):
    ids = np.array(bad, np.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 3\)") as err:
        partition_fn(ids, np.zeros((3, 2), np.float32), tf.constant(["a", "b", "c"]))
    bad_value = [v for v in bad if not 0 <= v < 3][0]
    assert str(bad_value) in str(err.value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 3\)"):
        Partition(3)(ids, np.zeros(3), np.zeros(3))  # eager, too
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 2\)"):
        Partition(2)(np.array([0, 2], np.int32), np.zeros(2), np.zeros(2))


def test_partition_bad_arguments():
    with pytest.raises(TypeError, match="int32 or int64, got float32"):
        Partition(2)(np.zeros(3, np.float32), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="input_vals has dim 0 = 4 but partition_ids has 3"):
        Partition(2)(np.zeros(3, np.int32), np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="partitions must be an int >= 1"):
        Partition(0)
    with pytest.raises(ValueError, match="same non-zero number"):
        Stitch()([np.zeros(2)], [np.zeros(2), np.zeros(1)], [np.arange(2)])


def test_partition_and_stitch_output_shapes_and_keras_model():
    partition = Partition(2)
    assert partition.compute_output_shape((None,), (None, 3), (None,)) == [
        [(None, 3), (None, 3)], [(None,), (None,)], [(None,), (None,)]]
    assert partition.compute_output_shape([(5,), (5, 3, 2), (5, 1)]) == [
        [(None, 3, 2)] * 2, [(None, 1)] * 2, [(None,)] * 2]
    assert Stitch().compute_output_shape([(None, 3)] * 2, [(None,)] * 2, [(None,)] * 2) == [(None, 3), (None,)]

    ids = keras.Input((), dtype="int64")
    vals = keras.Input((3,), dtype="float64")
    keys = keras.Input((), dtype="int64")
    parts = partition(ids, vals, keys)
    assert [t.dtype for t in parts[0]] == ["float64"] * 2 and parts[2][0].dtype == "int32"
    model = keras.Model([ids, vals, keys], Stitch()(*parts))
    x = np.arange(12, dtype=np.float64).reshape(4, 3) + 0.1
    got_vals, got_keys = model([np.array([1, 0, 1, 1]), x, np.arange(4) * 7])
    assert got_vals.dtype == tf.float64
    np.testing.assert_array_equal(got_vals.numpy(), x)
    np.testing.assert_array_equal(got_keys.numpy(), np.arange(4) * 7)


# ----------------------------------------------------------------------------------------------
# The benchmark runs and agrees with the encoder (its figures are reported, never asserted).

def test_layers_benchmark_smoke():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "layers_bench.py"
    spec = importlib.util.spec_from_file_location("layers_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run_layers_benchmark(batch=64, width=8, repeats=2)
    json.dumps(result)
    assert result["same_bytes"] is True
    assert result["tensor_writer_vs_numpy"] > 0
