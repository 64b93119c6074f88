"""The batch encoder's bytes equal thriftpy2's C-protocol serialization of the same objects."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from twml.encode import (EncodedRecords, encode_batch_prediction_response, encode_continuous_records,
                         encode_data_records, encode_fixed_rows, encode_tensor_record)
from twml.feature_ids import feature_id
from twml.schema import data_thrift, prediction_service_thrift, serialize, tensor_thrift

DATA_TYPE = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int32): 2,
             np.dtype(np.int64): 3, np.dtype(np.uint8): 4, np.dtype(np.bool_): 7}
NUMERIC = list(DATA_TYPE)
KEY_ID = feature_id("meta.user_id")


# -- the independent side: thriftpy2 objects built element by element --------------------------

def thrift_tensor(value: np.ndarray):
    shape = list(value.shape)
    if value.dtype.kind in "USO":
        return tensor_thrift.GeneralTensor(stringTensor=tensor_thrift.StringTensor(
            strings=list(value.reshape(-1).tolist()), shape=shape))
    if value.dtype == np.bool_:
        content = bytes(int(v) for v in value.reshape(-1).tolist())
    else:
        content = b"".join(np.array([v], dtype=value.dtype.newbyteorder("<")).tobytes()
                           for v in value.reshape(-1).tolist())
    return tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=DATA_TYPE[value.dtype], content=content, shape=shape))


def thrift_record(keys, columns, row):
    record = data_thrift.DataRecord()
    if keys is not None:
        record.discreteFeatures = {KEY_ID: int(keys[row])}
    if columns:
        record.tensors = {fid: thrift_tensor(array[row, ...]) for fid, array in columns}
    return record


def thrift_bytes(keys, columns, batch):
    return [serialize(thrift_record(keys, columns, i)) for i in range(batch)]


# -- strategies ----------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)


@st.composite
def columns_strategy(draw, batch):
    count = draw(st.integers(1, 3))
    ids = draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=count, max_size=count, unique=True))
    columns = []
    for fid in ids:
        row_shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
        kind = draw(st.sampled_from(NUMERIC + ["str", "bytes"]))
        shape = (batch,) + row_shape
        if kind in ("str", "bytes"):
            size = int(np.prod(shape))
            items = draw(st.lists(TEXT if kind == "str" else st.binary(max_size=6), min_size=size, max_size=size))
            array = np.empty(size, dtype=object)
            array[:] = items
            array = array.reshape(shape)
        else:
            array = draw(hnp.arrays(kind, shape))
        columns.append((fid, array))
    return columns


@st.composite
def batch_strategy(draw):
    batch = draw(st.integers(0, 5))
    keys = draw(st.none() | hnp.arrays(np.int64, (batch,)))
    columns = draw(columns_strategy(batch)) if keys is None else draw(st.just([]) | columns_strategy(batch))
    return keys, columns, batch


# -- tests ---------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_strategy())
def test_data_records_match_thriftpy2(case):
    keys, columns, batch = case
    encoded = encode_data_records(keys, KEY_ID if keys is not None else None, columns)
    assert len(encoded) == batch
    assert encoded.to_list() == thrift_bytes(keys, columns, batch)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_dtype(dtype):
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(4, 2, 3)) * 100).astype(dtype)
    keys = np.array([0, -1, (1 << 63) - 1, -(1 << 63)], dtype=np.int64)
    encoded = encode_data_records(keys, KEY_ID, [(7, values)])
    assert encoded.to_list() == thrift_bytes(keys, [(7, values)], 4)
    assert encoded.fixed_length() is not None   # numeric only: every record one length


def test_strings_str_and_bytes_and_fixed_width_arrays():
    cases = [np.array([["a", "ünï"], ["", "😀"]]), np.array([[b"x", b"\xff\x00y"], [b"", b"zz"]], dtype=object),
             np.array(["abc", "d"], dtype="U3"), np.array([b"ab", b"c"], dtype="S2")]
    for values in cases:
        encoded = encode_data_records(np.arange(len(values)), KEY_ID, [(3, values)])
        assert encoded.to_list() == thrift_bytes(np.arange(len(values)), [(3, values)], len(values))


def test_scalar_rows_and_zero_size_dims():
    for values in (np.arange(3, dtype=np.float32), np.zeros((3, 0, 2), np.int32), np.zeros((3, 4, 0), np.bool_)):
        encoded = encode_data_records(None, None, [(5, values)])
        assert encoded.to_list() == thrift_bytes(None, [(5, values)], 3)


def test_empty_batch():
    encoded = encode_data_records(np.zeros(0, np.int64), KEY_ID, [(1, np.zeros((0, 8), np.float32))])
    assert len(encoded) == 0 and encoded.nbytes == 0 and encoded.to_list() == []
    assert encode_batch_prediction_response(encoded) == serialize(
        prediction_service_thrift.BatchPredictionResponse(predictions=[]))


def test_large_batch_exported_layout():
    rng = np.random.default_rng(2)
    batch = 5000
    keys = rng.integers(-(1 << 63), (1 << 63) - 1, size=batch, dtype=np.int64)
    embeddings = rng.normal(size=(batch, 16)).astype(np.float32)
    extra = rng.integers(0, 255, size=(batch, 3), dtype=np.uint8)
    columns = [(feature_id("output"), embeddings), (feature_id("extra"), extra)]
    encoded = encode_data_records(keys, KEY_ID, columns)
    assert encoded.to_list() == thrift_bytes(keys, columns, batch)


def test_names_are_hashed_and_duplicates_refused():
    values = np.ones((2, 3), np.float32)
    by_name = encode_data_records(np.arange(2), "meta.user_id", {"output": values})
    by_id = encode_data_records(np.arange(2), KEY_ID, {feature_id("output"): values})
    assert by_name.to_list() == by_id.to_list()
    with pytest.raises(ValueError, match="more than once"):
        encode_data_records(None, None, [("output", values), (feature_id("output"), values)])
    with pytest.raises(ValueError, match="more than once"):
        encode_continuous_records([1, 1], np.zeros((1, 2)))


def test_big_endian_input_is_written_little_endian():
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    assert encode_data_records(None, None, [(1, values)]).to_list() == \
        encode_data_records(None, None, [(1, values.astype("<f4"))]).to_list()


def test_clear_errors():
    with pytest.raises(ValueError, match="dim 0 is 3, expected 2"):
        encode_data_records(np.arange(2), KEY_ID, [(1, np.zeros((3, 1)))])
    with pytest.raises(TypeError, match="unsupported dtype complex128"):
        encode_data_records(None, None, [(1, np.zeros((2, 1), complex))])
    with pytest.raises(TypeError, match="1-D integer array"):
        encode_data_records(np.zeros(2), KEY_ID, [])
    with pytest.raises(ValueError, match="key_feature_id is required"):
        encode_data_records(np.arange(2), None, [])
    with pytest.raises(ValueError, match="nothing to encode"):
        encode_data_records(None, None, [])
    with pytest.raises(ValueError, match="2 feature ids but values have 3 columns"):
        encode_continuous_records([1, 2], np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        encode_continuous_records([1], np.zeros((4, 1), np.int32))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 6).flatmap(lambda b: st.tuples(
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=5, unique=True),
    st.sampled_from([np.float32, np.float64]), st.just(b))))
def test_continuous_records_match_thriftpy2(case):
    ids, dtype, batch = case
    values = np.random.default_rng(batch).normal(size=(batch, len(ids))).astype(dtype)
    if values.size:
        values.flat[0] = np.nan
    encoded = encode_continuous_records(ids, values)
    want = []
    for row in values:
        record = data_thrift.DataRecord()
        if ids:
            record.continuousFeatures = {fid: float(v) for fid, v in zip(ids, row.tolist())}
        want.append(serialize(record))
    assert encoded.to_list() == want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3).flatmap(columns_strategy))
def test_tensor_record_matches_thriftpy2(columns):
    tensors = [(fid, array[0, ...]) for fid, array in columns]   # drop the batch dim: any shape, scalars too
    record = data_thrift.DataRecord(tensors={fid: thrift_tensor(np.asarray(a)) for fid, a in tensors})
    assert encode_tensor_record(tensors) == serialize(record)
    assert encode_tensor_record([]) == serialize(data_thrift.DataRecord())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_strategy())
def test_batch_prediction_response_matches_thriftpy2(case):
    keys, columns, batch = case
    encoded = encode_data_records(keys, KEY_ID if keys is not None else None, columns)
    response = prediction_service_thrift.BatchPredictionResponse(
        predictions=[thrift_record(keys, columns, i) for i in range(batch)])
    assert encode_batch_prediction_response(encoded) == serialize(response)


def test_encoded_records_helpers():
    a = encode_data_records(np.arange(4), KEY_ID, [(1, np.arange(8, dtype=np.float32).reshape(4, 2))])
    s = encode_data_records(None, None, [(2, np.array(["x", "yy", "zzz"], dtype=object))])
    assert a.fixed_length() == len(a[0]) and s.fixed_length() is None
    assert a.take(np.array([3, 1])).to_list() == [a[3], a[1]]
    assert s.take(np.array([2, 0])).to_list() == [s[2], s[0]]
    both = EncodedRecords.concat([a, s])
    assert both.to_list() == a.to_list() + s.to_list()
    assert EncodedRecords.from_list(both.to_list()).to_list() == both.to_list()
    assert a[-1] == a[3]
    with pytest.raises(IndexError):
        a[4]


# -- encode_fixed_rows: the same records, written into rows with room around them -----------------

def _has_strings(columns) -> bool:
    return any(array.dtype.kind in "USO" for _, array in columns)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_strategy(), st.integers(0, 20), st.integers(0, 9))
def test_fixed_rows_hold_the_records_between_head_and_tail(case, head, tail):
    keys, columns, batch = case
    key_id = KEY_ID if keys is not None else None
    rows = encode_fixed_rows(keys, key_id, columns, head=head, tail=tail)
    if _has_strings(columns):
        assert rows is None   # records of differing lengths: no [B, L] layout
        return
    want = thrift_bytes(keys, columns, batch)   # independent of the encoder
    assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[0] == batch and rows.flags.c_contiguous
    if batch:
        assert rows.shape[1] == head + len(want[0]) + tail
    assert [bytes(row[head:rows.shape[1] - tail]) for row in rows] == want
    assert not rows[:, :head].any() and not rows[:, rows.shape[1] - tail:].any()


def test_fixed_rows_head_from_the_record_length():
    keys = np.array([5, -6, 7], dtype=np.int64)
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    want = encode_data_records(keys, KEY_ID, [(9, values)])
    seen = []

    def head(length: int) -> bytes:
        seen.append(length)
        return b"<" + length.to_bytes(4, "little") + b">"

    rows = encode_fixed_rows(keys, KEY_ID, [(9, values)], head=head, tail=2)
    length = want.fixed_length()
    assert seen == [length] and rows.shape == (3, 6 + length + 2)
    for i, row in enumerate(rows):
        assert bytes(row) == b"<" + length.to_bytes(4, "little") + b">" + want[i] + b"\0\0"


def test_fixed_rows_empty_and_single_batches():
    for batch in (0, 1):
        keys = np.arange(batch, dtype=np.int64)
        values = np.ones((batch, 3), np.float32)
        rows = encode_fixed_rows(keys, KEY_ID, {5: values}, head=12, tail=4)
        want = encode_data_records(keys, KEY_ID, {5: values})
        length = len(encode_data_records(np.zeros(1, np.int64), KEY_ID, {5: np.ones((1, 3), np.float32)})[0])
        assert rows.shape == (batch, 12 + length + 4)
        assert [bytes(row[12:12 + length]) for row in rows] == want.to_list()


def test_fixed_rows_check_inputs_like_encode_data_records():
    with pytest.raises(ValueError, match="dim 0 is 3, expected 2"):
        encode_fixed_rows(np.arange(2), KEY_ID, [(1, np.zeros((3, 1)))])
    with pytest.raises(ValueError, match="dim 0 is 3, expected 2"):   # checked before strings give up
        encode_fixed_rows(np.arange(2), KEY_ID, [(1, np.array(["a", "b", "c"]))])
    with pytest.raises(TypeError, match="unsupported dtype complex128"):
        encode_fixed_rows(None, None, [(1, np.zeros((2, 1), complex))])
    with pytest.raises(ValueError, match="head and tail must be >= 0"):
        encode_fixed_rows(np.arange(2), KEY_ID, [], tail=-1)
    assert encode_fixed_rows(np.arange(2), KEY_ID, [(1, np.array(["a", "b"]))]) is None
