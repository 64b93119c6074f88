"""``input.format: datarecord``: user features read from TFRecord / block files of DataRecords.

The input records come from two independent writers: thriftpy2 itself (its pure-Python binary
protocol and the C one, framed by TensorFlow's own TFRecord writer), and the format library
(``twml.encode`` batch encoders, framed by ``twml.io`` writers). Expected embeddings are computed
with TF directly from the features, with the sparse ids hashed by a plain-Python reference of
libtwml's mixStringIdAndValue, independent of the job's vectorised code.
"""
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import thriftpy2.protocol
from apache_beam.options.pipeline_options import PipelineOptions
from thriftpy2.transport import TMemoryBuffer

from pipeline.config import ConfigError, parse_config
from pipeline.job import build_pipeline, run_export
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline_fixtures import (DENSE_DIM, IDS_LEN, fmix64_reference, model_outputs, padded_ids, shard_records,
                               tiny_model, untyped_pcollections)
from transforms.errors import ExportError
from transforms.inputs.datarecord import (CONTINUOUS, DISCRETE, SPARSE_BINARY, DataRecordSource,
                                          FeatureColumn, records_to_table, sparse_binary_ids,
                                          twml_string_hashes)
from twml.decode import decode_data_record, decode_embeddings
from twml.encode import encode_continuous_records, encode_data_records
from twml.feature_ids import feature_id
from twml.io.block import BlockWriter
from twml.io.tfrecord import TFRecordWriter
from twml.schema import data_thrift, serialize

KEY = "meta.user_id"
KEY_ID = feature_id(KEY)
EMB_ID = feature_id("output")
DENSE = [f"user.f{i}" for i in range(DENSE_DIM)]
INTERESTS, TOPICS, SHARD = "user.interests", "user.topics", "user.shard"
SHARDS = 3
WORDS = ["sports", "news", "müsik", "", "a" * 40, "cats", "日本語", "rust", "beam", "x"]


def reference_hash(data: bytes) -> int:
    """libtwml mixStringIdAndValue's string hash: int32 h = 31 * h + byte, wrapping."""
    h = 0
    for byte in data:
        h = (31 * h + byte) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def reference_id(feature: str, value: str) -> int:
    return feature_id(feature) ^ reference_hash(value.encode("utf-8"))


# ------------------------------------------------------------------------------------------------
# Input files.

def _user(rng, key, drop_feature=True):
    dense = {name: float(v) for name, v in zip(DENSE, rng.normal(size=DENSE_DIM))}
    if drop_feature and rng.random() < 0.2:
        dense.pop(DENSE[int(rng.integers(DENSE_DIM))])  # missing: the config's default 0.0 fills it
    sets = {}
    for name in (INTERESTS, TOPICS):
        if rng.random() < 0.8:
            sets[name] = {WORDS[i] for i in rng.choice(len(WORDS), size=int(rng.integers(0, 4)), replace=False)}
    return {"key": key, "dense": dense, "sets": sets, "shard": int(key % SHARDS)}


def _thrift_record(user, with_key=True):
    return data_thrift.DataRecord(
        continuousFeatures={feature_id(n): v for n, v in user["dense"].items()},
        discreteFeatures={**({KEY_ID: user["key"]} if with_key else {}), feature_id(SHARD): user["shard"]},
        sparseBinaryFeatures={feature_id(n): s for n, s in user["sets"].items()} or None)


def _pure_python_bytes(record) -> bytes:
    buf = TMemoryBuffer()
    record.write(thriftpy2.protocol.TBinaryProtocolFactory().get_protocol(buf))
    return buf.getvalue()


