"""Truncated, corrupted and random bytes: only RecordFormatError (with path and offset), no hang,
and memory in proportion to the input, never to what a length field claims."""
import gzip
import io
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twml.decode import decode_batch_prediction_response, decode_data_record, decode_embeddings
from twml.encode import encode_batch_prediction_response, encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.io.block import BLOCK_MARKER, encode_block, iter_block_records, read_block_records
from twml.io.tfrecord import frame_tfrecords, iter_tfrecords, masked_crc32c, read_tfrecords
from twml.schema import data_thrift, serialize, tensor_thrift as tt

pytestmark = pytest.mark.timeout(120)

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RECORDS = encode_data_records(np.array([7, -8]), KEY_ID, [(EMB_ID, np.arange(8, dtype=np.float32).reshape(2, 4)),
                                                          (5, np.array([["ab", "c"], ["", "d"]], dtype=object))])
RICH = serialize(data_thrift.DataRecord(
    binaryFeatures={1, 2}, continuousFeatures={3: 1.5}, stringFeatures={4: "s"},
    sparseBinaryFeatures={5: {"x"}}, sparseContinuousFeatures={6: {"y": 2.0}}, blobFeatures={7: b"b"},
    tensors={8: tt.GeneralTensor(int64Tensor=tt.Int64Tensor(longs=[1, 2], shape=[2]))},
    sparseTensors={9: tt.SparseTensor(cooSparseTensor=tt.COOSparseTensor(
        denseShape=[4], indices=tt.Int64Tensor(longs=[1]),
        values=tt.GeneralTensor(stringTensor=tt.StringTensor(strings=["z"]))))}))
VALID_RECORDS = [RECORDS[0], RECORDS[1], RICH]


def decode_or_error(data: bytes, decoder=decode_data_record):
    """Decode; a failure must be the validator's RecordFormatError, never thriftpy2's."""
    try:
        return decoder(data, path="mem", offset=1000)
    except RecordFormatError as err:
        assert err.path == "mem" and err.offset is not None and err.offset >= 1000
        assert err.__cause__ is None, f"validator let through bytes that thriftpy2 rejected: {err}"
        return None


# -- decoder -------------------------------------------------------------------------------------

@pytest.mark.parametrize("record", VALID_RECORDS)
def test_every_truncation_is_rejected(record):
    for cut in range(len(record)):
        with pytest.raises(RecordFormatError):
            decode_data_record(record[:cut])
    with pytest.raises(RecordFormatError, match="trailing garbage"):
        decode_data_record(record + b"\x00")


@pytest.mark.parametrize("record", VALID_RECORDS)
def test_every_single_bit_flip(record):
    for i in range(len(record)):
        for bit in range(8):
            flipped = bytearray(record)
            flipped[i] ^= 1 << bit
            decode_or_error(bytes(flipped))


@settings(FAST, max_examples=1500)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    decode_or_error(data)
    decode_or_error(data, decode_batch_prediction_response)


