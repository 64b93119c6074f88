"""What a new user hits first: the rejects pointed at (summary, ``inspect --key``), a dry run
that lists every problem at once, and exports with several outputs (verify checks each one,
the plot draws the embedding and summarises the others)."""
import io
import json
import os
import re

import numpy as np
import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.tools.inspection import main as inspect_main
from pipeline.job import run_export
from pipeline.tools.plots import plot_export, sample_embeddings
from transforms.outputdir import read_manifest
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline.tools.verify import verify_export
from pipeline_fixtures import (BAD_ROW_REASONS, EMB_DIM, SCORE_ID, build_tiny_model, cache_dir, shard_records,
                               tiny_config, tiny_model, write_users)
from twml.encode import EncodedRecords
from twml.io.tfrecord import frame_tfrecords
from twml.schema import data_thrift, deserialize, serialize, tensor_thrift

DENSE_NAN_KEY = 10 ** 12 + 3   # write_users(bad=True): this user's dense features hold a NaN


def export(config):
    """Plan the config (checks included), run it, return the manifest."""
    return run_export(preflight(config))


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def export_with_rejects(tmp_path_factory):
    """An export (embedding + score) of 200 users plus the BAD_ROW_REASONS rows, made by the CLI."""
    root = tmp_path_factory.mktemp("newuser")
    write_users(str(root / "in"), 200, files=2, bad=True)
    raw = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "out"), num_shards=2,
                      max_reject_fraction=0.1).model_dump(mode="json")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, out, err = run_cli("run", "--config", str(path))
    assert code == 0, err
    return root, str(path), out


# -- 5. point at the rejects -----------------------------------------------------------------------

def test_summary_gives_the_rejected_path_and_counts_by_reason(export_with_rejects):
    root, _, out = export_with_rejects
    assert f"rows rejected {len(BAD_ROW_REASONS)}" in out
    for reason in BAD_ROW_REASONS.values():
        assert f"  {reason}: 1" in out
    assert f"  rejected rows in: {root / 'out'}/_rejected/ (1 file; inspect --key K explains a user's)" in out


def test_inspect_key_of_a_rejected_user_says_why_and_where(export_with_rejects, capsys):
    root, _, _ = export_with_rejects
    assert inspect_main([str(root / "out"), "--key", str(DENSE_NAN_KEY)]) == 1
    captured = capsys.readouterr()
    row = json.loads(captured.out)
    assert row["rejected"] is True and row["user_id"] == DENSE_NAN_KEY and row["reason"] == "non_finite:dense"
    assert row["file"] == "_rejected/part-00000-of-00001.parquet"
    assert row["source_file"].endswith("users-000.parquet") and isinstance(row["source_row"], int)
    assert row["country"] == "bad"   # the input's unread columns are kept in the rejected row
    assert re.fullmatch(rf"inspect: key {DENSE_NAN_KEY} was rejected: non_finite:dense \(input \S+users-000.parquet "
                        rf"row \d+\); its row is {re.escape(str(root / 'out'))}/_rejected/part-00000-of-00001.parquet "
                        r"row \d+", captured.err.strip())
    assert inspect_main([str(root / "out"), "--key", "77"]) == 1   # neither exported nor rejected
    assert "no record with key 77" in capsys.readouterr().err
    assert inspect_main([str(root / "out"), "--key", "not-a-number"]) == 1
    assert "is not an integer, and this export has int64 keys" in capsys.readouterr().err


# -- 6. a dry run lists every problem at once ---------------------------------------------------

def test_preflight_reports_every_problem_at_once(export_with_rejects, tmp_path):
    root, path, _ = export_with_rejects
    raw = yaml.safe_load(open(path))
    raw["model"]["signature"] = "predict"                    # not in the SavedModel
    raw["input"]["key"] = "uid"                               # no such column
    raw["output"]["path"] = str(root / "out")                 # holds the export made above
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, out, err = run_cli("run", "--config", str(bad), "--dry-run")
    assert code == 2
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3, err
    assert "dry run: 3 problem(s) would stop this run" in err
    assert "model.signature 'predict' is not in the SavedModel" in problems[0]
    assert "column 'uid' (input.key) does not exist" in problems[1]
    assert "already holds" in problems[2] and "--overwrite" in problems[2]
    code, _, err = run_cli("run", "--config", str(bad))      # a real run says the same, before launching
    assert code == 2 and err.startswith("embedding-export: 3 problems:\n  - model.signature 'predict'")


def test_one_file_with_several_column_problems_names_them_all(export_with_rejects):
    root, _, _ = export_with_rejects
    config = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "other"))
    # A list column as the key, and a string column for a float input.
    config = config.model_copy(update={"input": config.input.model_copy(update={"key": "dense"}),
                                       "model": config.model.model_copy(update={"inputs": {
                                           **config.model.inputs,
                                           "dense": config.model.inputs["dense"].model_copy(
                                               update={"column": "country"})}})})
    with pytest.raises(PreflightError) as err:
        preflight(config)
    assert len(err.value.problems) == 2
    assert "key column 'dense' has type list" in err.value.problems[0]
    assert "column 'country' (feeds float32 input 'dense') has type string" in err.value.problems[1]