def _library_records(users):
    """Records built by the format library's batch encoders: field 2 (continuous, all DENSE
    features) from encode_continuous_records, fields 3 (key, shard) from encode_data_records.
    A DataRecord is a Thrift struct, so field 2's bytes without their STOP byte, then field 3 and
    its STOP, is one record."""
    ids = [feature_id(n) for n in DENSE]
    values = np.array([[u["dense"][n] for n in DENSE] for u in users], np.float64)
    continuous = encode_continuous_records(ids, values)
    keys = np.array([u["key"] for u in users], np.int64)
    discrete = encode_data_records(keys, KEY_ID, [])
    records = []
    for i, user in enumerate(users):
        head = continuous[i][:-1]
        tail = discrete[i]
        # encode_data_records writes {KEY: key} only; the shard goes in the same map, by hand.
        assert tail[:3] == b"\x0d\x00\x03" and tail[3:5] == b"\x0a\x0a" and tail[5:9] == b"\x00\x00\x00\x01"
        shard_entry = feature_id(SHARD).to_bytes(8, "big", signed=True) + user["shard"].to_bytes(8, "big")
        records.append(head + tail[:5] + b"\x00\x00\x00\x02" + tail[9:-1] + shard_entry + b"\x00")
    return records


def expected_row(user):
    dense = [user["dense"].get(n, 0.0) for n in DENSE]
    ids = sorted(reference_id(name, v) for name, values in user["sets"].items() for v in values)
    return dense, ids


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two files of the same kind of users from the two writers, in both containers, plus the
    bad records, with what each record should become."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("datarecords")
    rng = np.random.default_rng(7)
    thrift_users = [_user(rng, 10_000 + i) for i in range(300)]
    library_users = [_user(rng, -(20_000 + i), drop_feature=False) for i in range(200)]
    for user in library_users:
        user["sets"] = {}
    thrift_bytes = [(_pure_python_bytes if i % 2 else serialize)(_thrift_record(u))
                    for i, u in enumerate(thrift_users)]
    zero = {"key": 99_999, "dense": {n: 0.0 for n in DENSE}, "sets": {}, "shard": 0}
    bad = {  # record index in the thriftpy2 file -> the reason the job must give
        300: "undecodable_record",
        301: "null_key",
        302: "non_finite_embedding",
        303: "undecodable_record",
    }
    thrift_bytes += [b"\x0d\x00\x02garbage", serialize(_thrift_record(thrift_users[0], with_key=False)),
                     serialize(_thrift_record(zero)), serialize(_thrift_record(thrift_users[1]))[:-3]]
    library_bytes = _library_records(library_users)
    for data in library_bytes[:3]:
        decode_data_record(data)  # the hand-joined library records are valid DataRecords
    files = {}
    # TFRecord: thriftpy2 records framed by TensorFlow, library records framed by twml.io.
    tf_dir = root / "tfrecord"
    tf_dir.mkdir()
    with tf.io.TFRecordWriter(str(tf_dir / "thrift.tfrecord"), options="GZIP") as writer:
        for data in thrift_bytes:
            writer.write(data)
    with TFRecordWriter(str(tf_dir / "library.tfrecord")) as writer:
        for data in library_bytes:
            writer.write(data)
    (tf_dir / "notes.tfrecord").write_bytes(b"not a tfrecord file at all")
    files["tfrecord"] = str(tf_dir / "*.tfrecord")
    block_dir = root / "block"
    block_dir.mkdir()
    with BlockWriter(str(block_dir / "thrift.gz"), records_per_block=64) as writer:
        for data in thrift_bytes:
            writer.write(data)
    with BlockWriter(str(block_dir / "library"), records_per_block=50) as writer:
        for data in library_bytes:
            writer.write(data)
    files["block"] = str(block_dir / "*")
    good = {u["key"]: u for u in thrift_users + library_users}
    return {"files": files, "root": root, "good": good, "bad": bad, "total": len(thrift_bytes) + len(library_bytes)}


def datarecord_config(pattern, out, container="tfrecord", **extra):
    raw = {
        "input": {"format": "datarecord", "path": pattern, "container": container, "key": KEY,
                  "on_bad_file": "skip",
                  "features": {"dense": {"continuous": DENSE, "default": 0.0},
                               "ids": {"sparse_binary": [INTERESTS, TOPICS]}}},
        "model": {"path": tiny_model(extra_output=False), "batch_size": 64,
                  "inputs": {"dense": {"column": "dense"}, "sparse_ids": {"column": "ids", "length": IDS_LEN}},
                  "outputs": {"embedding": {"feature": "output"}}},
        "partition": {"num_shards": SHARDS},
        "output": {"path": out, "max_reject_fraction": 0.1},
        "runner": {"name": "FnApiRunner", "options": ["--direct_running_mode=in_memory"]},
    }
    for dotted, value in extra.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_config(raw, "<test>")


