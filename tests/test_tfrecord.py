"""TFRecord framing and files, checked against a pure-Python crc32c and against TensorFlow itself."""
import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from twml.decode import decode_embeddings
from twml.encode import EncodedRecords, encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.io import crc32c_batch
from twml.io.tfrecord import (TFRecordWriter, encode_tfrecord_frames, encode_tfrecords, frame_tfrecords,
                              iter_tfrecords, masked_crc32c, read_tfrecords)

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def pure_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def pure_masked(data: bytes) -> int:
    crc = pure_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def pure_frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", pure_masked(length)) + record + struct.pack("<I", pure_masked(record))


def make_records(batch=50, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(-(1 << 63), (1 << 63) - 1, size=batch, dtype=np.int64)
    emb = rng.normal(size=(batch, dim)).astype(np.float32)
    return keys, emb, encode_data_records(keys, KEY_ID, [(EMB_ID, emb)])


def test_crc_known_answers():
    assert pure_crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == pure_masked(data)


def test_frame_fixed_and_variable_lengths():
    _, _, fixed = make_records(20)
    assert frame_tfrecords(fixed).tobytes() == b"".join(pure_frame(r) for r in fixed)
    variable = encode_data_records(None, None, [(1, np.array(["", "a", "bb", "a"] * 3, dtype=object))])
    assert variable.fixed_length() is None
    assert frame_tfrecords(variable).tobytes() == b"".join(pure_frame(r) for r in variable)
    empty = EncodedRecords.from_list([])
    assert frame_tfrecords(empty).size == 0


def test_writer_on_file_object_counts_and_leaves_it_open():
    _, _, records = make_records(30)
    buffer = io.BytesIO()
    writer = TFRecordWriter(buffer)
    writer.write_records(records.take(np.arange(10)))
    writer.write(records[10])
    writer.write_records(records.take(np.arange(11, 30)))
    writer.close()
    writer.close()
    assert not buffer.closed
    assert writer.records == 30 and writer.bytes_written == records.nbytes + 16 * 30 == len(buffer.getvalue())
    assert buffer.getvalue() == b"".join(pure_frame(r) for r in records)
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
    buffer.seek(0)
    assert list(iter_tfrecords(buffer)) == records.to_list()


@pytest.mark.parametrize("name,compression", [("part-00000-of-00002.tfrecord", None),
                                              ("part-00001-of-00002.tfrecord.gz", None),
                                              ("no-suffix-but-gzip", "gzip")])
def test_files_read_back_by_tensorflow_and_by_us(tmp_path, name, compression):
    import tensorflow as tf
    keys, emb, records = make_records(300, 16)
    path = tmp_path / name
    with TFRecordWriter(path, compression=compression) as writer:
        writer.write_records(records)
    gzipped = path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzipped == (compression == "gzip" or name.endswith(".gz"))
    dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP" if gzipped else "")
    from_tf = [t.numpy() for t in dataset]
    assert from_tf == records.to_list()
    got_keys, got_emb = decode_embeddings(from_tf, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    assert got_emb.tobytes() == emb.tobytes()
    assert list(read_tfrecords(path)) == records.to_list()   # gzip found by suffix or magic


def test_we_read_what_tensorflow_writes(tmp_path):
    import tensorflow as tf
    _, _, records = make_records(40)
    for name, options in (("tf.tfrecord", None), ("tf.tfrecord.gz", "GZIP")):
        path = str(tmp_path / name)
        with tf.io.TFRecordWriter(path, options) as writer:
            for record in records:
                writer.write(record)
        assert list(read_tfrecords(path)) == records.to_list()


def test_empty_file_and_big_records(tmp_path):
    path = tmp_path / "empty.tfrecord"
    TFRecordWriter(path).close()
    assert path.read_bytes() == b"" and list(read_tfrecords(path)) == []
    big = bytes(np.random.default_rng(3).integers(0, 256, size=300_000, dtype=np.uint8))  # read in chunks
    path = tmp_path / "big.tfrecord.gz"
    with TFRecordWriter(path) as writer:
        writer.write(big)
        writer.write(b"")
    assert list(read_tfrecords(path)) == [big, b""]


def test_crc_errors_name_path_and_offset(tmp_path):
    _, _, records = make_records(3)
    data = bytearray(frame_tfrecords(records).tobytes())
    frame = len(records[0]) + 16
    data[frame + 20] ^= 0x01   # a data byte of record 1
    with pytest.raises(RecordFormatError, match="data crc mismatch") as err:
        list(iter_tfrecords(io.BytesIO(bytes(data)), path="x.tfrecord"))
    assert err.value.path == "x.tfrecord" and err.value.offset == frame
    assert len(list(iter_tfrecords(io.BytesIO(bytes(data)), check_crc=False))) == 3
    data[frame + 20] ^= 0x01
    data[2 * frame + 3] ^= 0x40  # the length of record 2
    with pytest.raises(RecordFormatError, match="crc of the length field") as err:
        list(iter_tfrecords(io.BytesIO(bytes(data))))
    assert err.value.offset == 2 * frame
    path = tmp_path / "cut.tfrecord.gz"
    path.write_bytes(gzip.compress(bytes(data[:frame + 5])))
    with pytest.raises(RecordFormatError, match="truncated TFRecord header") as err:
        list(read_tfrecords(path))
    assert err.value.path == str(path) and err.value.offset == frame


# -- encode_tfrecords: encoding and framing in one pass -------------------------------------------

NUMERIC = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_]


@st.composite
def batches(draw):
    batch = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 9]))
    keys = draw(st.none() | hnp.arrays(np.int64, (batch,)))
    columns = []
    for fid in draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=0 if keys is not None else 1,
                             max_size=3, unique=True)):
        row_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4))
        kind = draw(st.sampled_from(NUMERIC + ["str"]))
        if kind == "str":   # strings: records of differing lengths, the per-record path
            items = draw(st.lists(st.text(max_size=4), min_size=batch * int(np.prod(row_shape)),
                                  max_size=batch * int(np.prod(row_shape))))
            array = np.array(items, dtype=object).reshape((batch,) + row_shape)
        else:
            array = draw(hnp.arrays(kind, (batch,) + row_shape))
        columns.append((fid, array))
    return keys, columns


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_encode_tfrecords_equals_encode_then_frame(case):
    keys, columns = case
    key_id = KEY_ID if keys is not None else None
    records = encode_data_records(keys, key_id, columns)
    framed = encode_tfrecords(keys, key_id, columns)
    assert framed.dtype == np.uint8 and framed.ndim == 1
    assert framed.tobytes() == frame_tfrecords(records).tobytes() == b"".join(map(pure_frame, records))
    # The same frames with their bounds: frame i is record i framed, whichever path encoded them.
    frames = encode_tfrecord_frames(keys, key_id, columns)
    assert frames.buffer.tobytes() == framed.tobytes() and len(frames) == len(records)
    assert list(frames) == [pure_frame(r) for r in records]


