"""DirectRunner and PrismRunner run on a local Prism binary, offline, with the same records as the FnApiRunner;
without the binary the DirectRunner runs on the FnApiRunner and says so in one line, never downloading."""
import os

import pytest

from pipeline.config import ConfigError
from pipeline.job import pipeline_options, run_export
from pipeline.plan import preflight
from pipeline.local_engines import CACHE_ENV, PRISM_ENV, resolve_local_engine
from pipeline.progress import is_local_run
from transforms.errors import ExportError
from pipeline_fixtures import (check_export, expected_embeddings, shard_records, sorted_records, tiny_config,
                               tiny_model, write_users)

SHARDS = 4
USERS = 1200
RUNNERS = {
    "fnapi": ("FnApiRunner", ["--direct_running_mode=in_memory", "--direct_num_workers=1"]),
    "direct": ("DirectRunner", []),
    "prism": ("PrismRunner", ["--environment_type=LOOPBACK"]),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, prism):
    root = tmp_path_factory.mktemp("prism")
    paths = write_users(str(root / "in"), USERS, files=4, bad=True, row_group_size=150)
    expected = expected_embeddings(tiny_model(), paths)
    results = {}
    for name, (runner, options) in RUNNERS.items():
        out = str(root / name)
        cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), out, num_shards=SHARDS, batch_size=64,
                          runner=runner, runner_options=options)
        results[name] = (out, run_export(preflight(cfg)))
    return expected, results


@pytest.mark.parametrize("runner", ["direct", "prism"])
def test_prism_export_is_complete_and_gives_the_fnapi_records(exports, runner):
    expected, results = exports
    out, manifest = results[runner]
    assert manifest["config"]["runner"]["name"] == RUNNERS[runner][0]
    check_export(out, manifest, expected, USERS, SHARDS)
    assert not os.path.exists(os.path.join(out, "_temporary"))
    reference = sorted_records(shard_records(*results["fnapi"]))
    assert sorted_records(shard_records(out, manifest)) == reference


@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner"])
def test_prism_runners_are_pointed_at_the_local_binary(prism, runner):
    cfg = tiny_config("in/*.parquet", "model", "out", runner=runner, runner_options=[])
    options = pipeline_options(cfg).get_all_options()
    assert options["runner"] == runner
    assert options["prism_location"] == prism  # so Beam never downloads one


def test_prism_runs_get_the_progress_bar():
    # Prism runs the SDK harness in this process (LOOPBACK) unless told otherwise.
    assert is_local_run("PrismRunner") and is_local_run("DirectRunner")
    assert not is_local_run("PrismRunner", ["--environment_type=DOCKER"])


def test_a_given_prism_location_is_kept():
    assert resolve_local_engine("PrismRunner", ["--prism_location=/opt/prism"]) == (
        "PrismRunner", ["--prism_location=/opt/prism"], None)


def test_without_prism_the_direct_runner_uses_fnapi_and_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # an empty cache: no binary
    monkeypatch.delenv(PRISM_ENV, raising=False)
    cfg = tiny_config("in/*.parquet", "model", "out", runner="DirectRunner", runner_options=[])
    first = pipeline_options(cfg).get_all_options()
    second = pipeline_options(cfg).get_all_options()
    assert first["runner"] == second["runner"] == "FnApiRunner"
    assert first["prism_location"] is None
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and "DirectRunner: no Prism binary here" in lines[0] and "FnApiRunner" in lines[0]


def test_without_prism_the_prism_runner_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(PRISM_ENV, raising=False)
    with pytest.raises(ConfigError, match="no Prism binary here .*make engines"):
        resolve_local_engine("PrismRunner", [])


def test_a_failed_export_on_prism_reports_its_reason_and_publishes_nothing_final(tmp_path, prism):
    # Prism reports a worker's exception only as traceback text: the ExportError's message is read from it.
    write_users(str(tmp_path / "in"), 300, files=2, bad=True, row_group_size=150)
    out = tmp_path / "out"
    cfg = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(out), runner="PrismRunner",
                      runner_options=[], max_reject_fraction=0.0)
    plan = preflight(cfg)
    with pytest.raises(ExportError, match=r"^8 of 308 rows rejected .*nothing else was published$"):
        run_export(plan)
    left = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files)
    assert len(left) == 1 and left[0].startswith("_rejected/") and left[0].endswith("part-00000-of-00001.parquet")
