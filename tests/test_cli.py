"""The embedding-export command line: run (with --set, --dry-run, --overwrite, -- beam args) and demo."""
import io
import json
import os

import pytest
import yaml

from pipeline.cli import main
from pipeline_fixtures import tiny_config, tiny_model, write_users


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_users(str(root / "in"), 300, files=2, bad=True)
    raw = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "out"),
                      max_reject_fraction=0.1).model_dump(mode="json")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path), root


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_dry_run_prints_the_plan_and_writes_nothing(config_file, tmp_path):
    path, root = config_file
    code, out, err = run_cli("run", "--config", path, "--dry-run", "--set", f"output.path={tmp_path / 'x'}",
                             "--", "--direct_num_workers=1")
    assert code == 0, err
    assert "2 file(s), 308 rows" in out
    assert "input  sparse_ids int64[B, 4] <- column sparse_ids (padded, pad 0)" in out
    assert "output embedding float32[B, 6] -> feature output" in out
    assert "shards:  4 by fmix64(key)" in out
    assert "--direct_num_workers=1" in out
    assert not (tmp_path / "x").exists()


def test_the_command_freezes_the_heap_only_in_its_own_process(config_file, tmp_path):
    """``embedding-export run`` exempts its long-lived objects from full collections
    (``pipeline.job.freeze_heap``); called from other code (argv given) it leaves the caller's
    collector alone."""
    import gc
    import subprocess
    import sys

    path, _ = config_file
    before = gc.get_freeze_count()
    code, _, err = run_cli("run", "--config", path, "--set", f"output.path={tmp_path / 'in-process'}")
    assert code == 0, err
    assert gc.get_freeze_count() == before
    own = ("import gc, sys\nfrom pipeline.cli import main\n"
           f"sys.argv = ['embedding-export', 'run', '--config', {path!r}, '--set', 'output.path={tmp_path / 'own'}']\n"
           "code = main()\nprint('frozen', gc.get_freeze_count(), 'exit', code)")
    done = subprocess.run([sys.executable, "-c", own], capture_output=True, text=True, timeout=300)
    frozen, exit_code = done.stdout.split()[-3], done.stdout.split()[-1]
    assert exit_code == "0", done.stderr
    assert int(frozen) > 100_000  # the imports' objects: TensorFlow's, Beam's, pyarrow's


def test_run_with_overrides_prints_a_summary_and_refuses_to_overwrite(config_file, tmp_path):
    path, _ = config_file
    out_dir = tmp_path / "export"
    args = ("run", "--config", path, "--set", f"output.path={out_dir}", "--set", "partition.num_shards=3",
            "--set", "output.format=block", "--", "--direct_running_mode=in_memory")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "rows read     308" in out and "rows written  300" in out and "rows rejected 8" in out
    assert "  null_key: 1" in out
    assert "shards        3 x block" in out and "rows/s" in out and str(out_dir) in out
    manifest = json.loads((out_dir / "_MANIFEST.json").read_text())
    assert manifest["num_shards"] == 3 and manifest["format"] == "block"
    code, _, err = run_cli(*args)
    assert code == 2 and "already holds" in err and "--overwrite" in err
    code, out, err = run_cli("run", "--config", path, "--set", f"output.path={out_dir}", "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out_dir))[-1] == "part-00003-of-00004.tfrecord"


def test_config_and_preflight_errors_exit_2_with_the_message(config_file, tmp_path):
    path, _ = config_file
    code, _, err = run_cli("run", "--config", path, "--set", "output.fromat=x")
    assert code == 2 and "output.fromat: unknown key" in err
    code, _, err = run_cli("run", "--config", path, "--set", "model.inputs.dense.column=nope",
                           "--set", f"output.path={tmp_path}/o")
    assert code == 2 and "column 'nope' (model.inputs.dense.column) does not exist" in err
    code, _, err = run_cli("run", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read run config" in err


def test_failed_export_exits_1(config_file, tmp_path):
    path, _ = config_file
    code, _, err = run_cli("run", "--config", path, "--set", f"output.path={tmp_path / 'o'}",
                           "--set", "output.max_reject_fraction=0.001")
    assert code == 1
    assert "export failed: 8 of 308 rows rejected" in err


def test_demo_subcommand_runs_the_demo(tmp_path):
    code, out, err = run_cli("demo", "--out", str(tmp_path / "demo"), "--users", "500")
    assert code == 0, err
    manifest = json.loads((tmp_path / "demo" / "export" / "_MANIFEST.json").read_text())
    assert manifest["rows_written"] == 500
    assert "500" in out
    code, _, err = run_cli("demo", "--", "--runner=X")
    assert code == 2 and "apply to `run` only" in err
