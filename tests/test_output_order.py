"""The written order of ``model.outputs`` is the record order, and the embedding is the one the
config names (or the first written), whatever the sorted order of the names (issue: a round trip
through ``yaml.safe_dump`` sorted them, and a 1-d score became "the embedding")."""
import os

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, apply_overrides, load_config
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.plan import SignatureTensor, _resolve_outputs
from transforms.errors import PreflightError
from pipeline.tools.verify import verify_export
from pipeline_fixtures import EMB_DIM, build_tiny_model, cache_dir, tiny_config, write_users
from twml.decode import decode_data_record
from twml.feature_ids import feature_id
from twml.io.tfrecord import read_tfrecords

VEC_ID = feature_id("user.vec")
SCORE_ID = feature_id("user.score")


def _config_text(outputs: str, embedding: str = "") -> str:
    return f"""
input: {{path: "in/*.parquet", key: user_id}}
model:
  path: model
  inputs:
    dense: {{column: dense}}
    sparse_ids: {{column: sparse_ids, length: 4}}
  outputs:
{outputs}
{embedding}
output: {{path: out}}
runner: {{name: FnApiRunner}}
"""


WRITTEN = "    user_vec: {feature: user.vec}\n    score: {feature: user.score}"


def test_apply_overrides_keeps_the_written_order():
    raw = yaml.safe_load(_config_text(WRITTEN))
    assert list(apply_overrides(raw, [])["model"]["outputs"]) == ["user_vec", "score"]
    out = apply_overrides(raw, ["model.batch_size=64", "model.outputs.aux={feature: a.b}"])
    assert list(out["model"]["outputs"]) == ["user_vec", "score", "aux"]
    assert list(raw["model"]["outputs"]) == ["user_vec", "score"]  # the input dict is not changed


def test_load_config_keeps_the_written_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_config_text(WRITTEN))
    for overrides in ([], ["output.format=block"]):
        model = load_config(str(path), overrides).model
        assert list(model.outputs) == ["user_vec", "score"]
        assert model.embedding_output == "user_vec"
        assert model.ordered_outputs == ["user_vec", "score"]


def test_config_names_the_embedding(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_config_text("    score: {feature: user.score}\n    user_vec: {feature: user.vec}",
                                 "  embedding: user_vec"))
    model = load_config(str(path)).model
    assert model.embedding_output == "user_vec"
    assert model.ordered_outputs == ["user_vec", "score"]
    path.write_text(_config_text(WRITTEN, "  embedding: nope"))
    with pytest.raises(ConfigError, match="embedding 'nope' is not one of model.outputs"):
        load_config(str(path))


def test_a_second_int64_output_is_not_taken_for_the_embedding(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_config_text("    user_vec: {feature: user.vec}\n    aux_id: {feature: user.aux}"))
    config = load_config(str(path))
    sig = {"user_vec": SignatureTensor("user_vec", "float32", (None, 8)),
           "aux_id": SignatureTensor("aux_id", "int64", (None,))}
    specs = _resolve_outputs(config, sig)
    assert [s.name for s in specs] == ["user_vec", "aux_id"]
    assert specs[0].shape == (8,) and specs[1].dtype == "int64"
    sig["user_vec"] = SignatureTensor("user_vec", "float32", (None,))
    with pytest.raises(PreflightError, match="user_vec is the embedding"):
        _resolve_outputs(config, sig)


@pytest.fixture(scope="module")
def vec_model():
    path = os.path.join(cache_dir(), "model-user-vec")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        build_tiny_model(path, names=("user_vec", "score"))
    return path


@pytest.mark.parametrize("written,embedding", [(["user_vec", "score"], None), (["score", "user_vec"], "user_vec")])
def test_export_keeps_the_order_everywhere(tmp_path, vec_model, written, embedding):
    """Records, manifest and verify all see user_vec as the embedding and score after it."""
    write_users(str(tmp_path / "in"), 300, files=1)
    features = {"user_vec": "user.vec", "score": "user.score"}
    config = tiny_config(str(tmp_path / "in" / "*.parquet"), vec_model, str(tmp_path / "out"))
    model = config.model.model_dump()
    model["outputs"] = {name: {"feature": features[name]} for name in written}
    model["embedding"] = embedding
    config = config.model_copy(update={"model": type(config.model).model_validate(model)})
    manifest = run_export(preflight(config))
    assert manifest["embedding_feature"] == {"name": "user.vec", "id": VEC_ID}
    assert manifest["embedding_dim"] == EMB_DIM
    assert [o["output"] for o in manifest["outputs"]] == ["user_vec", "score"]
    assert list(manifest["config"]["model"]["outputs"]) == written
    for entry in manifest["shards"]:
        for raw in read_tfrecords(str(tmp_path / "out" / entry["file"])):
            record = decode_data_record(raw)
            assert list(record.tensors) == [VEC_ID, SCORE_ID]
            assert record.tensors[VEC_ID].rawTypedTensor.shape == [EMB_DIM]
    report = verify_export(str(tmp_path / "out"))
    assert report.ok, report.to_dict()
