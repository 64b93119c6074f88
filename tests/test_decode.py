"""The validating decoder, tensor_to_numpy for every GeneralTensor variant, and decode_embeddings."""
import numpy as np
import pytest

from twml.decode import (decode_batch_prediction_response, decode_data_record, decode_embeddings,
                         tensor_to_numpy, validate_struct)
from twml.encode import EncodedRecords, encode_batch_prediction_response, encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.schema import data_thrift, prediction_service_thrift, serialize, tensor_thrift as tt

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")


def full_record():
    """A DataRecord with every field and every GeneralTensor variant set."""
    return data_thrift.DataRecord(
        binaryFeatures={5, -6},
        continuousFeatures={1: 0.5, 2: -2.25},
        discreteFeatures={KEY_ID: 42},
        stringFeatures={3: "héllo"},
        sparseBinaryFeatures={4: {"a", "b"}},
        sparseContinuousFeatures={6: {"x": 1.0}},
        blobFeatures={7: b"\x00\xffblob"},
        tensors={
            10: tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=0, content=b"\x00\x00\x80?" * 2, shape=[2])),
            11: tt.GeneralTensor(stringTensor=tt.StringTensor(strings=["a", "bc"], shape=[2, 1])),
            12: tt.GeneralTensor(int32Tensor=tt.Int32Tensor(ints=[1, -2, 3])),
            13: tt.GeneralTensor(int64Tensor=tt.Int64Tensor(longs=[1 << 40], shape=[1])),
            14: tt.GeneralTensor(floatTensor=tt.FloatTensor(floats=[0.5, 1.5], shape=[2])),
            15: tt.GeneralTensor(doubleTensor=tt.DoubleTensor(doubles=[0.1], shape=[])),
            16: tt.GeneralTensor(boolTensor=tt.BoolTensor(booleans=[True, False])),
            17: tt.GeneralTensor(binaryTensor=tt.BinaryTensor(binaries=[b"\x01", b""], shape=[2])),
        },
        sparseTensors={20: tt.SparseTensor(cooSparseTensor=tt.COOSparseTensor(
            denseShape=[3], indices=tt.Int64Tensor(longs=[0, 2]),
            values=tt.GeneralTensor(doubleTensor=tt.DoubleTensor(doubles=[1.0, 2.0]))))},
    )


def test_every_field_round_trips():
    original = full_record()
    decoded = decode_data_record(serialize(original))
    assert decode_data_record(memoryview(serialize(original))) == decoded   # any buffer
    # thriftpy2 reads sets back as lists; everything else compares as is
    assert sorted(decoded.binaryFeatures) == [-6, 5]
    assert {k: sorted(v) for k, v in decoded.sparseBinaryFeatures.items()} == {4: ["a", "b"]}
    decoded.binaryFeatures, decoded.sparseBinaryFeatures = original.binaryFeatures, original.sparseBinaryFeatures
    assert decoded == original


def test_batch_prediction_response():
    encoded = encode_data_records(np.arange(3), KEY_ID, [(EMB_ID, np.ones((3, 2), np.float32))])
    response = decode_batch_prediction_response(encode_batch_prediction_response(encoded))
    assert isinstance(response, prediction_service_thrift.BatchPredictionResponse)
    assert [r.discreteFeatures for r in response.predictions] == [{KEY_ID: 0}, {KEY_ID: 1}, {KEY_ID: 2}]
    with pytest.raises(RecordFormatError, match="lacks required field.*predictions"):
        decode_batch_prediction_response(encoded[0])   # a DataRecord is not a response


@pytest.mark.parametrize("dtype,data_type", [(np.float32, 0), (np.float64, 1), (np.int32, 2),
                                             (np.int64, 3), (np.uint8, 4), (np.bool_, 7)])
def test_raw_typed_tensors(dtype, data_type):
    values = (np.arange(6).reshape(2, 3) % 2 == 1) if dtype == np.bool_ else np.arange(6, dtype=dtype).reshape(2, 3) - 2
    if dtype == np.uint8:
        values = values + 2
    content = values.astype(np.uint8 if dtype == np.bool_ else np.dtype(dtype).newbyteorder("<")).tobytes()
    tensor = tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=data_type, content=content, shape=[2, 3]))
    out = tensor_to_numpy(tensor)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    unshaped = tensor_to_numpy(tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=data_type, content=content)))
    assert unshaped.shape == (6,)


