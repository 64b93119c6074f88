"""The native DataRecord column decoder (``twml.decode_columns``) against the one-by-one decoder.

``records_to_table`` (kernel, with flagged records sent one by one through
``decode_data_record``) must give the same table, rejects and messages as
``records_to_table_slow`` (every record through ``decode_data_record``), floats compared bit for
bit (NaN included). Records come from thriftpy2 and from a raw writer that produces what
thriftpy2 cannot: repeated map keys, repeated fields, sets with repeated strings, unknown fields,
deep nesting, trailing bytes.
"""
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.inputs.datarecord import (CONTINUOUS, DISCRETE, SPARSE_BINARY, DataRecordSource,
                                          FeatureColumn, records_to_table, records_to_table_slow)
from twml import decode_columns
from twml.decode import MAX_DEPTH
from twml.schema import data_thrift, serialize, tensor_thrift as tt

pytestmark = pytest.mark.timeout(300)

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IDS = [0, 1, 2, 5, 7, -3, 2 ** 62, -2 ** 63, 2 ** 63 - 1]


def canonical(value):
    """A comparable form of a table cell: floats by their bits (NaN == NaN of the same bits)."""
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, list):
        return tuple(canonical(v) for v in value)
    return value


def assert_same(records, source, path="f.tfrecord", first_index=0):
    assert decode_columns.native_ready()
    fast, fast_bad = records_to_table(records, source, path, first_index)
    slow, slow_bad = records_to_table_slow(records, source, path, first_index)
    assert fast.schema == slow.schema
    assert fast_bad == slow_bad
    assert fast.num_rows == slow.num_rows
    for name in fast.column_names:
        assert [canonical(v) for v in fast.column(name).to_pylist()] == \
            [canonical(v) for v in slow.column(name).to_pylist()], name
    return fast, fast_bad


def flagged(records, source_ids=((), (), ())):
    buf, offsets = decode_columns.pack_records(records)
    return decode_columns.extract_columns(buf, offsets, *(np.array(ids, dtype=np.int64) for ids in source_ids)).flagged


# -- a raw Thrift writer (what thriftpy2 will not write) -------------------------------------------

def field(ttype: int, fid: int, payload: bytes) -> bytes:
    return struct.pack(">bh", ttype, fid) + payload


def string(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def continuous_map(pairs) -> bytes:
    return struct.pack(">bbi", 10, 4, len(pairs)) + b"".join(struct.pack(">qd", k, v) for k, v in pairs)


def discrete_map(pairs) -> bytes:
    return struct.pack(">bbi", 10, 10, len(pairs)) + b"".join(struct.pack(">qq", k, v) for k, v in pairs)


def sparse_map(pairs) -> bytes:
    return struct.pack(">bbi", 10, 14, len(pairs)) + b"".join(
        struct.pack(">qbi", k, 11, len(strings)) + b"".join(map(string, strings)) for k, strings in pairs)


def nested_lists(depth: int) -> bytes:
    """A list<list<...<i32>>> value ``depth`` lists deep."""
    inner = struct.pack(">bi", 8, 1) + b"\x00\x00\x00\x07"
    for _ in range(depth - 1):
        inner = struct.pack(">bi", 15, 1) + inner
    return inner


# -- strategies ------------------------------------------------------------------------------------

ids = st.sampled_from(IDS)
doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [struct.unpack(">d", bytes.fromhex(h))[0] for h in ("7ff0000000000001", "fff8000000000000", "8000000000000000")])
int64s = st.integers(-2 ** 63, 2 ** 63 - 1)
strings = st.binary(max_size=12) | st.text(max_size=6).map(lambda s: s.encode("utf-8"))
string_sets = st.lists(strings, max_size=6)


