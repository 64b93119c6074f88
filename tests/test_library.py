"""The public transforms on a Beam user's own collections (TestPipeline + assert_that, in-memory
inputs), RunInference with SavedModelHandler, and specs made from a config and the model alone."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import transforms
from pipeline.tools.verify import verify_export
from pipeline_fixtures import (BAD_ROW_REASONS, DENSE_DIM, EMB_DIM, IDS_LEN, bad_rows, model_outputs, padded_ids,
                               tiny_config, tiny_model, user_table, write_users)
from transforms import (EmbedTables, ExportEmbeddings, ModelSpecs, PreflightError, SavedModelHandler,
                        WriteDataRecordShards, model_specs, read_manifest)
from twml.decode import decode_embeddings
from twml.feature_ids import feature_id
from twml.io.tfrecord import read_tfrecords

FN_API = "FnApiRunner"  # TestPipeline ignores --runner in argv
KEY_ID = feature_id("meta.user_id")


def specs() -> ModelSpecs:
    return model_specs({"path": tiny_model(), "inputs": {"dense": {"column": "dense"},
                                                        "sparse_ids": {"column": "sparse_ids", "length": IDS_LEN}},
                        "outputs": {"embedding": {"feature": "output"}, "score": {"feature": "user.score"}}})


def handler(**batching) -> SavedModelHandler:
    s = specs()
    return SavedModelHandler(s.model.path, s.model.signature, s.inputs, s.outputs, **batching)


def expected(table: pa.Table):
    dense = np.array(table.column("dense").to_pylist(), np.float32)
    ids = padded_ids(table.column("sparse_ids").to_pylist())
    return model_outputs(tiny_model(), dense, ids)


# -- specs ---------------------------------------------------------------------------------------

def test_specs_come_from_the_config_and_the_model_alone(tmp_path):
    """No input file and no output directory: only the model's signature is read."""
    s = specs()
    assert [(i.name, i.column, i.dtype, i.kind, i.length) for i in s.inputs] == [
        ("dense", "dense", "float32", "fixed", DENSE_DIM), ("sparse_ids", "sparse_ids", "int64", "padded", IDS_LEN)]
    assert [(o.name, o.feature, o.feature_id, o.shape) for o in s.outputs] == [
        ("embedding", "output", feature_id("output"), (EMB_DIM,)), ("score", "user.score", feature_id("user.score"), ())]
    assert (s.embedding_dim, s.model.signature, s.model.batch_size) == (EMB_DIM, "serving_default", 4096)
    # the same from a validated run config whose input and output paths do not exist
    config = tiny_config(str(tmp_path / "no-such-input" / "*.parquet"), tiny_model(), str(tmp_path / "no-such-out"))
    again = model_specs(config.model)
    assert (again.inputs, again.outputs, again.embedding_dim) == (s.inputs, s.outputs, s.embedding_dim)
    assert again.model.batch_size == 128
    assert not os.path.exists(tmp_path / "no-such-out")


def test_specs_name_the_config_key_that_does_not_fit():
    with pytest.raises(PreflightError, match=r"model.inputs do not match .* not configured: \['sparse_ids'\]"):
        model_specs({"path": tiny_model(), "inputs": {"dense": {"column": "dense"}},
                     "outputs": {"embedding": {"feature": "output"}}})


def test_the_public_names_are_those_of_transforms_init():
    assert "ExportEmbeddings" in transforms.__all__ and "WriteDataRecordShards" in transforms.__all__
    assert all(not name.startswith("_") for name in transforms.__all__)
    with pytest.raises(AttributeError):
        transforms.publish  # noqa: B018  (finalize's function is not public)


# -- SavedModelHandler under RunInference --------------------------------------------------------

