"""Tests that would catch a regression the rest of the suite lets through.

- A shard's parts are joined in checksum order: the assembler, fed the same parts in two orders,
  writes the same bytes (reversing or dropping the sort makes this fail; comparing outputs
  sorted, as the other tests do, would not).
- The reject-fraction boundary: exactly ``max_reject_fraction`` of the rows rejected is allowed,
  one part in a thousand more is not (a ``>=`` in place of ``>`` fails the first run).
- The accounting check fires in a real run that loses a row between validation and writing.
- A uint64 key above 2**63 - 1 cannot be stored in a DataRecord's i64 key: the encoder refuses it
  instead of writing it as a negative key.
- The fuzzed readers are not vacuous: every unmutated seed decodes through every reader, to what
  it was made from (a reader that rejects everything would pass the mutation tests).
"""
import gzip
import io
import os

import numpy as np
import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES
from test_fuzz_readers import BLOCKS, DATARECORDS, RECORDS, TFRECORDS, read_block, read_datarecord, read_tfrecord
from transforms.elements import PartInfo
from transforms.errors import ExportError
from transforms.formats import make_format
from transforms.write import _AssembleShardFn
from twml.decode import decode_data_record, decode_embeddings
from twml.encode import encode_data_records
from twml.feature_ids import feature_id
from twml.io.block import iter_block_records
from twml.io.tfrecord import frame_tfrecords, iter_tfrecords

pytestmark = pytest.mark.timeout(240)

BOUNDARY = FIGURES.setdefault("reject-fraction boundary runs (fraction, rejected/read, outcome)", [])


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaps")
    write_users(str(root / "in"), 792, files=2, bad=True)    # 792 good + 8 bad = 800 rows, 8 rejected
    return str(root / "in" / "*.parquet")


def test_parts_are_joined_in_checksum_order_whatever_order_they_arrive(users, tmp_path):
    plan = preflight(tiny_config(users, tiny_model(), str(tmp_path / "out"), num_shards=1))
    fmt = make_format(plan.layout, plan.outputs)
    parts_dir = tmp_path / "out" / "_temporary" / plan.run_id / "parts"
    parts_dir.mkdir(parents=True)
    import google_crc32c
    infos = []
    for i in range(5):
        data = frame_tfrecords(RECORDS.take(np.array([i % 3]))).tobytes() * (i + 1)
        path = parts_dir / f"s00000-{i}.part"
        path.write_bytes(data)
        infos.append(PartInfo(str(path), i + 1, len(data), google_crc32c.value(data)))
    assembler = _AssembleShardFn(fmt)
    shards = []
    for order in (infos, infos[::-1], [infos[i] for i in (2, 0, 4, 1, 3)]):
        (result,) = assembler.process((0, [None, *order]))
        with open(result.temp_path, "rb") as handle:
            shards.append(handle.read())
    assert shards[0] == shards[1] == shards[2]
    expected = b"".join(open(info.path, "rb").read() for info in sorted(infos, key=lambda p: p.crc32c))
    assert shards[0] == expected


@pytest.mark.parametrize("fraction,succeeds", [(0.01, True), (0.00999, False)])
def test_the_reject_fraction_boundary(users, tmp_path, fraction, succeeds):
    cfg = tiny_config(users, tiny_model(), str(tmp_path / "out"), num_shards=2, max_reject_fraction=fraction)
    if succeeds:
        manifest = run_export(preflight(cfg))
        assert (manifest["rows_rejected"], manifest["rows_read"]) == (8, 800)
        assert os.path.exists(tmp_path / "out" / "_SUCCESS")
    else:
        with pytest.raises(ExportError, match="8 of 800 rows rejected .* more than output.max_reject_fraction 0.00999"):
            run_export(preflight(cfg))
        assert not os.path.exists(tmp_path / "out" / "_SUCCESS")
    BOUNDARY.append((fraction, "8/800", "published" if succeeds else "refused"))


def test_a_row_lost_between_validation_and_writing_fails_the_run(users, tmp_path, monkeypatch):
    """A real run that loses one row after validation (a fault injected in front of the partition
    step) is refused by finalize's accounting check, and nothing is published."""
    import apache_beam as beam
    import transforms.export
    from transforms.partition import PartitionBatches

    lost_key = 1001

    def lose_one_row(batch):
        hit = np.flatnonzero(batch.keys == lost_key)
        return batch.take(np.delete(np.arange(len(batch)), hit)) if len(hit) else batch

    def faulty_partition(spec):
        return beam.Map(lose_one_row) | PartitionBatches(spec)

    monkeypatch.setattr(transforms.export, "PartitionBatches", faulty_partition)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"accounting mismatch: rows_read 800 != rows_written 791 \+ rows_rejected 8"):
        run_export(preflight(tiny_config(users, tiny_model(), str(out), num_shards=2)))
    assert not out.exists() or not [name for name in os.listdir(out) if name != "_temporary"]


def test_a_uint64_key_beyond_int64_is_refused_not_wrapped():
    emb = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"key 18446744073709551615 \(row 1\) does not fit"):
        encode_data_records(np.array([5, 2 ** 64 - 1], dtype=np.uint64), "meta.user_id", [("output", emb)])
    records = encode_data_records(np.array([5, 2 ** 63 - 1], dtype=np.uint64), "meta.user_id", [("output", emb)])
    keys, _ = decode_embeddings(records, feature_id("meta.user_id"), feature_id("output"))
    assert keys.tolist() == [5, 2 ** 63 - 1]


def test_every_unmutated_fuzz_seed_decodes_through_every_reader():
    for data in DATARECORDS:
        read_datarecord(data)           # raises nothing: the helpers swallow only RecordFormatError
    for record in RECORDS.to_list():
        decode_data_record(record, path="seed", offset=0)
    keys, embeddings = decode_embeddings(RECORDS.to_list(), feature_id("meta.user_id"), feature_id("output"))
    assert keys.tolist() == [7, -8, 2 ** 40] and embeddings.shape == (3, 4)
    for seeds, iterate, read in ((TFRECORDS, iter_tfrecords, read_tfrecord), (BLOCKS, iter_block_records, read_block)):
        for data in seeds:
            read(data)
            read(gzip.compress(data, mtime=0), compressed=True)
            records = [bytes(r) for r in iterate(io.BytesIO(data), path="seed")]
            assert records and all(decode_data_record(r, path="seed", offset=0) is not None for r in records)
    assert len(list(iter_tfrecords(io.BytesIO(TFRECORDS[0]), path="seed"))) == 3
