"""Elephant-bird block files: our reader, and an independent parse of the bytes as libtwml reads them."""
import gzip
import io

import numpy as np
import pytest

from twml.decode import decode_embeddings
from twml.encode import encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id
from twml.io.block import BlockWriter, encode_block, iter_block_records, read_block_records

MARKER = bytes.fromhex("29d8d50658cd4c29b2bc57992171bdff")   # docs/FORMAT.md section 2
KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")


def _varint(data: bytes, pos: int):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse_like_libtwml(data: bytes):
    """Blocks as (version, class name, [blobs]); fields must come in libtwml's order, one-byte tags."""
    blocks, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 16] == MARKER
        size = int.from_bytes(data[pos + 16:pos + 20], "little")
        payload = data[pos + 20:pos + 20 + size]
        assert len(payload) == size
        pos += 20 + size
        assert payload[0] == 0x08                  # field 1, varint
        version, p = _varint(payload, 1)
        assert payload[p] == 0x12                  # field 2, length-delimited
        n, p = _varint(payload, p + 1)
        name, p = payload[p:p + n].decode(), p + n
        blobs = []
        while p < size:
            assert payload[p] == 0x1A              # field 3, length-delimited
            n, p = _varint(payload, p + 1)
            blobs.append(payload[p:p + n])
            p += n
        blocks.append((version, name, blobs))
    return blocks


def make_records(batch, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(-(1 << 63), (1 << 63) - 1, size=batch, dtype=np.int64)
    emb = rng.normal(size=(batch, dim)).astype(np.float32)
    return keys, emb, encode_data_records(keys, KEY_ID, [(EMB_ID, emb)])


def test_blocks_of_100_parse_independently():
    keys, emb, records = make_records(250)
    buffer = io.BytesIO()
    with BlockWriter(buffer) as writer:
        writer.write_records(records)
    assert not buffer.closed
    assert (writer.records, writer.blocks, writer.bytes_written) == (250, 3, len(buffer.getvalue()))
    blocks = parse_like_libtwml(buffer.getvalue())
    assert [len(b[2]) for b in blocks] == [100, 100, 50]
    assert all(v == 1 and n == "com.twitter.ml.api.DataRecord" for v, n, _ in blocks)
    assert [blob for b in blocks for blob in b[2]] == records.to_list()
    buffer.seek(0)
    got = list(iter_block_records(buffer))
    assert got == records.to_list()
    got_keys, got_emb = decode_embeddings(got, KEY_ID, EMB_ID)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_emb, emb)


def test_write_and_write_records_mix_and_flush():
    _, _, records = make_records(23)
    items = records.to_list()
    buffer = io.BytesIO()
    writer = BlockWriter(buffer, records_per_block=5)
    writer.write(items[0])
    writer.write_records(records.take(np.arange(1, 13)))   # tops up the pending block, then full blocks
    assert writer.blocks == 2 and writer.records == 10
    writer.flush()                                          # a partial block of 3
    assert writer.blocks == 3 and writer.records == 13
    for item in items[13:]:
        writer.write(item)
    writer.close()
    assert [len(b[2]) for b in parse_like_libtwml(buffer.getvalue())] == [5, 5, 3, 5, 5]
    buffer.seek(0)
    assert list(iter_block_records(buffer)) == items
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"")


@pytest.mark.parametrize("name,compression", [("part-00000-of-00001", None), ("part-00000-of-00001.gz", None)])
def test_local_files(tmp_path, name, compression):
    _, _, records = make_records(120)
    path = tmp_path / name
    with BlockWriter(path, compression=compression) as writer:
        writer.write_records(records)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert [blob for b in parse_like_libtwml(raw) for blob in b[2]] == records.to_list()
    assert list(read_block_records(path)) == records.to_list()


def test_class_name_and_version_checks():
    other = encode_block([b"x"], class_name="com.example.Other")
    with pytest.raises(RecordFormatError, match="holds 'com.example.Other'"):
        list(iter_block_records(io.BytesIO(other), path="p"))
    assert list(iter_block_records(io.BytesIO(other), class_name=None)) == [b"x"]
    version_2 = MARKER + bytes([2, 0, 0, 0, 0x08, 0x02])
    with pytest.raises(RecordFormatError, match="unsupported block version 2"):
        list(iter_block_records(io.BytesIO(version_2)))
    with pytest.raises(ValueError, match="records_per_block"):
        BlockWriter(io.BytesIO(), records_per_block=0)


def test_errors_name_offsets():
    good = encode_block([b"a", b"bc"])
    with pytest.raises(RecordFormatError, match="no block marker") as err:
        list(iter_block_records(io.BytesIO(good + b"\x00" * 20), path="f"))
    assert err.value.offset == len(good) and err.value.path == "f"
    with pytest.raises(RecordFormatError, match="truncated block of") as err:
        list(iter_block_records(io.BytesIO(good + good[:-1])))
    assert err.value.offset == len(good) + 20   # where the second block's body starts
