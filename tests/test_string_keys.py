"""String user keys (docs/FORMAT.md section 5): the string in stringFeatures under the key
feature, its int64 id ``feature_id(key)`` in discreteFeatures under the key-id feature, the shard
``fmix64(uint64(key_id)) % num_shards``; null, empty and non-UTF-8 keys rejected with a reason.

The bytes are checked against thriftpy2 (an independent encoder and decoder of the IDL) and the
ids against a pure-Python MurmurHash3 (tests/test_feature_ids.py), not against the exporter's code.
"""
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tools.inspection import find_rejected, iter_records
from pipeline.tools.inspection import main as inspect_main
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.tools.verify import verify_export
from pipeline_fixtures import (EMB_DIM, EMB_ID, bad_rows, fmix64_reference, shard_records, tiny_config, tiny_model,
                               user_table)
from test_feature_ids import expected_feature_id
from transforms.duplicates import duplicate_counts
from transforms.keys import empty_key_rows, invalid_utf8_rows, key_arrays
from twml.encode import encode_data_records
from twml.feature_ids import feature_id, string_key_ids
from twml.io.tfrecord import encode_tfrecords, frame_tfrecords
from twml.schema import data_thrift, deserialize, serialize, tensor_thrift

KEY_FEATURE = "meta.user_id"
KEY_ID_FEATURE = "meta.user_id.id"
STRING_ID = feature_id(KEY_FEATURE)
KEY_ID = feature_id(KEY_ID_FEATURE)
STRANGE = ["user-1", "Ünïcödé", "emoji-\U0001F600", "with#hash", "#lead", "a" * 300, "tab\tand space "]


def export(config):
    """Plan the config (checks included), run it, return the manifest."""
    return run_export(preflight(config))


def test_key_ids_are_twml_feature_ids_by_an_independent_murmur3():
    ids = string_key_ids(STRANGE)
    assert ids.dtype == np.int64
    assert ids.tolist() == [expected_feature_id(k) for k in STRANGE]
    assert string_key_ids([k.encode("utf-8") for k in STRANGE]).tolist() == ids.tolist()  # bytes are UTF-8
    with pytest.raises(UnicodeDecodeError):
        string_key_ids([b"\xff"])


def test_string_feature_bytes_equal_thriftpy2():
    keys = np.array(STRANGE, dtype=object)
    ids = string_key_ids(keys)
    emb = np.arange(len(keys) * 3, dtype=np.float32).reshape(len(keys), 3)
    records = encode_data_records(ids, KEY_ID, [(EMB_ID, emb)], [(STRING_ID, keys)])
    for i, key in enumerate(STRANGE):
        expected = data_thrift.DataRecord(
            discreteFeatures={KEY_ID: int(ids[i])}, stringFeatures={STRING_ID: key},
            tensors={EMB_ID: tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
                dataType=0, content=emb[i].astype("<f4").tobytes(), shape=[3]))})
        assert records[i] == serialize(expected)
        back = deserialize(data_thrift.DataRecord, records[i])
        assert back.stringFeatures[STRING_ID] in (key, key.encode("utf-8"))
    framed = encode_tfrecords(ids, KEY_ID, [(EMB_ID, emb)], [(STRING_ID, keys)])
    assert framed.tobytes() == frame_tfrecords(records).tobytes()
    with pytest.raises(ValueError, match="one per record"):
        encode_data_records(ids[:2], KEY_ID, [], [(STRING_ID, keys)])


def test_key_checks_and_arrays():
    column = pa.array([b"ok", b"", None, b"\xff\xfe", "é".encode()], pa.binary())
    assert empty_key_rows(column).tolist() == [False, True, False, False, False]
    assert invalid_utf8_rows(column).tolist() == [False, False, False, True, False]
    strings = pa.array(["a", "", None, "b"], pa.large_string())
    assert empty_key_rows(strings).tolist() == [False, True, False, False]
    assert not invalid_utf8_rows(strings).any()
    ids, held = key_arrays(pa.array(["a", "é"]))
    assert held.tolist() == [b"a", "é".encode()]
    assert ids.tolist() == [expected_feature_id("a"), expected_feature_id("é")]
    ids, held = key_arrays(pa.array([3, -4], pa.int32()))
    assert held is None and ids.dtype == np.int64 and ids.tolist() == [3, -4]