def test_saved_model_handler_is_a_model_handler_for_run_inference_on_arrow_tables():
    tables = [user_table(np.arange(0, 30), 1), user_table(np.arange(30, 75), 2)]
    want = {int(k): e for t in tables for k, e in zip(t.column("user_id").to_pylist(), expected(t)["embedding"])}
    assert isinstance(handler(), ModelHandler)

    def rows(result: PredictionResult):
        keys = result.example.column("user_id").to_pylist()
        return [(k, np.round(e, 5).tolist()) for k, e in zip(keys, result.inference["embedding"])]

    with BeamTestPipeline(runner=FN_API) as p:
        got = (p | beam.Create(tables) | RunInference(handler(max_batch_size=2)) | beam.FlatMap(rows))
        assert_that(got, equal_to([(k, np.round(e, 5).tolist()) for k, e in want.items()]))


def test_saved_model_handler_on_keyed_numpy_examples():
    table = user_table(np.arange(100, 120), 3)
    dense = np.array(table.column("dense").to_pylist(), np.float32)
    ids = padded_ids(table.column("sparse_ids").to_pylist())
    want = model_outputs(tiny_model(), dense, ids)
    examples = [(100 + i, {"dense": dense[i], "sparse_ids": ids[i]}) for i in range(len(dense))]
    with BeamTestPipeline(runner=FN_API) as p:
        got = (p | beam.Create(examples)
               | RunInference(KeyedModelHandler(handler(min_batch_size=4, max_batch_size=8)))
               | beam.Map(lambda kv: (kv[0], np.round(kv[1].inference["score"], 4).item())))
        assert_that(got, equal_to([(100 + i, np.round(s, 4).item()) for i, s in enumerate(want["score"])]))


# -- EmbedTables ---------------------------------------------------------------------------------

def test_embed_tables_embeds_good_rows_and_rejects_bad_ones_with_reasons():
    good = user_table(np.arange(0, 50), 4)
    bad = bad_rows(10**6)
    schema = pa.schema([("user_id", pa.int64()), ("dense", pa.list_(pa.float32())),
                        ("sparse_ids", pa.list_(pa.int64()))])
    want = expected(good)["embedding"]
    with BeamTestPipeline(runner=FN_API) as p:
        result = (p | beam.Create([good, bad.select(schema.names)])
                  | EmbedTables(handler(), "user_id", schema, batch_size=16))
        embedded = result.embedded | "Users" >> beam.FlatMap(
            lambda b: [(int(k), np.round(e, 5).tolist()) for k, e in zip(b.keys, b.embedding)])
        assert_that(embedded, equal_to([(k, np.round(e, 5).tolist()) for k, e in zip(range(50), want)]),
                    label="CheckEmbedded")
        reasons = result.rejected | "Reasons" >> beam.FlatMap(lambda t: t.column("reason").to_pylist())
        assert_that(reasons, equal_to(list(BAD_ROW_REASONS.values())), label="CheckRejected")
        rows = result.rows_read | "Rows" >> beam.CombineGlobally(sum)
        assert_that(rows, equal_to([50 + len(BAD_ROW_REASONS)]), label="CheckRows")


def test_embed_tables_takes_dict_rows():
    rows = [{"user_id": 7, "dense": [0.5] * DENSE_DIM, "sparse_ids": [3, 4]},
            {"user_id": 8, "dense": [1.0] * DENSE_DIM, "sparse_ids": []}]
    schema = pa.schema([("user_id", pa.int64()), ("dense", pa.list_(pa.float32())),
                        ("sparse_ids", pa.list_(pa.int64()))])
    want = expected(pa.Table.from_pylist(rows, schema=schema))["embedding"]
    with BeamTestPipeline(runner=FN_API) as p:
        result = p | beam.Create(rows) | EmbedTables(handler(), "user_id", schema)
        got = result.embedded | beam.FlatMap(lambda b: [(int(k), np.round(e, 5).tolist())
                                                        for k, e in zip(b.keys, b.embedding)])
        assert_that(got, equal_to([(7, np.round(want[0], 5).tolist()), (8, np.round(want[1], 5).tolist())]))


# -- WriteDataRecordShards -----------------------------------------------------------------------

def vectors(n, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(int(k), rng.normal(size=dim).astype(np.float32)) for k in rng.permutation(np.arange(1, n + 1) * 977)]