# -- 7. several outputs ----------------------------------------------------------------------------

def _rewrite_first_record(out_dir: str, change) -> None:
    """Replace the first record of shard 0 by ``change(record)`` (a thriftpy2 DataRecord) and fix
    the manifest's byte count, so that only the record itself is wrong."""
    with open(os.path.join(out_dir, "_MANIFEST.json")) as f:
        manifest = json.load(f)
    records = shard_records(out_dir, manifest)[0]
    record = deserialize(data_thrift.DataRecord, records[0])
    change(record)
    records[0] = serialize(record)
    data = frame_tfrecords(EncodedRecords.from_list(records)).tobytes()
    with open(os.path.join(out_dir, manifest["shards"][0]["file"]), "wb") as f:
        f.write(data)
    manifest["shards"][0].update(bytes=len(data), crc32c=None)
    with open(os.path.join(out_dir, "_MANIFEST.json"), "w") as f:
        json.dump(manifest, f)


def _score(values: np.ndarray):
    return tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=0, content=np.asarray(values, "<f4").tobytes(), shape=list(np.shape(values))))


@pytest.mark.parametrize("change,message", [
    (lambda r: r.tensors.__setitem__(SCORE_ID, _score(np.float32(np.nan))),
     "output user.score has non-finite values"),
    (lambda r: r.tensors.__setitem__(SCORE_ID, _score(np.zeros(3, np.float32))),
     "output user.score has shape [3], the manifest says []"),
    (lambda r: r.tensors.pop(SCORE_ID), "output user.score is missing"),
])
def test_verify_checks_every_output(tmp_path, change, message):
    write_users(str(tmp_path / "in"), 60, files=1)
    out = str(tmp_path / "out")
    export(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), out, num_shards=2))
    report = verify_export(out)
    assert report.ok and report.outputs_checked == ["output", "user.score"]
    _rewrite_first_record(out, change)
    report = verify_export(out)
    assert not report.ok
    assert [str(p) for p in report.problems] == [f"part-00000-of-00002.tfrecord record 0: {message} (key "
                                                 f"{report_key(out)})"]


def report_key(out: str) -> int:
    records = shard_records(out, json.load(open(os.path.join(out, "_MANIFEST.json"))))[0]
    return next(iter(deserialize(data_thrift.DataRecord, records[0]).discreteFeatures.values()))


def test_plot_draws_the_embedding_and_summarises_the_other_outputs(tmp_path):
    import matplotlib.image
    # Outputs written score first: the embedding is the one model.embedding names, not the 1-d score.
    model = os.path.join(cache_dir(), "model-renamed")
    if not os.path.exists(os.path.join(model, "saved_model.pb")):
        build_tiny_model(model, names=("user_vec", "score"))
    write_users(str(tmp_path / "in"), 80, files=1)
    out = str(tmp_path / "out")
    config = tiny_config(str(tmp_path / "in" / "*.parquet"), model, out, num_shards=2)
    raw = config.model_dump(mode="json")
    raw["model"]["outputs"] = {"score": {"feature": "user.score"}, "user_vec": {"feature": "user.vec"}}
    raw["model"]["embedding"] = "user_vec"
    from pipeline.config import parse_config
    export(parse_config(raw))
    manifest = read_manifest(out)
    sample = sample_embeddings(out, manifest, 50)
    assert sample.embeddings.shape == (50, EMB_DIM)        # the embedding, not the score
    assert list(sample.others) == ["user.score"] and sample.others["user.score"].shape == (50, 1)
    png = tmp_path / "plot.png"
    summary = plot_export(out, str(png), sample=50)
    assert "PCA" in summary and "other outputs: user.score median" in summary
    image = matplotlib.image.imread(str(png))
    assert image.shape[1] == 2266   # four panels (17 * 4 / 3 inches at 100 dpi), the fourth for the score


def test_every_input_and_output_that_does_not_fit_is_named(export_with_rejects):
    root, _, _ = export_with_rejects
    config = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "other"))
    raw = config.model_dump(mode="json")
    raw["model"]["inputs"]["dense"]["length"] = 3          # dense is [None, 8]: a fixed list, no length
    raw["model"]["inputs"]["sparse_ids"]["length"] = 9     # the signature says 4
    raw["model"]["outputs"] = {"score": {"feature": "s"}, "embedding": {"feature": "output"}}  # 1-d first
    from pipeline.config import parse_config
    with pytest.raises(PreflightError) as err:
        preflight(parse_config(raw))
    assert [p.split(":")[0].split(" ")[0] for p in err.value.problems] == [
        "model.inputs.dense.length", "model.inputs.sparse_ids.length", "model.outputs.score"]
