"""The built-in demo: generated users, the demo run config, and the end-to-end demo run."""
import glob
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config, parse_config
from pipeline.demo.run import demo_config
from pipeline.demo.users import generate_users, user_ids, user_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_user_ids_are_unique_big_shuffled_and_seeded():
    ids = user_ids(50_000, seed=7)
    assert ids.dtype == np.int64 and len(ids) == 50_000
    assert len(np.unique(ids)) == len(ids)
    assert ids.min() >= 10**12 and ids.max() < 2**62
    assert not (np.diff(ids) > 0).all()  # not sorted
    np.testing.assert_array_equal(user_ids(50_000, seed=7), ids)
    assert not np.array_equal(user_ids(50_000, seed=8), ids)
    assert len(user_ids(0, seed=0)) == 0


def test_user_table_schema_and_ranges():
    table = user_table(np.arange(1, 1001, dtype=np.int64), seed=1, dense_dim=5, max_sparse=9)
    assert table.column_names == ["user_id", "dense", "sparse_ids"]
    assert table.schema.field("user_id").type == pa.int64()
    assert table.schema.field("dense").type.value_type == pa.float32()
    assert table.schema.field("sparse_ids").type.value_type == pa.int64()
    dense_lengths = pc.list_value_length(table.column("dense")).to_numpy()
    sparse_lengths = pc.list_value_length(table.column("sparse_ids")).to_numpy()
    assert (dense_lengths == 5).all()
    assert sparse_lengths.min() == 0 and sparse_lengths.max() == 9  # the whole range occurs
    sparse = pc.list_flatten(table.column("sparse_ids")).to_numpy()
    assert (sparse > 0).all()  # 0 is the model's pad value
    assert table.equals(user_table(np.arange(1, 1001, dtype=np.int64), seed=1, dense_dim=5, max_sparse=9))


def test_generate_users_writes_deterministic_files(tmp_path):
    paths = generate_users(str(tmp_path / "a"), 10_000, files=3, seed=5, dense_dim=8, max_sparse=12,
                           row_group_rows=1000)
    assert [os.path.basename(p) for p in paths] == [f"part-0000{i}-of-00003.parquet" for i in range(3)]
    table = pq.read_table(str(tmp_path / "a" / "users"))
    assert table.num_rows == 10_000
    assert len(np.unique(table.column("user_id").to_numpy())) == 10_000
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 4  # 3334 rows in groups of 1000
    again = generate_users(str(tmp_path / "b"), 10_000, files=3, seed=5, dense_dim=8, max_sparse=12,
                           row_group_rows=1000)
    for p, q in zip(paths, again):
        assert pq.read_table(p).equals(pq.read_table(q))
    other = pq.read_table(generate_users(str(tmp_path / "c"), 10_000, files=3, seed=6, dense_dim=8)[0])
    assert not other.equals(pq.read_table(paths[0]))


def test_generate_users_replaces_previous_data(tmp_path):
    generate_users(str(tmp_path), 1000, files=4)
    (tmp_path / "users" / "stray.parquet").write_bytes(b"old")
    paths = generate_users(str(tmp_path), 300, files=2)
    assert sorted(glob.glob(str(tmp_path / "users" / "*"))) == paths
    assert pq.read_table(str(tmp_path / "users")).num_rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no staging directory left


def test_generate_users_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="users must be >= 0"):
        generate_users(str(tmp_path), -1)
    with pytest.raises(ValueError, match="files must be > 0"):
        generate_users(str(tmp_path), 10, files=0)
    with pytest.raises(ValueError, match="dense_dim > 0"):
        generate_users(str(tmp_path), 10, dense_dim=0)
    assert not (tmp_path / "users").exists()


def test_demo_config_is_local_yaml_under_out_dir(tmp_path):
    out = str(tmp_path / "mydemo")
    local = yaml.safe_load(open(os.path.join(REPO, "run_configs", "local.yaml")))
    root = os.path.abspath(out)

    def moved(node):
        if isinstance(node, dict):
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        if isinstance(node, str) and node.startswith("demo/"):
            return os.path.join(root, node[len("demo/"):])
        return node

    assert demo_config(out) == moved(local)
    assert parse_config(demo_config(out)) == parse_config(moved(local))
    assert load_config(os.path.join(REPO, "run_configs", "local.yaml")).model.inputs["sparse_ids"].length == 16


def test_run_demo_end_to_end_twice(tmp_path):
    import tensorflow as tf

    from pipeline.demo.run import run_demo
    from twml.feature_ids import feature_id
    from twml.io.tfrecord import read_tfrecords
    from twml.schema import data_thrift, deserialize

    out = tmp_path / "demo"
    stream = io.StringIO()
    manifest = run_demo(str(out), users=3000, stream=stream)
    assert manifest["rows_read"] == manifest["rows_written"] == 3000
    assert manifest["rows_rejected"] == 0
    assert len(manifest["shards"]) == 16
    text = stream.getvalue()
    assert "rows written:" in text and "3,000" in text and str(out / "export") in text
    assert "\x1b[" not in text  # plain text when not a terminal
    assert (out / "export" / "_SUCCESS").exists()
    assert (out / "run_config.yaml").exists()
    assert load_config(str(out / "run_config.yaml")).output.path == str(out / "export")

    # Every user is in the export once, with the model's embedding (independent thriftpy2 decoder).
    users = pq.read_table(str(out / "users"))
    key_fid, emb_fid = feature_id("meta.user_id"), feature_id("output")
    exported = {}
    for path in sorted(glob.glob(str(out / "export" / "part-*.tfrecord"))):
        for raw in read_tfrecords(path):
            record = deserialize(data_thrift.DataRecord, raw)
            key = record.discreteFeatures[key_fid]
            tensor = record.tensors[emb_fid].rawTypedTensor
            assert list(tensor.shape) == [64]
            exported[key] = np.frombuffer(tensor.content, "<f4")
    assert sorted(exported) == sorted(users.column("user_id").to_pylist())
    model = tf.saved_model.load(str(out / "model")).signatures["serving_default"]
    first = users.slice(0, 50).to_pylist()
    dense = np.array([u["dense"] for u in first], np.float32)
    sparse = np.zeros((50, 16), np.int64)
    for i, u in enumerate(first):
        ids = u["sparse_ids"][:16]
        sparse[i, :len(ids)] = ids
    want = model(dense=tf.constant(dense), sparse_ids=tf.constant(sparse))["embedding"].numpy()
    got = np.stack([exported[u["user_id"]] for u in first])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # The demo owns its directory: a second run (other size) replaces data and export; model reused.
    model_stamp = (out / "model" / "saved_model.pb").stat().st_mtime_ns
    again = run_demo(str(out), users=1000, stream=io.StringIO())
    assert again["rows_written"] == 1000
    assert (out / "model" / "saved_model.pb").stat().st_mtime_ns == model_stamp
    assert sum(s["records"] for s in again["shards"]) == 1000
