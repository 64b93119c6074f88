"""Pre-launch checks: config vs model signature vs input files, with messages that name the problem."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config, parse_config
from pipeline.plan import find_placeholders, preflight
from transforms.signature import read_signature
from transforms.errors import PreflightError
from pipeline_fixtures import DENSE_DIM, EMB_DIM, IDS_LEN, tiny_config, tiny_model, user_table, write_users
from transforms.specs import KIND_FIXED, KIND_PADDED


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    write_users(str(root / "in"), 100, files=2)
    return str(root / "in" / "*.parquet")


def config(users, tmp_path, **changes):
    raw = tiny_config(users, tiny_model(), str(tmp_path / "out")).model_dump(mode="json")
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return parse_config(raw)


def test_plan_resolves_inputs_outputs_rows_and_absolute_paths(users, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(users)))
    cfg = config("in/*.parquet", tmp_path, output__path="relative/out")
    plan = preflight(cfg)
    assert plan.config.input.path == os.path.abspath("in/*.parquet")
    assert plan.config.output.path == os.path.abspath("relative/out") == plan.layout.path
    assert os.path.isabs(plan.config.model.path)
    assert [f.rows for f in plan.files] == [50, 50] and plan.total_rows == 100
    assert [(s.name, s.kind, s.length, s.dtype) for s in plan.inputs] == [
        ("dense", KIND_FIXED, DENSE_DIM, "float32"), ("sparse_ids", KIND_PADDED, IDS_LEN, "int64")]
    assert [(o.name, o.feature, o.shape) for o in plan.outputs] == [("embedding", "output", (EMB_DIM,)),
                                                                      ("score", "user.score", ())]
    assert plan.embedding_dim == EMB_DIM
    assert plan.read_schema.names == ["user_id", "dense", "sparse_ids"]  # unread columns stay unread
    assert plan.unread_columns.names == ["country"]                       # restored for rejected rows only
    assert plan.rejected_schema.names == ["user_id", "dense", "sparse_ids", "country", "reason", "source_file",
                                          "source_row", "error"]


def test_signature_is_read_without_loading_the_model():
    inputs, outputs = read_signature(tiny_model(), "serving_default")
    assert inputs["dense"].dtype == "float32" and inputs["dense"].shape == (None, DENSE_DIM)
    assert inputs["sparse_ids"].dtype == "int64" and outputs["score"].shape == (None,)


@pytest.mark.parametrize("changes,message", [
    ({"model__signature": "predict"}, "model.signature 'predict' is not in the SavedModel .*; it has \\['serving_default'\\]"),
    ({"model__inputs": {"dense": {"column": "dense"}, "ids": {"column": "sparse_ids", "length": 4}}},
     "not in the signature: \\['ids'\\]; not configured: \\['sparse_ids'\\]"),
    ({"model__inputs__sparse_ids__length": 5}, "model.inputs.sparse_ids.length is 5 but the signature input has shape \\[None, 4\\]"),
    ({"model__outputs": {"score": {"feature": "s"}, "embedding": {"feature": "output"}}},
     "model.outputs.score is the embedding \\(the first output written\\) and must be float32 \\[batch, D\\]; the signature gives float32 \\[None\\]"),
    ({"model__outputs": {"embedding": {"feature": "output"}, "logits": {"feature": "l"}}},
     "model.outputs \\['logits'\\] are not outputs of model"),
    ({"input__key": "uid"}, "users-000.parquet: column 'uid' \\(input.key\\) does not exist"),
    ({"model__inputs__dense__column": "country"},
     "users-000.parquet: column 'country' \\(feeds float32 input 'dense'\\) has type string; expected a list column"),
    ({"input__key": "dense"}, "key column 'dense' has type list<.*>; it must be an integer type that fits "
                              "int64, or a string"),
    ({"partition": {"num_shards": 4, "by": "column", "column": "country"}},
     "partition column 'country' has type string; it must be an integer type"),
])
def test_mismatches_are_named(users, tmp_path, changes, message):
    with pytest.raises(PreflightError, match=message):
        preflight(config(users, tmp_path, **changes))


def test_not_a_saved_model_and_no_input_files(users, tmp_path):
    with pytest.raises(PreflightError, match="is not a SavedModel directory: .*saved_model.pb does not exist"):
        preflight(config(users, tmp_path, model__path=str(tmp_path)))
    with pytest.raises(PreflightError, match="input.path .*nothing-here/\\*.parquet matches no files"):
        preflight(config(str(tmp_path / "nothing-here" / "*.parquet"), tmp_path))


def test_types_differing_between_files_are_named(tmp_path):
    os.makedirs(tmp_path / "in")
    table = user_table(np.arange(10), 0)
    pq.write_table(table, str(tmp_path / "in" / "a.parquet"))
    pq.write_table(table.set_column(1, "dense", table.column("dense").cast(pa.list_(pa.float64()))),
                   str(tmp_path / "in" / "b.parquet"))
    with pytest.raises(PreflightError, match="b.parquet: column types differ from .*a.parquet: "
                                             "dense: list<element: float> vs list<element: double>"):
        preflight(config(str(tmp_path / "in" / "*.parquet"), tmp_path))


def test_unreadable_file_fails_or_is_skipped(users, tmp_path):
    os.makedirs(tmp_path / "in")
    pq.write_table(user_table(np.arange(10), 0), str(tmp_path / "in" / "a.parquet"))
    (tmp_path / "in" / "b.parquet").write_bytes(b"not parquet at all")
    pattern = str(tmp_path / "in" / "*.parquet")
    with pytest.raises(PreflightError, match="b.parquet: not a readable Parquet file .*on_bad_file: skip"):
        preflight(config(pattern, tmp_path))
    plan = preflight(config(pattern, tmp_path, input__on_bad_file="skip"))
    assert [os.path.basename(f.path) for f in plan.files] == ["a.parquet"]
    assert [os.path.basename(p) for p, _ in plan.skipped_files] == ["b.parquet"]


def test_output_path_that_is_a_file(users, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="output.path .*file is a file; it must be a directory"):
        preflight(config(users, tmp_path, output__path=str(tmp_path / "file")))


def test_placeholders_in_cloud_configs_are_refused():
    cfg = load_config("run_configs/dataflow.yaml")
    found = find_placeholders(cfg, ["--job_name=<JOB>"])
    assert "runner.options[0]: '--project=<PROJECT>'" in found
    assert "beam args[0]: '--job_name=<JOB>'" in found
    with pytest.raises(PreflightError, match="placeholders to fill in .*input.path: 'gs://<BUCKET>/users/\\*.parquet'"):
        preflight(cfg)
    assert find_placeholders(load_config("run_configs/flink.yaml"))
    for name in ("local", "local_multiprocess", "portable"):
        local = load_config(f"run_configs/{name}.yaml")
        assert not find_placeholders(local)
        assert local.runner.name in ("FnApiRunner", "PortableRunner")  # never Prism-first DirectRunner


def test_open_embedding_dim_is_probed(tmp_path, users):
    import tensorflow as tf

    class Open(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, DENSE_DIM], tf.float32),
                                      tf.TensorSpec([None, IDS_LEN], tf.int64)])
        def serve(self, dense, sparse_ids):
            x = tf.concat([dense, tf.cast(sparse_ids, tf.float32)], axis=1)
            return {"embedding": tf.reshape(x, [tf.shape(x)[0], -1])}  # [None, None] in the signature

    module = Open()
    tf.saved_model.save(module, str(tmp_path / "open"), signatures={"serving_default": module.serve})
    plan = preflight(config(users, tmp_path, model__path=str(tmp_path / "open"),
                            model__outputs={"embedding": {"feature": "output"}}))
    assert plan.embedding_dim == DENSE_DIM + IDS_LEN
    assert plan.outputs[0].shape == (DENSE_DIM + IDS_LEN,)