def test_encode_tfrecords_exported_layout_and_mapping_input():
    keys, emb, records = make_records(4096, 128)
    framed = encode_tfrecords(keys, KEY_ID, {EMB_ID: emb})
    assert framed.size == records.nbytes + 16 * 4096
    assert framed.tobytes() == b"".join(pure_frame(r) for r in records)
    strings = np.array(["a", "bcd", ""], dtype=object)   # a generator of columns is read once only
    assert encode_tfrecords(None, None, ((7, a) for a in [strings])).tobytes() == \
        b"".join(pure_frame(r) for r in encode_data_records(None, None, [(7, strings)]))


def test_encode_tfrecords_on_the_google_crc32c_fallback(monkeypatch):
    keys, emb, records = make_records(37, 5)
    monkeypatch.setattr(crc32c_batch, "_KERNEL", None)
    monkeypatch.setattr(crc32c_batch, "_FOOTER_KERNEL", None)
    want = b"".join(pure_frame(r) for r in records)
    assert encode_tfrecords(keys, KEY_ID, [(EMB_ID, emb)]).tobytes() == want
    assert frame_tfrecords(records).tobytes() == want


def test_encode_tfrecords_errors_are_the_encoders():
    with pytest.raises(ValueError, match="dim 0 is 3, expected 2"):
        encode_tfrecords(np.arange(2), KEY_ID, [(EMB_ID, np.zeros((3, 1), np.float32))])


def test_write_framed_counts_and_refuses_mismatched_counts():
    keys, emb, records = make_records(30)
    buffer = io.BytesIO()
    with TFRecordWriter(buffer) as writer:
        writer.write_framed(encode_tfrecords(keys[:10], KEY_ID, [(EMB_ID, emb[:10])]), 10)
        writer.write_records(records.take(np.arange(10, 20)))
        writer.write_framed(encode_tfrecords(keys[20:], KEY_ID, [(EMB_ID, emb[20:])]), 10)
        writer.write_framed(encode_tfrecords(keys[:0], KEY_ID, [(EMB_ID, emb[:0])]), 0)
        assert writer.records == 30 and writer.bytes_written == records.nbytes + 16 * 30
        with pytest.raises(ValueError, match="cannot hold exactly 3 TFRecord frames"):
            writer.write_framed(np.zeros(40, np.uint8), 3)
        with pytest.raises(ValueError, match="cannot hold exactly 0"):
            writer.write_framed(np.zeros(16, np.uint8), 0)
        with pytest.raises(ValueError, match="1-D uint8"):
            writer.write_framed(np.zeros((2, 16), np.uint8), 2)
    assert buffer.getvalue() == b"".join(pure_frame(r) for r in records)
    with pytest.raises(ValueError, match="closed"):
        writer.write_framed(np.zeros(0, np.uint8), 0)


@pytest.mark.parametrize("name", ["fused.tfrecord", "fused.tfrecord.gz"])
def test_tensorflow_reads_a_file_written_from_encode_tfrecords(tmp_path, name):
    import tensorflow as tf
    keys, emb, records = make_records(500, 16, seed=4)
    path = tmp_path / name
    with TFRecordWriter(path) as writer:
        for start in range(0, 500, 128):
            part = slice(start, start + 128)
            writer.write_framed(encode_tfrecords(keys[part], KEY_ID, [(EMB_ID, emb[part])]), len(keys[part]))
    dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP" if name.endswith(".gz") else "")
    from_tf = [t.numpy() for t in dataset]   # TensorFlow checks both crcs of every frame
    assert from_tf == records.to_list()
    got_keys, got_emb = decode_embeddings(from_tf, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    assert got_emb.tobytes() == emb.tobytes()