def test_list_and_string_tensors():
    tensors = full_record().tensors
    np.testing.assert_array_equal(tensor_to_numpy(tensors[11]), np.array([["a"], ["bc"]], dtype=object))
    assert tensor_to_numpy(tensors[12]).dtype == np.int32
    assert tensor_to_numpy(tensors[13]).tolist() == [1 << 40]
    f = tensor_to_numpy(tensors[14])
    assert f.dtype == np.float32 and f.tolist() == [0.5, 1.5]
    d = tensor_to_numpy(tensors[15])
    assert d.dtype == np.float64 and d.shape == () and d == 0.1
    assert tensor_to_numpy(tensors[16]).tolist() == [True, False]
    assert tensor_to_numpy(tensors[17]).tolist() == [b"\x01", b""]
    scalar = tensor_to_numpy(tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=3, content=b"\x07" + b"\x00" * 7, shape=[])))
    assert scalar.shape == () and scalar == 7


def test_tensor_errors():
    raw = tt.RawTypedTensor
    with pytest.raises(RecordFormatError, match="exactly one variant"):
        tensor_to_numpy(tt.GeneralTensor())
    with pytest.raises(RecordFormatError, match="exactly one variant"):
        tensor_to_numpy(tt.GeneralTensor(int32Tensor=tt.Int32Tensor(ints=[]), int64Tensor=tt.Int64Tensor(longs=[])))
    with pytest.raises(RecordFormatError, match="unsupported dataType 5"):
        tensor_to_numpy(tt.GeneralTensor(rawTypedTensor=raw(dataType=5, content=b"")))
    with pytest.raises(RecordFormatError, match="not a whole number"):
        tensor_to_numpy(tt.GeneralTensor(rawTypedTensor=raw(dataType=0, content=b"abc")))
    with pytest.raises(RecordFormatError, match="shape"):
        tensor_to_numpy(tt.GeneralTensor(rawTypedTensor=raw(dataType=0, content=b"abcd", shape=[2])))
    with pytest.raises(RecordFormatError, match="negative"):
        tensor_to_numpy(tt.GeneralTensor(int32Tensor=tt.Int32Tensor(ints=[], shape=[-1, 0])))


def test_validator_checks_types_against_the_schema():
    # tensors map (field 8) whose values are i32 instead of GeneralTensor structs
    bad = bytes([13, 0, 8, 10, 8, 0, 0, 0, 1]) + (5).to_bytes(8, "big") + (1).to_bytes(4, "big") + b"\x00"
    with pytest.raises(RecordFormatError, match="map value has type i32, the schema says struct") as err:
        decode_data_record(bad, path="f.tfrecord", offset=100)
    assert err.value.path == "f.tfrecord" and err.value.offset == 104
    # unknown fields are skipped, whatever they hold
    unknown = bytes([15, 0, 99, 12, 0, 0, 0, 2, 0, 0, 0])
    assert decode_data_record(unknown) == data_thrift.DataRecord()
    validate_struct(serialize(full_record()), data_thrift.DataRecord)
    no_content = data_thrift.DataRecord(tensors={1: tt.GeneralTensor(rawTypedTensor=tt.RawTypedTensor(dataType=0))})
    with pytest.raises(RecordFormatError, match="RawTypedTensor lacks required field.s. content"):
        decode_data_record(serialize(no_content))


# -- decode_embeddings ---------------------------------------------------------------------------