def test_duplicates_and_hash_collisions():
    ids = np.array([5, 5, 7, 9, 9, 9], np.int64)
    assert duplicate_counts(ids) == (2, 3, ())
    assert duplicate_counts(ids, np.array([b"a", b"a", b"b", b"c", b"c", b"c"], object)) == (2, 3, ())
    # One id, different strings: different users (a collision), not duplicates; "x" twice is one.
    assert duplicate_counts(ids, np.array([b"a", b"a", b"b", b"x", b"y", b"x"], object)) == (2, 2, ((9, ("x", "y")),))


# -- end to end -----------------------------------------------------------------------------------

GOOD_USERS = 120
BAD_KEYS = {None: "null_key", b"": "empty_key", b"bad-\xff\xfe": "invalid_utf8_key"}
NAN_USER = "nan-user"   # a good key on a row rejected for its features (non_finite:dense)


def _string_users(directory, key_type=pa.binary()):
    """Two Parquet files keyed by strings (``key_type``), plus a null, an empty and (binary
    only) a non-UTF-8 key in the first."""
    os.makedirs(directory, exist_ok=True)
    names = [f"user-{i:04d}" if i % 5 else f"ü{i}#x" for i in range(GOOD_USERS)]
    paths = []
    for part, chunk in enumerate(np.array_split(np.arange(GOOD_USERS), 2)):
        table = user_table(np.asarray(chunk, np.int64), seed=part)
        keys = [names[i].encode("utf-8") for i in chunk]
        if part == 0:
            bad = [k for k in BAD_KEYS if key_type == pa.binary() or k is None or k == b""]
            extra = user_table(np.arange(len(bad), dtype=np.int64), seed=9)
            nan_row = bad_rows(0).slice(3, 1)   # dense with a NaN
            table = pa.concat_tables([table, extra, nan_row])
            keys += bad + [NAN_USER.encode()]
        values = pa.array(keys, pa.binary())
        if key_type != pa.binary():
            values = values.cast(key_type)
        table = table.set_column(0, "user_id", values)
        path = os.path.join(directory, f"users-{part}.parquet")
        pq.write_table(table, path, row_group_size=50)
        paths.append(path)
    return names


@pytest.mark.parametrize("fmt,key_type", [("tfrecord", pa.binary()), ("parquet", pa.string()),
                                          ("block", pa.large_string())])
def test_string_key_export_end_to_end(tmp_path, fmt, key_type):
    names = _string_users(str(tmp_path / "in"), key_type)
    out = str(tmp_path / "out")
    config = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=3, fmt=fmt,
                         batch_size=32, max_reject_fraction=0.5)
    plan = preflight(config)
    assert plan.layout.key_string_feature_id == STRING_ID and plan.layout.key_feature_id == KEY_ID
    manifest = run_export(plan)
    reasons = {r: 1 for k, r in BAD_KEYS.items() if key_type == pa.binary() or k is None or k == b""}
    reasons["non_finite:dense"] = 1
    assert manifest["rows_read"] == GOOD_USERS + len(reasons) and manifest["rows_written"] == GOOD_USERS
    assert manifest["rejected_by_reason"] == reasons
    assert manifest["key_type"] == "string"
    assert manifest["key_feature"] == {"name": KEY_FEATURE, "id": STRING_ID}
    assert manifest["key_id_feature"] == {"name": KEY_ID_FEATURE, "id": KEY_ID}
    assert manifest["partition"]["hash"] == "fmix64(uint64(key_id)) % num_shards"

    seen = {}
    for shard, records in shard_records(out, manifest).items():
        for data in records:
            record = deserialize(data_thrift.DataRecord, data)   # thriftpy2, not the job's decoder
            key = record.stringFeatures[STRING_ID]
            key = key.decode("utf-8") if isinstance(key, bytes) else key
            key_id = record.discreteFeatures[KEY_ID]
            assert key_id == expected_feature_id(key)
            assert fmix64_reference(key_id) % 3 == shard
            assert len(record.tensors[EMB_ID].rawTypedTensor.content) == 4 * EMB_DIM
            seen[key] = shard
    assert sorted(seen) == sorted(names)
    if fmt == "parquet":
        table = pa.concat_tables([pq.read_table(os.path.join(out, s["file"])) for s in manifest["shards"]])
        assert table.schema.field("key").type == pa.string() and table.schema.field("key_id").type == pa.int64()
        assert sorted(table.column("key").to_pylist()) == sorted(names)
        assert table.column("key_id").to_pylist() == [expected_feature_id(k) for k in table.column("key").to_pylist()]

    report = verify_export(out)
    assert report.ok, [str(p) for p in report.problems]
    [row] = iter_records(out, key=names[5])
    assert row["key"] == names[5] and row["file"] == manifest["shards"][seen[names[5]]]["file"]
    assert row["stringFeatures"] == {KEY_FEATURE: names[5]} and KEY_ID_FEATURE in row["discreteFeatures"]
    assert list(iter_records(out, key="nobody")) == []
    [rejected] = find_rejected(out, "nan-user")
    assert rejected["reason"] == "non_finite:dense" and rejected["user_id"] == "nan-user"
    assert rejected["file"].startswith("_rejected/part-") and rejected["source_file"].endswith("users-0.parquet")