@pytest.fixture(scope="module")
def expected(inputs):
    keys = sorted(inputs["good"])
    rows = [expected_row(inputs["good"][k]) for k in keys]
    out = model_outputs(tiny_model(extra_output=False), np.array([d for d, _ in rows], np.float32),
                        padded_ids([ids for _, ids in rows]))
    return dict(zip(keys, out["embedding"]))


def all_records(out, manifest):
    return {s: sorted(recs) for s, recs in shard_records(out, manifest).items()}


@pytest.fixture(scope="module")
def tfrecord_export(inputs, expected, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "tfrecord-input")
    return out, run_export(preflight(datarecord_config(inputs["files"]["tfrecord"], out)))


# ------------------------------------------------------------------------------------------------

def test_export_from_tfrecord_datarecords_end_to_end(inputs, expected, tfrecord_export):
    out, manifest = tfrecord_export
    bad = inputs["bad"]
    assert manifest["rows_read"] == inputs["total"] == manifest["rows_written"] + manifest["rows_rejected"]
    assert manifest["rows_written"] == len(expected)
    assert manifest["rejected_by_reason"] == {"undecodable_record": 2, "null_key": 1, "non_finite_embedding": 1}
    assert manifest["input"]["rows"] is None and manifest["input"]["files"] == 2
    assert [os.path.basename(s["file"]) for s in manifest["input"]["skipped_files"]] == ["notes.tfrecord"]
    seen = set()
    for shard, records in shard_records(out, manifest).items():
        keys, embeddings = decode_embeddings(records, KEY_ID, EMB_ID)
        for key, vector in zip(keys.tolist(), embeddings):
            assert fmix64_reference(key) % SHARDS == shard
            np.testing.assert_allclose(vector, expected[key], rtol=1e-5, atol=1e-6)
            seen.add(key)
    assert seen == set(expected)
    rejected = pq.read_table(os.path.join(out, "_rejected"))
    assert rejected.column_names == [KEY, "dense", "ids", "record_index", "reason", "source_file", "source_row",
                                     "error"]
    assert rejected.column("source_row").to_pylist() == rejected.column("record_index").to_pylist()
    found = sorted(zip(rejected.column("record_index").to_pylist(), rejected.column("reason").to_pylist(),
                       [os.path.basename(p) for p in rejected.column("source_file").to_pylist()]))
    assert found == sorted((i, reason, "thrift.tfrecord") for i, reason in bad.items())
    errors = dict(zip(rejected.column("record_index").to_pylist(), rejected.column("error").to_pylist()))
    assert errors[300].startswith("record 300 (byte ") and "invalid DataRecord" in errors[300]
    assert errors[301] is None


def test_block_container_gives_the_same_records_and_partition_by_a_feature(inputs, tfrecord_export, tmp_path):
    out = str(tmp_path / "block-input")
    config = datarecord_config(inputs["files"]["block"], out, container="block")
    manifest = run_export(preflight(config))
    assert all_records(out, manifest) == all_records(*tfrecord_export)
    assert manifest["rejected_by_reason"] == tfrecord_export[1]["rejected_by_reason"]

    by_feature = str(tmp_path / "by-feature")
    features = {**config.input.model_dump()["features"], "shard": {"discrete": SHARD}}
    manifest = run_export(preflight(datarecord_config(inputs["files"]["block"], by_feature, container="block",
                                            input__features=features,
                                            partition={"num_shards": SHARDS, "by": "column", "column": "shard"})))
    for shard, records in shard_records(by_feature, manifest).items():
        keys, _ = decode_embeddings(records, KEY_ID, EMB_ID)
        assert all(inputs["good"][k]["shard"] == shard for k in keys.tolist())
    assert sorted(r for recs in all_records(by_feature, manifest).values() for r in recs) == sorted(
        r for recs in all_records(*tfrecord_export).values() for r in recs)