@st.composite
def raw_records(draw) -> bytes:
    """A DataRecord written field by field: maps may repeat keys, sets repeat strings, fields repeat
    or come in any order, unknown fields and the other known fields appear."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["cont", "disc", "sparse", "binary", "strings", "unknown", "sparse_cont"]))
        if kind == "cont":
            parts.append(field(13, 2, continuous_map(draw(st.lists(st.tuples(ids, doubles), max_size=8)))))
        elif kind == "disc":
            parts.append(field(13, 3, discrete_map(draw(st.lists(st.tuples(ids, int64s), max_size=8)))))
        elif kind == "sparse":
            parts.append(field(13, 5, sparse_map(draw(st.lists(st.tuples(ids, string_sets), max_size=4)))))
        elif kind == "binary":
            values = draw(st.lists(int64s, max_size=4))
            packed = b"".join(struct.pack(">q", v) for v in values)
            parts.append(field(14, 1, struct.pack(">bi", 10, len(values)) + packed))
        elif kind == "strings":
            pairs = draw(st.lists(st.tuples(ids, strings), max_size=3))
            parts.append(field(13, draw(st.sampled_from([4, 7])), struct.pack(">bbi", 10, 11, len(pairs))
                               + b"".join(struct.pack(">q", k) + string(s) for k, s in pairs)))
        elif kind == "sparse_cont":
            pairs = draw(st.lists(st.tuples(ids, st.lists(st.tuples(strings, doubles), max_size=3)), max_size=3))
            parts.append(field(13, 6, struct.pack(">bbi", 10, 13, len(pairs)) + b"".join(
                struct.pack(">qbbi", k, 11, 4, len(inner))
                + b"".join(string(s) + struct.pack(">d", d) for s, d in inner)
                for k, inner in pairs)))
        else:
            depth = draw(st.integers(1, MAX_DEPTH + 2))
            parts.append(field(15, draw(st.sampled_from([10, 99, -4])), nested_lists(depth)))
    return b"".join(parts) + b"\x00"


@st.composite
def thrift_records(draw) -> bytes:
    record = data_thrift.DataRecord(
        continuousFeatures=draw(st.none() | st.dictionaries(ids, doubles, max_size=6)),
        discreteFeatures=draw(st.none() | st.dictionaries(ids, int64s, max_size=6)),
        sparseBinaryFeatures=draw(st.none() | st.dictionaries(ids, st.sets(strings, max_size=5), max_size=4)),
        binaryFeatures=draw(st.none() | st.sets(int64s, max_size=3)),
        stringFeatures=draw(st.none() | st.dictionaries(ids, st.text(max_size=4), max_size=2)),
        tensors=draw(st.none() | st.just({}) | st.just(
            {3: tt.GeneralTensor(int64Tensor=tt.Int64Tensor(longs=[1, 2], shape=[2]))})))
    return serialize(record)


def damaged(data: bytes, edits, cut) -> bytes:
    buf = bytearray(data)
    for where, value in edits:
        if buf:
            buf[where % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


@st.composite
def sources(draw) -> DataRecordSource:
    columns = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([CONTINUOUS, DISCRETE, SPARSE_BINARY]))
        fids = tuple(draw(st.lists(ids, min_size=1, max_size=4)))
        scalar = kind != SPARSE_BINARY and len(fids) == 1 and draw(st.booleans())
        default = None
        if kind == CONTINUOUS:
            default = draw(st.none() | doubles | st.integers(-5, 5))
        elif kind == DISCRETE:
            default = draw(st.none() | int64s)
        columns.append(FeatureColumn(f"c{i}", kind, fids, scalar, default))
    return DataRecordSource("tfrecord", "key", draw(ids), tuple(columns), 64)


# -- properties -------------------------------------------------------------------------------------

@PROPERTY
@given(st.lists(thrift_records() | raw_records(), max_size=12), sources(), st.integers(0, 10 ** 6))
def test_same_table_as_the_one_by_one_decoder(records, source, first_index):
    assert_same(records, source, first_index=first_index)


@PROPERTY
@given(st.lists(st.tuples(thrift_records() | raw_records(),
                          st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=3),
                          st.none() | st.integers(0, 200)), max_size=8), sources())
def test_damaged_records_same_table_rejects_and_messages(items, source):
    assert_same([damaged(*item) for item in items], source)


@PROPERTY
@given(st.lists(thrift_records(), min_size=1, max_size=8))
def test_thriftpy2_records_take_the_native_path(records):
    """Records thriftpy2 writes (no non-empty tensors) are never flagged: the fast path is used."""
    plain = [r for r in records if b"\x0d\x00\x08\x0a\x0c\x00\x00\x00\x01" not in r]
    assert not flagged(plain, (IDS, IDS, sorted(IDS))).any()


# -- cases ------------------------------------------------------------------------------------------

SOURCE = DataRecordSource("tfrecord", "key", 7, (
    FeatureColumn("dense", CONTINUOUS, (1, 2, 1), default=0.5),
    FeatureColumn("score", CONTINUOUS, (2,), scalar=True),
    FeatureColumn("cat", DISCRETE, (5,), scalar=True, default=-1),
    FeatureColumn("ids", SPARSE_BINARY, (5, 0)),
    FeatureColumn("more", SPARSE_BINARY, (0,))))


def test_repeated_keys_keep_the_last_value_and_repeated_strings_all_count():
    record = (field(13, 2, continuous_map([(1, 1.0), (2, 2.0), (1, 3.0)]))
              + field(13, 3, discrete_map([(7, 70), (5, 1), (7, 71)]))
              + field(13, 5, sparse_map([(5, [b"a", b"b"]), (0, [b"x", b"x", b"\xff"]), (5, [b"c", b"c"])]))
              + b"\x00")
    assert not flagged([record], ((1, 2), (5, 7), (0, 5))).any()
    table, bad = assert_same([record], SOURCE)
    assert not bad
    row = table.to_pylist()[0]
    assert row["key"] == 71 and row["dense"] == [3.0, 2.0, 3.0] and row["score"] == 2.0 and row["cat"] == 1
    assert len(row["ids"]) == 5 and len(row["more"]) == 3    # c, c, x, x, \xff: nothing collapses
    assert row["ids"] == sorted(row["ids"])


def test_records_the_kernel_flags_are_decoded_one_by_one():
    good = serialize(data_thrift.DataRecord(continuousFeatures={1: 1.0}, discreteFeatures={7: 1}))
    repeated_field = field(13, 2, continuous_map([(1, 1.0)])) + field(13, 2, continuous_map([(2, 2.0)])) + b"\x00"
    tensors = serialize(data_thrift.DataRecord(discreteFeatures={7: 2}, tensors={
        1: tt.GeneralTensor(int64Tensor=tt.Int64Tensor(longs=[1], shape=[1]))}))
    # a GeneralTensor holding a RawTypedTensor without its required fields
    bad_tensor = field(13, 8, struct.pack(">bbi", 10, 12, 1) + struct.pack(">q", 1) + b"\x0c\x00\x01\x00\x00") + b"\x00"
    too_deep = field(15, 99, nested_lists(MAX_DEPTH + 1)) + b"\x00"
    deep_ok = field(15, 99, nested_lists(MAX_DEPTH - 1)) + b"\x00"
    wrong_type = field(13, 2, struct.pack(">bbi", 10, 10, 0)) + b"\x00"
    records = [good, repeated_field, tensors, bad_tensor, too_deep, deep_ok, wrong_type, good + b"\x00", b"",
               good[:-1], b"\x02\x00\x63\x01\x00", b"\x13\x00\x01\x00"]
    assert list(flagged(records, ((1, 2), (7,), ()))) == [False, True, True, True, True, False, True, True, True,
                                                          True, False, True]
    table, bad = assert_same(records, SOURCE, first_index=100)
    assert table.column("record_index").to_pylist() == [100, 101, 102, 105, 110]
    assert [i for i, _ in bad] == [103, 104, 106, 107, 108, 109, 111]
    assert "lacks required field" in dict(bad)[103] and "nesting deeper" in dict(bad)[104]


def test_an_empty_batch_and_an_all_bad_batch():
    assert assert_same([], SOURCE)[0].num_rows == 0
    table, bad = assert_same([b"\xff", b""], SOURCE)
    assert table.num_rows == 0 and len(bad) == 2


def test_length_fields_claiming_more_than_the_input_are_flagged_fast():
    huge = [field(13, 2, struct.pack(">bbi", 10, 4, 2 ** 31 - 1)) + b"\x00",
            field(13, 5, struct.pack(">bbi", 10, 14, 1) + struct.pack(">qbi", 5, 11, 2 ** 31 - 1)) + b"\x00",
            field(11, 40, struct.pack(">i", -1)) + b"\x00",
            field(12, 40, b"\x0c\x00\x01" * 5000) + b"\x00"]
    assert flagged(huge, ((1,), (7,), (5,))).all()
    assert_same(huge, SOURCE)


def test_sources_the_kernel_does_not_model_use_the_slow_path():
    record = serialize(data_thrift.DataRecord(discreteFeatures={7: 1}))
    bool_default = DataRecordSource("tfrecord", "key", 7, (FeatureColumn("c", DISCRETE, (5,), True, True),))
    with pytest.raises(pa.ArrowTypeError):        # what the one-by-one path does with it, unchanged
        records_to_table([record], bool_default)
    list_ids = DataRecordSource("tfrecord", "key", 7, (FeatureColumn("c", CONTINUOUS, [5], True, 1.5),))
    assert records_to_table([record], list_ids)[0].column("c").to_pylist() == [1.5]


def test_kernel_output_layout_and_sparse_ids():
    record = serialize(data_thrift.DataRecord(continuousFeatures={4: 2.5, 9: -1.0},
                                              sparseBinaryFeatures={3: {"ab", "é"}}))
    buf, offsets = decode_columns.pack_records([record, record])
    got = decode_columns.extract_columns(buf, offsets, np.array([9, 4, 9, 8]), np.array([], np.int64),
                                         np.array([3]))
    assert got.continuous.tolist() == [[-1.0, 2.5, -1.0, 0.0]] * 2
    assert got.continuous_present.tolist() == [[True, True, True, False]] * 2
    offs, hashed = decode_columns.sparse_binary_column(buf, got, np.array([0]), np.array([3]), np.array([1]))
    expected = sorted([3 ^ (31 * 97 + 98), 3 ^ (31 * 0xC3 + 0xA9)])
    assert offs.tolist() == [0, 2] and hashed.tolist() == expected


def test_without_the_kernel_every_record_is_decoded_one_by_one(monkeypatch):
    records = [serialize(data_thrift.DataRecord(continuousFeatures={1: 1.0}, discreteFeatures={7: 1})), b"\x01"]
    expected = records_to_table_slow(records, SOURCE, "f")
    monkeypatch.setattr(decode_columns, "AVAILABLE", False)
    assert not decode_columns.native_ready()
    with pytest.raises(RuntimeError, match="unavailable"):
        decode_columns.extract_columns(*decode_columns.pack_records(records), [1], [7], [])
    table, bad = records_to_table(records, SOURCE, "f")
    assert table.equals(expected[0]) and bad == expected[1]


def test_offsets_outside_the_buffer_are_refused():
    buf, offsets = decode_columns.pack_records([b"\x00", b"\x00"])
    with pytest.raises(ValueError, match="offsets"):
        decode_columns.extract_columns(buf, offsets + 1, [], [], [])