def test_inspect_key_of_a_rejected_string_user(tmp_path, capsys):
    _string_users(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    export(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=2, batch_size=32,
                          max_reject_fraction=0.5))
    assert inspect_main([out, "--key", "user-0001"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["key"] == "user-0001"
    assert inspect_main([out, "--key", ""]) == 1
    assert "empty string is never a key" in capsys.readouterr().err
    assert inspect_main([out, "--key", "nan-user"]) == 1   # no exported record: exit 1, and why
    captured = capsys.readouterr()
    assert json.loads(captured.out)["reason"] == "non_finite:dense"
    assert "key nan-user was rejected: non_finite:dense (input " in captured.err
    assert re.search(r"its row is \S+/out/_rejected/part-00000-of-00001.parquet row \d+$", captured.err.strip())


def test_verify_names_a_wrong_key_id(tmp_path):
    _string_users(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    manifest = export(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=1,
                                      batch_size=32, max_reject_fraction=0.5))
    # Rewrite the shard with one record whose key id is not feature_id(key): verify must say so.
    shard = os.path.join(out, manifest["shards"][0]["file"])
    records = shard_records(out, manifest)[0]
    record = deserialize(data_thrift.DataRecord, records[0])
    record.discreteFeatures = {KEY_ID: record.discreteFeatures[KEY_ID] + 1}
    records[0] = serialize(record)
    from twml.encode import EncodedRecords
    data = frame_tfrecords(EncodedRecords.from_list(records)).tobytes()
    with open(shard, "wb") as f:
        f.write(data)
    manifest["shards"][0].update(bytes=len(data), crc32c=None)
    with open(os.path.join(out, "_MANIFEST.json"), "w") as f:
        json.dump(manifest, f)
    report = verify_export(out)
    assert not report.ok
    assert any("is not feature_id(" in str(p) for p in report.problems), [str(p) for p in report.problems]


def test_a_key_id_collision_is_published_and_listed(tmp_path, monkeypatch):
    """Two different keys with one id (forced: a real 64-bit collision cannot be found) are both
    exported, each with its own string, and the manifest and the summary say so."""
    import transforms.keys
    real = transforms.keys.string_key_ids

    def colliding(keys):
        ids = real(keys)
        ids[[k in (b"user-0002", "user-0002") for k in keys]] = expected_feature_id("user-0001")
        return ids
    monkeypatch.setattr(transforms.keys, "string_key_ids", colliding)
    _string_users(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    manifest = export(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=2,
                                      batch_size=32, max_reject_fraction=0.5))
    assert manifest["rows_written"] == GOOD_USERS and manifest["duplicate_keys"] == {"keys": 0, "rows": 0}
    assert manifest["key_id_collisions"] == {
        "ids": 1, "examples": [{"key_id": expected_feature_id("user-0001"), "keys": ["user-0001", "user-0002"]}]}
    assert [row["key"] for row in iter_records(out, key="user-0001")] == ["user-0001"]   # the string decides
    monkeypatch.setattr("pipeline.tools.verify.string_key_ids", colliding)   # verify derives ids the same way
    report = verify_export(out)
    assert report.ok, [str(p) for p in report.problems]
    assert any(f"1 key id(s) shared by different keys, e.g. {expected_feature_id('user-0001')} by "
               "['user-0001', 'user-0002']" in w for w in report.warnings), report.warnings
    from pipeline.progress import summary_rows
    assert ("key id collisions", "1 id(s) shared by different string keys (listed in _MANIFEST.json "
            "key_id_collisions)") in summary_rows(manifest, 1.0, out)


def test_datarecord_input_with_a_string_key_feature(tmp_path):
    """``input.key_type: string``: the key is a stringFeatures entry of the input records."""
    from test_datarecord_input import DENSE, datarecord_config
    from twml.io.tfrecord import TFRecordWriter

    rng = np.random.default_rng(3)
    users = [f"dr-user-{i}" for i in range(90)]
    keys = [u.encode() for u in users] + [b"", None, b"\xc3\x28"]     # + empty, missing, not UTF-8
    with TFRecordWriter(str(tmp_path / "in.tfrecord")) as writer:
        for key in keys:
            record = data_thrift.DataRecord(
                continuousFeatures={feature_id(n): float(v) for n, v in zip(DENSE, rng.normal(size=len(DENSE)))},
                stringFeatures=None if key is None else {feature_id(KEY_FEATURE): key})
            writer.write(serialize(record))
    out = str(tmp_path / "out")
    config = datarecord_config(str(tmp_path / "in.tfrecord"), out, input__key=KEY_FEATURE, input__key_type="string",
                               output__max_reject_fraction=0.5)
    manifest = export(config)
    assert manifest["key_type"] == "string" and manifest["rows_written"] == len(users)
    assert manifest["rejected_by_reason"] == {"empty_key": 1, "null_key": 1, "invalid_utf8_key": 1}
    exported = {}
    for shard, records in shard_records(out, manifest).items():
        for data in records:
            record = deserialize(data_thrift.DataRecord, data)
            key = record.stringFeatures[STRING_ID]
            key = key.decode() if isinstance(key, bytes) else key
            assert record.discreteFeatures[KEY_ID] == expected_feature_id(key)
            exported[key] = shard
    assert sorted(exported) == sorted(users)
    assert verify_export(out).ok


def test_key_type_is_for_datarecord_input_only():
    from pipeline.config import ConfigError, parse_config
    raw = tiny_config("in/*.parquet", "model", "out").model_dump(mode="json")
    raw["input"]["key_type"] = "string"
    with pytest.raises(ConfigError, match="key_type apply to format: datarecord only"):
        parse_config(raw)


def test_string_keys_benchmark_runs_small():
    from benchmarks.string_keys_bench import run_string_keys_benchmark
    result = run_string_keys_benchmark(batch=64, dim=4, key_length=12, repeats=2)
    assert result["same_bytes"] is True
    assert set(result) >= {"int_ms", "string_ms", "hash_ms", "string_vs_int", "spread", "string_rows_per_s"}


def test_dry_run_shows_the_string_key_layout(tmp_path):
    import io

    import yaml

    from pipeline.cli import main as cli_main
    _string_users(str(tmp_path / "in"))
    raw = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(tmp_path / "out"),
                      key_id_feature="user.key_hash").model_dump(mode="json")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["run", "--config", str(tmp_path / "run.yaml"), "--dry-run"], out=out, err=err) == 0, err.getvalue()
    text = out.getvalue()
    assert ("string key user_id -> stringFeatures meta.user_id, its id feature_id(key) -> discreteFeatures "
            "user.key_hash") in text
    assert "shards:  4 by fmix64(key_id)" in text