def read_back(out, manifest):
    got = {}
    for shard in manifest["shards"]:
        keys, emb = decode_embeddings(read_tfrecords(os.path.join(out, shard["file"])), KEY_ID, feature_id("output"))
        got.update({int(k): e for k, e in zip(keys, emb)})
    return got


def test_write_datarecord_shards_writes_the_output_directory_from_keyed_vectors(tmp_path):
    out = str(tmp_path / "out")
    pairs = vectors(300)
    with BeamTestPipeline(runner=FN_API) as p:
        manifest = p | beam.Create(pairs) | WriteDataRecordShards(out, 3, embedding_dim=4, batch_size=64)
        assert_that(manifest | beam.Map(lambda m: (m["rows_written"], m["num_shards"], m["embedding_dim"])),
                    equal_to([(300, 3, 4)]))
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_SUCCESS", "part-00000-of-00003.tfrecord",
                                       "part-00001-of-00003.tfrecord", "part-00002-of-00003.tfrecord"]
    manifest = read_manifest(out, require_success=True)
    assert manifest.rows_written == 300 and manifest.embedding_feature_name == "output"
    got = read_back(out, manifest.raw)
    assert set(got) == {k for k, _ in pairs}
    for key, vector in pairs:
        np.testing.assert_array_equal(got[key], vector)
    assert verify_export(out).ok


def test_write_datarecord_shards_refuses_an_earlier_export_without_overwrite(tmp_path):
    out = str(tmp_path / "out")
    for overwrite in (False, True):
        with BeamTestPipeline(runner=FN_API) as p:
            _ = p | beam.Create(vectors(20)) | WriteDataRecordShards(out, 2, "parquet", embedding_dim=4,
                                                                     overwrite=overwrite)
    with pytest.raises(PreflightError, match="already holds"):
        with BeamTestPipeline(runner=FN_API) as p:
            _ = p | beam.Create(vectors(5)) | WriteDataRecordShards(out, 2, embedding_dim=4)
    assert verify_export(out).ok and read_manifest(out).format == "parquet"


def test_run_inference_into_write_datarecord_shards(tmp_path):
    """RunInference (keyed) -> the sink: PredictionResults of every output, one record per user."""
    table = user_table(np.arange(500, 540), 5)
    dense = np.array(table.column("dense").to_pylist(), np.float32)
    ids = padded_ids(table.column("sparse_ids").to_pylist())
    want = model_outputs(tiny_model(), dense, ids)
    out = str(tmp_path / "out")
    h = handler(max_batch_size=16)
    with BeamTestPipeline(runner=FN_API) as p:
        _ = (p | beam.Create([(500 + i, {"dense": dense[i], "sparse_ids": ids[i]}) for i in range(40)])
             | RunInference(KeyedModelHandler(h))
             | WriteDataRecordShards(out, 2, outputs=h.outputs))
    manifest = read_manifest(out, require_success=True)
    assert [o["feature"] for o in manifest.raw["outputs"]] == ["output", "user.score"]
    got = read_back(out, manifest.raw)
    for i in range(40):
        np.testing.assert_allclose(got[500 + i], want["embedding"][i], rtol=1e-5)
    assert verify_export(out).ok


# -- ExportEmbeddings ----------------------------------------------------------------------------

def test_export_embeddings_is_the_whole_export_as_one_transform(tmp_path):
    from pipeline.plan import preflight
    write_users(str(tmp_path / "in"), 200, files=2, bad=True)
    plan = preflight(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(tmp_path / "out"),
                                 num_shards=2, max_reject_fraction=0.1))
    with BeamTestPipeline(runner=FN_API) as p:
        manifest = p | ExportEmbeddings(plan)
        assert_that(manifest | beam.Map(lambda m: (m["rows_read"], m["rows_written"], m["rows_rejected"])),
                    equal_to([(208, 200, 8)]))
    on_disk = json.loads((tmp_path / "out" / "_MANIFEST.json").read_text())
    assert on_disk["run_id"] == plan.run_id and verify_export(str(tmp_path / "out")).ok
