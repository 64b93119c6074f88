"""The export with its input, model and output on HDFS (Hadoop's MiniDFSCluster on loopback, Beam's
hdfs:// file system over WebHDFS): complete and equal to the local export, read back by verify and
inspect, published file by file, and a kill mid-publish leaves no _SUCCESS."""
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from apache_beam.io.filesystems import FileSystems

from engines_support import ROOT, download_tree, upload_tree, use_hdfs
from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import (check_export, expected_embeddings, shard_records, sorted_records, tiny_config,
                               tiny_model, write_users)
from transforms.errors import PreflightError
from transforms.file_listing import list_files
from transforms.model_files import local_model_dir, model_files, tensorflow_opens
from transforms.pause_points import PAUSE_AT_ENV, PAUSE_DIR_ENV

SHARDS = 4
USERS = 1200
FNAPI = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def remote(hdfs, tmp_path_factory):
    """Inputs and model uploaded to a fresh HDFS directory, one export there and one local."""
    root = tmp_path_factory.mktemp("hdfs")
    paths = write_users(str(root / "in"), USERS, files=4, bad=True, row_group_size=150)
    base = hdfs.url(f"/t-{uuid.uuid4().hex[:8]}")
    upload_tree(str(root / "in"), base + "/in")
    upload_tree(tiny_model(), base + "/model")
    local_out = str(root / "local")
    local = run_export(preflight(tiny_config(str(root / "in" / "*.parquet"), tiny_model(), local_out,
                                             num_shards=SHARDS, batch_size=64, runner_options=FNAPI)))
    cfg = tiny_config(base + "/in/*.parquet", base + "/model", base + "/out", num_shards=SHARDS, batch_size=64,
                      runner_options=FNAPI)
    use_hdfs(hdfs)  # the local run's workers set Beam's FileSystems options to its own (no HDFS)
    manifest = run_export(preflight(cfg, beam_args=hdfs.beam_args), beam_args=hdfs.beam_args)
    copy = str(root / "copy")
    download_tree(base + "/out", copy)
    return {"base": base, "cfg": cfg, "manifest": manifest, "copy": copy, "root": root,
            "expected": expected_embeddings(tiny_model(), paths), "local": (local_out, local)}


@pytest.fixture(autouse=True)
def hdfs_file_system(hdfs):
    """Beam's FileSystems pointed at the HDFS (as the command line does before it plans a run)."""
    use_hdfs(hdfs)


def test_hdfs_export_is_complete_and_equal_to_the_local_one(remote):
    check_export(remote["copy"], remote["manifest"], remote["expected"], USERS, SHARDS)
    got = sorted_records(shard_records(remote["copy"], remote["manifest"]))
    assert got == sorted_records(shard_records(*remote["local"]))
    # No scratch left: the run directory under _temporary/ is removed like the local one.
    assert not FileSystems.exists(remote["base"] + "/out/_temporary")
    assert [s["records"] for s in remote["manifest"]["shards"]] == [s["records"] for s in remote["local"][1]["shards"]]


def test_verify_and_inspect_read_the_hdfs_export(remote, hdfs, capsys):
    out = remote["base"] + "/out"
    assert cli_main(["verify", out, "--json", "--", *hdfs.beam_args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    key = sorted(remote["expected"])[0]
    assert cli_main(["inspect", out, "--key", str(key), "--", *hdfs.beam_args]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(records) == 1 and json.dumps(records[0]).count(str(key)) >= 1


def test_the_model_on_hdfs_is_copied_once_per_process(remote):
    model = remote["base"] + "/model"
    assert not tensorflow_opens(model)  # TF 2.21 has no hdfs:// file system
    names = {name for name, _ in model_files(model)}
    assert {"saved_model.pb", "variables/variables.index"} <= names
    first = local_model_dir(model)
    assert local_model_dir(model) == first  # once per process
    for name in names:
        with open(os.path.join(first, name), "rb") as copied, open(os.path.join(tiny_model(), name), "rb") as orig:
            assert copied.read() == orig.read()
    assert local_model_dir(tiny_model()) == tiny_model()  # a local model is loaded where it is


def _write_config(cfg, path) -> str:
    with open(path, "w") as handle:
        yaml.safe_dump(cfg.model_dump(mode="json"), handle)
    return str(path)


def test_dry_run_checks_that_workers_can_copy_the_model(remote, hdfs, tmp_path, capsys):
    config = _write_config(remote["cfg"].model_copy(update={"output": remote["cfg"].output.model_copy(
        update={"path": remote["base"] + "/dry"})}), tmp_path / "c.yaml")
    assert cli_main(["run", "--config", config, "--dry-run", "--", *hdfs.beam_args]) == 0
    assert "each worker process copies the model to a local directory" in capsys.readouterr().out
    # A directory holding saved_model.pb but no variables would fail on every worker: the dry run says so.
    broken = remote["base"] + "/broken_model"
    with FileSystems.open(remote["base"] + "/model/saved_model.pb") as src, FileSystems.create(
            broken + "/saved_model.pb") as dst:
        dst.write(src.read())
    assert cli_main(["run", "--config", config, "--dry-run", "--set", f"model.path={broken}",
                     "--", *hdfs.beam_args]) == 2
    assert "no variables/variables.index" in capsys.readouterr().err


def test_a_second_run_needs_overwrite_and_then_replaces_the_export(remote, hdfs):
    with pytest.raises(PreflightError, match="--overwrite"):
        preflight(remote["cfg"], beam_args=hdfs.beam_args)
    plan = preflight(remote["cfg"], overwrite=True, beam_args=hdfs.beam_args)
    manifest = run_export(plan, beam_args=hdfs.beam_args)
    assert manifest["run_id"] != remote["manifest"]["run_id"]
    copy = str(remote["root"] / "copy2")
    names = download_tree(remote["base"] + "/out", copy)
    assert not any(n.startswith("_temporary/") for n in names)
    check_export(copy, manifest, remote["expected"], USERS, SHARDS)


def test_a_kill_mid_publish_leaves_no_success_and_a_rerun_completes(remote, hdfs, tmp_path):
    out = remote["base"] + "/killed"
    cfg = remote["cfg"].model_copy(update={"output": remote["cfg"].output.model_copy(update={"path": out})})
    config = _write_config(cfg, tmp_path / "c.yaml")
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
               **{PAUSE_AT_ENV: "publish.renamed", PAUSE_DIR_ENV: str(marker_dir)})
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", config, "--", *hdfs.beam_args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (marker_dir / "publish.renamed").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    names = [m.path[len(out) + 1:] for m in list_files(out)]
    assert "_SUCCESS" not in names and "_MANIFEST.json" not in names
    published = [n for n in names if n.startswith("part-")]
    assert published  # the batch renamed before the kill: complete files, and the journal says whose
    rerun = subprocess.run(command, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT),
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    copy = str(tmp_path / "copy")
    download_tree(out, copy)
    with open(os.path.join(copy, "_MANIFEST.json")) as handle:
        manifest = json.load(handle)
    check_export(copy, manifest, remote["expected"], USERS, SHARDS)
