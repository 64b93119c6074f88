"""The whole export on the in-process runner (FnApiRunner): every format, the manifest, rejects, overwrite."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_config
from pipeline.job import run_export
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline_fixtures import (check_export, expected_embeddings, shard_records, sorted_records, tiny_config,
                               tiny_model, user_table, write_users)
from transforms.errors import ExportError
from twml.decode import decode_embeddings
from twml.feature_ids import feature_id

SHARDS = 4
USERS = 1500
KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("users")
    paths = write_users(str(root / "in"), USERS, files=2, bad=True)
    return str(root / "in" / "*.parquet"), paths, expected_embeddings(tiny_model(), paths)


@pytest.fixture(scope="module")
def tfrecord_export(inputs, tmp_path_factory):
    pattern, _, expected = inputs
    out = str(tmp_path_factory.mktemp("export") / "tfrecord")
    manifest = run_export(preflight(tiny_config(pattern, tiny_model(), out, num_shards=SHARDS)))
    return out, manifest


def test_tfrecord_export_end_to_end(inputs, tfrecord_export):
    out, manifest = tfrecord_export
    records = check_export(out, manifest, inputs[2], USERS, SHARDS)
    import tensorflow as tf
    for shard, entry in enumerate(manifest["shards"]):
        assert entry["file"] == f"part-{shard:05d}-of-{SHARDS:05d}.tfrecord"
        read = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(out, entry["file"]))]
        assert read == records[shard]


@pytest.mark.parametrize("fmt,compression", [("tfrecord", "gzip"), ("block", "none"), ("block", "gzip"),
                                             ("parquet", "none")])
def test_other_formats_hold_the_same_records(inputs, tfrecord_export, tmp_path, fmt, compression):
    pattern, _, expected = inputs
    out = str(tmp_path / "out")
    manifest = run_export(preflight(tiny_config(pattern, tiny_model(), out, num_shards=SHARDS, fmt=fmt,
                                      compression=compression)))
    assert manifest["format"] == fmt and manifest["compression"] == compression
    suffix = {"tfrecord": ".tfrecord", "block": "", "parquet": ".parquet"}[fmt]
    suffix += ".gz" if compression == "gzip" else ""
    assert [s["file"] for s in manifest["shards"]] == [f"part-{i:05d}-of-{SHARDS:05d}{suffix}" for i in range(SHARDS)]
    records = check_export(out, manifest, expected, USERS, SHARDS)
    reference = shard_records(*tfrecord_export)
    assert sorted_records(records) == sorted_records(reference)
    if fmt == "tfrecord":
        import tensorflow as tf
        path = os.path.join(out, manifest["shards"][0]["file"])
        assert len(list(tf.data.TFRecordDataset(path, compression_type="GZIP"))) == manifest["shards"][0]["records"]
    if fmt == "parquet":
        table = pq.read_table(os.path.join(out, manifest["shards"][1]["file"]))
        assert table.column_names == ["key", "embedding", "data_record"]
        keys, emb = decode_embeddings(table.column("data_record").to_pylist(), KEY_ID, EMB_ID)
        assert keys.tolist() == table.column("key").to_pylist()
        np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), emb)


def test_rerun_gives_identical_files(inputs, tfrecord_export, tmp_path):
    out, manifest = tfrecord_export
    again = run_export(preflight(tiny_config(inputs[0], tiny_model(), str(tmp_path / "again"), num_shards=SHARDS)))
    assert [(s["records"], s["crc32c"]) for s in again["shards"]] == [(s["records"], s["crc32c"])
                                                                       for s in manifest["shards"]]


def test_partition_by_column(tmp_path):
    import pyarrow as pa
    table = user_table(np.arange(200), 4)
    table = table.append_column("bucket", pa.array(np.arange(200) % 3, pa.int32()))
    os.makedirs(tmp_path / "in")
    pq.write_table(table, str(tmp_path / "in" / "u.parquet"))
    cfg = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(tmp_path / "out"), num_shards=3)
    raw = cfg.model_dump(mode="json")
    raw["partition"] = {"num_shards": 3, "by": "column", "column": "bucket"}
    manifest = run_export(preflight(parse_config(raw)))
    records = shard_records(str(tmp_path / "out"), manifest)
    for shard, recs in records.items():
        keys, _ = decode_embeddings(recs, KEY_ID, EMB_ID)
        assert sorted(keys.tolist()) == [k for k in range(200) if k % 3 == shard]


def test_existing_output_is_refused_then_overwritten_keeping_foreign_files(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = tiny_config(inputs[0], tiny_model(), str(out), num_shards=2)
    with pytest.raises(PreflightError, match=r"already holds 1 file\(s\) \(notes.txt\); pass --overwrite"):
        run_export(preflight(cfg))
    run_export(preflight(cfg, overwrite=True))
    manifest = run_export(preflight(tiny_config(inputs[0], tiny_model(), str(out), num_shards=3), overwrite=True))
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_SUCCESS", "_rejected", "notes.txt",
                                       "part-00000-of-00003.tfrecord", "part-00001-of-00003.tfrecord",
                                       "part-00002-of-00003.tfrecord"]
    assert manifest["config"]["output"]["overwrite"] is True
    assert (out / "notes.txt").read_text() == "mine"


def test_too_many_rejects_fail_the_export_with_the_reasons(inputs, tmp_path):
    out = tmp_path / "out"
    cfg = tiny_config(inputs[0], tiny_model(), str(out), num_shards=2, max_reject_fraction=0.001)
    with pytest.raises(ExportError, match=r"8 of 1508 rows rejected .* more than output.max_reject_fraction 0.001"):
        run_export(preflight(cfg))
    assert os.listdir(out) == ["_rejected"]


def test_empty_input_gives_every_shard_empty(tmp_path):
    os.makedirs(tmp_path / "in")
    pq.write_table(user_table(np.arange(0), 0), str(tmp_path / "in" / "empty.parquet"))
    for fmt in ("tfrecord", "parquet"):
        out = str(tmp_path / fmt)
        manifest = run_export(preflight(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=3,
                                          fmt=fmt)))
        assert manifest["rows_read"] == manifest["rows_written"] == 0
        assert [s["records"] for s in manifest["shards"]] == [0, 0, 0]
        for entry in manifest["shards"]:
            assert os.path.exists(os.path.join(out, entry["file"]))
        if fmt == "parquet":
            assert pq.read_table(os.path.join(out, manifest["shards"][0]["file"])).num_rows == 0


def test_failed_run_raises_and_leaves_no_scratch_files(inputs, tmp_path):
    import shutil
    model = str(tmp_path / "model")
    shutil.copytree(tiny_model(), model)
    out = tmp_path / "out"
    cfg = tiny_config(inputs[0], model, str(out), num_shards=2)
    plan = preflight(cfg)  # the signature is fine ...
    shutil.rmtree(os.path.join(model, "variables"))  # ... but the weights vanish before the run
    with pytest.raises(Exception, match="variables"):
        run_export(plan)
    assert not out.exists() or os.listdir(out) == []


def test_build_pipeline_on_a_test_pipeline(inputs, tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from pipeline.job import build_pipeline
    cfg = tiny_config(inputs[0], tiny_model(), str(tmp_path / "out"), num_shards=2)
    with BeamTestPipeline(runner="FnApiRunner") as p:
        manifest = build_pipeline(p, preflight(cfg))
        counts = manifest | beam.Map(lambda m: (m["rows_read"], m["rows_written"], m["rows_rejected"],
                                                [s["file"] for s in m["shards"]]))
        assert_that(counts, equal_to([(USERS + 8, USERS, 8, ["part-00000-of-00002.tfrecord",
                                                               "part-00001-of-00002.tfrecord"])]))
    assert (tmp_path / "out" / "_SUCCESS").exists()