def make_batch(batch=6, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(-(1 << 62), 1 << 62, size=batch, dtype=np.int64)
    emb = rng.normal(size=(batch, dim)).astype(np.float32)
    return keys, emb


def test_fast_path_exact():
    keys, emb = make_batch(1000, 128)
    emb[0, 0] = np.nan
    encoded = encode_data_records(keys, KEY_ID, [(EMB_ID, emb)])
    got_keys, got_emb = decode_embeddings(encoded, KEY_ID, EMB_ID)
    assert got_keys.dtype == np.int64 and got_emb.dtype == np.float32
    np.testing.assert_array_equal(got_keys, keys)
    assert got_emb.tobytes() == emb.tobytes()   # bit-exact, NaN included
    by_name = decode_embeddings(encoded.to_list(), "meta.user_id", "output")
    np.testing.assert_array_equal(by_name[1], emb)


def test_other_writers_fall_back_to_the_general_decoder():
    keys, emb = make_batch(5, 3)
    records = []
    for i in range(5):
        if i % 3 == 0:    # FloatTensor list, extra features, embedding not first in the map
            tensor = tt.GeneralTensor(floatTensor=tt.FloatTensor(floats=emb[i].astype(float).tolist()))
            record = data_thrift.DataRecord(continuousFeatures={9: 1.0}, discreteFeatures={1: 2, KEY_ID: int(keys[i])},
                                            tensors={77: tt.GeneralTensor(int32Tensor=tt.Int32Tensor(ints=[1])),
                                                     EMB_ID: tensor})
        elif i % 3 == 1:  # DoubleTensor list with a shape
            tensor = tt.GeneralTensor(doubleTensor=tt.DoubleTensor(doubles=emb[i].astype(float).tolist(), shape=[3]))
            record = data_thrift.DataRecord(discreteFeatures={KEY_ID: int(keys[i])}, tensors={EMB_ID: tensor})
        else:             # exactly our layout
            records.append(encode_data_records(keys[i:i + 1], KEY_ID, [(EMB_ID, emb[i:i + 1])])[0])
            continue
        records.append(serialize(record))
    got_keys, got_emb = decode_embeddings(records, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_emb, emb)


def test_mixed_rows_of_one_length():
    keys, emb = make_batch(4, 3)
    ours = encode_data_records(keys, KEY_ID, [(EMB_ID, emb)])
    other = encode_data_records(keys, KEY_ID, [(EMB_ID, emb.astype(np.float64)[:, :1].repeat(2, 1)
                                                .view(np.float32)[:, :3])])  # same length, different bytes
    mixed = EncodedRecords.concat([ours.take(np.array([0, 1])), other.take(np.array([2])), ours.take(np.array([3]))])
    got_keys, got_emb = decode_embeddings(mixed, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_emb[[0, 1, 3]], emb[[0, 1, 3]])
    np.testing.assert_array_equal(got_emb[2], emb.astype(np.float64)[2, :1].repeat(2).view(np.float32)[:3])


def test_extra_tensor_columns_decode():
    keys, emb = make_batch(7, 4)
    encoded = encode_data_records(keys, KEY_ID, [(EMB_ID, emb), (5, np.ones((7, 2), np.int64))])
    got_keys, got_emb = decode_embeddings(encoded, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_emb, emb)


def test_embedding_errors_name_the_record():
    keys, emb = make_batch(3, 4)
    good = encode_data_records(keys, KEY_ID, [(EMB_ID, emb)]).to_list()
    no_key = encode_data_records(keys[:1], 123, [(EMB_ID, emb[:1])])[0]
    with pytest.raises(RecordFormatError, match=r"record 1: no discreteFeatures entry for key feature id") as err:
        decode_embeddings([good[0], no_key, good[2]], KEY_ID, EMB_ID, path="p")
    assert err.value.path == "p" and err.value.offset == len(good[0])
    no_emb = encode_data_records(keys[:1], KEY_ID, [(456, emb[:1])])[0]
    with pytest.raises(RecordFormatError, match="record 2: no tensors entry for embedding feature id"):
        decode_embeddings(good[:2] + [no_emb], KEY_ID, EMB_ID)
    short = encode_data_records(keys[:1], KEY_ID, [(EMB_ID, emb[:1, :3])])[0]
    with pytest.raises(RecordFormatError, match="record 1: embedding has dimension 3, other records have 4"):
        decode_embeddings([good[0], short], KEY_ID, EMB_ID)
    with pytest.raises(RecordFormatError, match="record 0: invalid DataRecord"):
        decode_embeddings([b"\x0b"], KEY_ID, EMB_ID)
    matrix = encode_data_records(keys[:1], KEY_ID, [(EMB_ID, emb[:1].reshape(1, 2, 2))])[0]
    with pytest.raises(RecordFormatError, match="must be a 1-D numeric tensor"):
        decode_embeddings([matrix], KEY_ID, EMB_ID)


def test_empty_input():
    keys, emb = decode_embeddings([], KEY_ID, EMB_ID)
    assert keys.shape == (0,) and emb.shape == (0, 0)