def test_broken_framing_fails_the_run_naming_the_file(inputs, tmp_path):
    good = inputs["root"] / "tfrecord" / "library.tfrecord"
    data = good.read_bytes()
    (tmp_path / "in").mkdir()
    cut = tmp_path / "in" / "cut.tfrecord"
    cut.write_bytes(data[:len(data) // 2 + 5])  # the first record is whole, so preflight passes
    config = datarecord_config(str(tmp_path / "in" / "*.tfrecord"), str(tmp_path / "out"), input__on_bad_file="fail")
    with pytest.raises(ExportError, match=r"cut\.tfrecord: cannot read the tfrecord framing after record \d+"):
        run_export(preflight(config))
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_preflight_names_what_does_not_fit(inputs, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(PreflightError, match=r"library: not a readable tfrecord file of DataRecords .*input\.container"):
        preflight(datarecord_config(inputs["files"]["block"], out, input__on_bad_file="fail"))
    with pytest.raises(PreflightError, match=r"model.inputs.sparse_ids.column 'nope' is not one of input.features"):
        preflight(datarecord_config(inputs["files"]["tfrecord"], out,
                                    model__inputs={"dense": {"column": "dense"},
                                                   "sparse_ids": {"column": "nope", "length": IDS_LEN}}))
    scalar = {"dense": {"continuous": DENSE[0]}, "ids": {"sparse_binary": INTERESTS}}
    with pytest.raises(PreflightError, match=r"column 'dense' .* has type double; expected a list column"):
        preflight(datarecord_config(inputs["files"]["tfrecord"], out, input__features=scalar))
    plan = preflight(datarecord_config(inputs["files"]["tfrecord"], out))
    assert plan.total_rows is None
    assert plan.read_schema.names == [KEY, "dense", "ids", "record_index"]


def test_every_pcollection_of_the_datarecord_export_has_a_declared_type(inputs, tmp_path):
    """Typed PCollections get their type's coder on every runner, not Beam's pickling fallback
    (the Parquet export's graph: tests/test_element_types.py)."""
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    build_pipeline(p, preflight(datarecord_config(inputs["files"]["block"], str(tmp_path / "o"), container="block")))
    assert untyped_pcollections(p, allowed=("Finalize/Publish",)) == []


def test_config_errors_name_the_key():
    base = {"format": "datarecord", "path": "x", "container": "tfrecord", "key": KEY,
            "features": {"dense": {"continuous": DENSE}}}
    cases = [
        ({**base, "container": None}, "needs container: tfrecord or block"),
        ({**base, "features": {}}, "needs features"),
        ({**base, "features": {"d": {"continuous": ["a"], "discrete": ["b"]}}},
         "input.features.d: Value error, set exactly one of continuous, discrete, sparse_binary"),
        ({**base, "features": {"d": {"discrete": ["a"], "default": 0.5}}}, "must be an integer"),
        ({**base, "features": {"d": {"continuous": ["a", "a"]}}}, "a feature is listed twice"),
        ({**base, "features": {"d": {"sparse_binary": "a", "default": 1}}}, "does not apply to sparse_binary"),
        ({**base, "features": {KEY: {"discrete": "a"}}}, "is taken"),
        ({"format": "parquet", "path": "x", "features": {"d": {"continuous": "a"}}}, "datarecord only"),
    ]
    model = {"path": "m", "inputs": {"dense": {"column": "dense"}}, "outputs": {"e": {"feature": "output"}}}
    for raw_input, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_config({"input": raw_input, "model": model, "output": {"path": "o"}}, "<test>")


# ------------------------------------------------------------------------------------------------
# The pure functions.

def test_string_hash_and_ids_match_the_reference():
    values = [w.encode("utf-8") for w in WORDS] + [bytes(range(256)) * 5, b"\xff\xfe"]
    assert twml_string_hashes(values).tolist() == [reference_hash(v) for v in values]
    fids = np.array([feature_id(INTERESTS)] * len(values), np.int64)
    assert sparse_binary_ids(fids, values).tolist() == [feature_id(INTERESTS) ^ reference_hash(v) for v in values]
    assert twml_string_hashes([]).dtype == np.int32 and twml_string_hashes([b""]).tolist() == [0]


def test_records_to_table_columns_defaults_and_undecodable():
    source = DataRecordSource(
        container="tfrecord", key_column=KEY, key_feature_id=KEY_ID, columns=(
            FeatureColumn("dense", CONTINUOUS, (feature_id("a"), feature_id("b"))),            # no default
            FeatureColumn("filled", CONTINUOUS, (feature_id("a"), feature_id("b")), default=-1.0),
            FeatureColumn("age", CONTINUOUS, (feature_id("b"),), scalar=True),
            FeatureColumn("country", DISCRETE, (feature_id("c"),), scalar=True, default=0),
            FeatureColumn("cats", DISCRETE, (feature_id("c"), feature_id("d"))),
            FeatureColumn("ids", SPARSE_BINARY, (feature_id("s"),))))
    records = [
        serialize(data_thrift.DataRecord(continuousFeatures={feature_id("a"): 1.5, feature_id("b"): 2.0},
                                         discreteFeatures={KEY_ID: 7, feature_id("c"): 3, feature_id("d"): 4},
                                         sparseBinaryFeatures={feature_id("s"): {"z", "y"}})),
        b"\x01\x02\x03",
        serialize(data_thrift.DataRecord(continuousFeatures={feature_id("a"): 0.5})),
    ]
    table, bad = records_to_table(records, source, "f.tfrecord", first_index=10)
    assert [i for i, _ in bad] == [11] and bad[0][1].startswith("record 11 (byte ")
    assert table.schema == source.schema
    assert table.to_pydict() == {
        KEY: [7, None],
        "dense": [[1.5, 2.0], [0.5, None]],
        "filled": [[1.5, 2.0], [0.5, -1.0]],
        "age": [2.0, None],
        "country": [3, 0],
        "cats": [[3, 4], [None, None]],
        "ids": [sorted(reference_id("s", v) for v in "yz"), []],
        "record_index": [10, 12],
    }
    assert table.schema.field("ids").type == pa.list_(pa.int64())


def test_dry_run_prints_the_feature_mapping(inputs, tmp_path):
    import io

    import yaml

    from pipeline.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(datarecord_config(inputs["files"]["tfrecord"], str(tmp_path / "o"))
                                   .model_dump(mode="json")))
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "--config", str(path), "--dry-run"], out=out, err=err) == 0, err.getvalue()
    text = out.getvalue()
    assert "2 file(s), rows unknown until read" in text
    assert "tfrecord files of DataRecords, key <- discrete feature meta.user_id" in text
    assert "column dense <- continuous user.f0, ..., user.f7 (8), default 0.0" in text
    assert "column ids <- sparse_binary user.interests, user.topics" in text
    assert "skipped: " in text and "notes.tfrecord" in text


def test_shipped_local_datarecord_config_runs_with_the_demo_model(tmp_path):
    import io

    from pipeline.cli import main
    from pipeline.demo.models import demo_model_kwargs, ensure_embedding_model

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = str(tmp_path / "model")
    ensure_embedding_model(model, **demo_model_kwargs())
    rng = np.random.default_rng(3)
    (tmp_path / "in").mkdir()
    with TFRecordWriter(str(tmp_path / "in" / "users.tfrecord")) as writer:
        for key in range(500):
            writer.write(serialize(data_thrift.DataRecord(
                continuousFeatures={feature_id(f"user.dense_{i}"): float(v) for i, v in enumerate(rng.normal(size=32))},
                discreteFeatures={KEY_ID: key},
                sparseBinaryFeatures={feature_id("user.interests"): {f"t{j}" for j in rng.integers(0, 50, 5)}})))
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "--config", os.path.join(repo, "run_configs", "local_datarecord.yaml"),
                 "--set", f"input.path={tmp_path / 'in' / '*.tfrecord'}", "--set", f"model.path={model}",
                 "--set", f"output.path={tmp_path / 'out'}"], out=out, err=err)
    assert code == 0, err.getvalue()
    assert out.getvalue().startswith("rows read     500\nrows written  500\n")