@settings(FAST, max_examples=1000)
@given(st.sampled_from(VALID_RECORDS + [encode_batch_prediction_response(RECORDS)]),
       st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_records(record, edits):
    data = bytearray(record)
    for where, value in edits:
        data[where % len(data)] = value
    decode_or_error(bytes(data))
    decode_or_error(bytes(data), decode_batch_prediction_response)
    try:
        decode_embeddings([bytes(data)], KEY_ID, EMB_ID)
    except RecordFormatError:
        pass


def test_deep_nesting_is_refused():
    # field 99 (unknown): list<list<list<...>>> 1000 levels deep
    data = bytes([15, 0, 99]) + bytes([15, 0, 0, 0, 1]) * 1000
    with pytest.raises(RecordFormatError, match="nesting deeper"):
        decode_data_record(data)


def _huge_string_record() -> bytes:
    # blobFeatures {1: <string claiming 2^31 - 1 bytes>} followed by 100 bytes
    return bytes([13, 0, 7, 10, 11, 0, 0, 0, 1]) + struct.pack(">q", 1) + struct.pack(">i", 2 ** 31 - 1) + b"x" * 100


@pytest.mark.parametrize("data", [
    _huge_string_record(),
    bytes([14, 0, 1, 10]) + struct.pack(">i", 2 ** 31 - 1) + b"\x00" * 50,       # set count
    bytes([13, 0, 8, 10, 12]) + struct.pack(">i", 2 ** 31 - 1) + b"\x00" * 50,   # map count
    bytes([14, 0, 1, 10]) + struct.pack(">i", -1) + b"\x00",                     # negative count
])
def test_huge_length_fields_cost_nothing(data):
    tracemalloc.start()
    try:
        with pytest.raises(RecordFormatError, match="left|negative") as err:
            decode_data_record(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.__cause__ is None     # stopped before thriftpy2 saw it
    assert peak < 64 * 1024, peak


# -- TFRecord reader -----------------------------------------------------------------------------

FRAMED = frame_tfrecords(RECORDS).tobytes()


def read_tf_or_error(data: bytes):
    try:
        return list(iter_tfrecords(io.BytesIO(data), path="t.tfrecord"))
    except RecordFormatError as err:
        assert err.path == "t.tfrecord" and 0 <= err.offset <= len(data)
        return None


def test_tfrecord_every_truncation_and_bit_flip():
    boundaries = set(np.cumsum(RECORDS.lengths + 16).tolist())   # a cut there is a valid shorter file
    for cut in sorted(set(range(1, len(FRAMED))) - boundaries):
        with pytest.raises(RecordFormatError, match="truncated"):
            list(iter_tfrecords(io.BytesIO(FRAMED[:cut])))
    for i in range(len(FRAMED)):
        for bit in (0, 3, 7):
            flipped = bytearray(FRAMED)
            flipped[i] ^= 1 << bit
            with pytest.raises(RecordFormatError):   # a crc catches every single-bit error
                list(iter_tfrecords(io.BytesIO(bytes(flipped))))


@settings(FAST, max_examples=500)
@given(st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: FRAMED[:60] + b))
def test_tfrecord_random_bytes(data):
    read_tf_or_error(data)


def _claims_2_to_40(body: bytes) -> bytes:
    length = struct.pack("<Q", 1 << 40)
    return length + struct.pack("<I", masked_crc32c(length)) + body


def test_tfrecord_length_of_2_to_40_with_a_valid_crc(tmp_path):
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(_claims_2_to_40(b"\x01" * 200_000))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(RecordFormatError, match="truncated TFRecord of 1099511627776 bytes") as err:
            list(read_tfrecords(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.path == str(path) and err.value.offset == 12
    assert peak < 3 * size, (peak, size)


def test_tfrecord_corrupt_gzip(tmp_path):
    data = gzip.compress(FRAMED)
    for name, content in (("cut.gz", data[:len(data) // 2]), ("flip.gz", data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]),
                          ("notgzip.gz", FRAMED)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RecordFormatError) as err:
            list(read_tfrecords(path))
        assert err.value.path == str(path) and err.value.offset is not None


# -- block reader --------------------------------------------------------------------------------

BLOCKS = encode_block(RECORDS.to_list()) + encode_block([RICH])


def read_blocks_or_error(data: bytes):
    try:
        return list(iter_block_records(io.BytesIO(data), path="b"))
    except RecordFormatError as err:
        assert err.path == "b" and 0 <= err.offset <= len(data)
        return None


def test_block_every_truncation_and_bit_flip():
    for cut in set(range(1, len(BLOCKS))) - {len(encode_block(RECORDS.to_list()))}:
        with pytest.raises(RecordFormatError):
            list(iter_block_records(io.BytesIO(BLOCKS[:cut])))
    for i in range(len(BLOCKS)):
        for bit in range(8):
            flipped = bytearray(BLOCKS)
            flipped[i] ^= 1 << bit
            read_blocks_or_error(bytes(flipped))


@settings(FAST, max_examples=500)
@given(st.binary(max_size=300) | st.binary(max_size=60).map(lambda b: BLOCK_MARKER + b))
def test_block_random_bytes(data):
    read_blocks_or_error(data)


@settings(FAST, max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
def test_block_mutations(edits):
    data = bytearray(BLOCKS)
    for where, value in edits:
        data[where % len(data)] = value
    read_blocks_or_error(bytes(data))


def test_block_size_field_near_2_to_31(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(BLOCK_MARKER + struct.pack("<I", 2 ** 31 - 1) + b"\x01" * 200_000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(RecordFormatError, match="truncated block of 2147483647 bytes") as err:
            list(read_block_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.offset == 20
    assert peak < 3 * size, (peak, size)
    with pytest.raises(RecordFormatError, match="over the 2147483647"):
        list(iter_block_records(io.BytesIO(BLOCK_MARKER + struct.pack("<I", 2 ** 31))))


def test_runs_of_empty_structs_are_refused():
    n = 100_000   # 100k empty DataRecords in a response: thriftpy2 would build ~160x the input in objects
    data = bytes([15, 0, 1, 12]) + struct.pack(">i", n) + b"\x00" * n + b"\x00"
    with pytest.raises(RecordFormatError, match="more than one struct per 4 bytes"):
        decode_batch_prediction_response(data)
    few = bytes([15, 0, 1, 12]) + struct.pack(">i", 10) + b"\x00" * 10 + b"\x00"
    assert len(decode_batch_prediction_response(few).predictions) == 10


# -- the native column decoder (twml.decode_columns) -----------------------------------------------

from transforms.inputs.datarecord import (CONTINUOUS, SPARSE_BINARY, DataRecordSource,  # noqa: E402
                                          FeatureColumn, records_to_table, records_to_table_slow)
from twml import decode_columns  # noqa: E402

NATIVE_SOURCE = DataRecordSource("tfrecord", "key", KEY_ID, (
    FeatureColumn("dense", CONTINUOUS, (3,), default=0.0), FeatureColumn("ids", SPARSE_BINARY, (5,))))
PLAIN = serialize(data_thrift.DataRecord(continuousFeatures={3: 1.5}, discreteFeatures={KEY_ID: 4},
                                         sparseBinaryFeatures={5: {"x", "yz"}}, binaryFeatures={1}))


def _native_flags(records):
    buf, offsets = decode_columns.pack_records(records)
    return decode_columns.extract_columns(buf, offsets, [3], [KEY_ID], [5]).flagged


def _same_as_one_by_one(records):
    fast, fast_bad = records_to_table(records, NATIVE_SOURCE, "mem")
    slow, slow_bad = records_to_table_slow(records, NATIVE_SOURCE, "mem")
    assert fast.schema == slow.schema and fast_bad == slow_bad
    for name in fast.column_names:            # floats by their bits: a flip may make a NaN
        assert _bits(fast.column(name).to_pylist()) == _bits(slow.column(name).to_pylist()), name


def _bits(value):
    if isinstance(value, float):
        return struct.pack("<d", value)
    return [_bits(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("record", VALID_RECORDS + [PLAIN])
def test_native_decoder_every_truncation_and_bit_flip(record):
    cuts = [record[:cut] for cut in range(len(record))] + [record + b"\x00"]
    assert _native_flags(cuts).all()          # each is an invalid record: never read natively
    flips = []
    for i in range(len(record)):
        for bit in range(8):
            flipped = bytearray(record)
            flipped[i] ^= 1 << bit
            flips.append(bytes(flipped))
    for i in np.flatnonzero(~_native_flags(flips)):
        decode_data_record(flips[i])          # what the kernel reads, the validator accepts
    _same_as_one_by_one(cuts)
    _same_as_one_by_one(flips)


@pytest.mark.parametrize("data", [
    _huge_string_record(),
    bytes([14, 0, 1, 10]) + struct.pack(">i", 2 ** 31 - 1) + b"\x00" * 50,
    bytes([13, 0, 8, 10, 12]) + struct.pack(">i", 2 ** 31 - 1) + b"\x00" * 50,
    bytes([13, 0, 5, 10, 14, 0, 0, 0, 1]) + struct.pack(">qbi", 5, 11, 2 ** 31 - 1) + b"\x00" * 50,
    bytes([15, 0, 99]) + bytes([15, 0, 0, 0, 1]) * 1000,                          # 1000 levels deep
    bytes([12, 0, 99]) + bytes([12, 0, 1]) * 100_000,                              # deep unknown structs
])
def test_native_decoder_flags_hostile_records_at_no_cost(data):
    _native_flags([PLAIN])                    # compiled before measuring
    tracemalloc.start()
    try:
        assert _native_flags([data] * 8).all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 + 8 * len(data), peak
