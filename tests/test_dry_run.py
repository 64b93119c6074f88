"""``run --dry-run`` for the cloud configs: the Beam options resolved and validated offline, the
placeholders and unreachable paths reported, nothing submitted."""
import importlib.util
import io
import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.runner_options import check_runner_options, fill_placeholder_options, unreachable_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


HAS_GCS = _installed("google.cloud.storage") and _installed("google.api_core")
HAS_HDFS = _installed("hdfs")

DATAFLOW_FILLED = ["--set", "input.path=gs://my-bucket/users/*.parquet",
                   "--set", "model.path=gs://my-bucket/models/user_tower",
                   "--set", "output.path=gs://my-bucket/exports/2026-01-01",
                   "--", "--project=my-project", "--region=us-central1", "--temp_location=gs://my-bucket/tmp",
                   "--staging_location=gs://my-bucket/staging", "--job_name=user-embeddings-20260101"]
FLINK_FILLED = ["--set", "input.path=hdfs://nn:8020/data/users/*.parquet",
                "--set", "model.path=hdfs://nn:8020/models/user_tower",
                "--set", "output.path=hdfs://nn:8020/exports/x",
                "--", "--flink_master=flink-jm:8081", "--hdfs_host=nn", "--hdfs_user=etl"]


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # --setup_file=./setup.py is relative to where the launcher runs


def test_dataflow_template_as_shipped_lists_its_placeholders_and_exits_2():
    code, out, err = run_cli("run", "--config", "run_configs/dataflow.yaml", "--dry-run")
    assert code == 2
    assert "DataflowRunner: options resolved and validated, nothing submitted" in out
    assert "SetupOptions.setup_file" in out and "./setup.py" in out
    assert "WorkerOptions.max_num_workers" in out
    assert "skipped: model signature, input files and output directory: not checked until the placeholders" in out
    assert "placeholders left to fill in" in err and "runner.options[0]: '--project=<PROJECT>'" in err
    assert "Invalid GCS bucket" not in err  # Beam's complaints about placeholder values add nothing


def test_dataflow_filled_in_resolves_and_validates(tmp_path):
    code, out, err = run_cli("run", "--config", "run_configs/dataflow.yaml", "--dry-run", *DATAFLOW_FILLED)
    if HAS_GCS:
        pytest.skip("apache-beam[gcp] is installed: the preflight would try to reach GCS")
    assert code == 0, err
    for line in ("GoogleCloudOptions.project", "my-project", "GoogleCloudOptions.region", "us-central1",
                 "GoogleCloudOptions.temp_location", "gs://my-bucket/tmp", "GoogleCloudOptions.job_name",
                 "SetupOptions.setup_file", "WorkerOptions.machine_type", "n2-standard-8"):
        assert line in out
    assert "not checked, this machine cannot open their paths" in out and "apache-beam[gcp]" in out
    assert "dry run: no problems found in what could be checked here; nothing was submitted" in out
    assert err == ""


def test_dataflow_mistakes_are_reported(tmp_path, monkeypatch):
    args = [a if not a.startswith("--project=") else "--project=123456" for a in DATAFLOW_FILLED]
    code, _, err = run_cli("run", "--config", "run_configs/dataflow.yaml", "--dry-run", *args,
                           "--max_num_worker=10", "--temp_location=/tmp/local")
    assert code == 2
    assert "--max_num_worker: not an option of Beam or of DataflowRunner" in err
    assert "Invalid Project ID (123456). Please make sure you specified the Project ID, not project number" in err
    assert "--temp_location /tmp/local: Dataflow needs a gs:// location" in err
    monkeypatch.chdir(tmp_path)  # --setup_file=./setup.py is not here
    code, _, err = run_cli("run", "--config", os.path.join(REPO, "run_configs", "dataflow.yaml"), "--dry-run",
                           *DATAFLOW_FILLED[:6], "--set", f"output.path={tmp_path / 'out'}", *DATAFLOW_FILLED[6:])
    assert code == 2
    assert "--setup_file ./setup.py: no such file" in err and "launch from the repository root" in err
    assert f"output.path {tmp_path / 'out'} is a local path: Dataflow workers cannot read it" in err


def test_flink_filled_in_resolves_and_validates():
    code, out, err = run_cli("run", "--config", "run_configs/flink.yaml", "--dry-run", *FLINK_FILLED)
    for line in ("FlinkRunner: options resolved and validated", "FlinkRunnerOptions.flink_master", "flink-jm:8081",
                 "FlinkRunnerOptions.parallelism", "PortableOptions.environment_type", "PROCESS",
                 '{"command":"/opt/apache/beam/boot"}', "HadoopFileSystemOptions.hdfs_host"):
        assert line in out
    if HAS_HDFS:  # the preflight tries the namenode "nn", which does not resolve here: a problem, not a crash
        assert code == 2 and "model, input and output could not be checked: " in err, err
        return
    assert code == 0, err
    assert "not checked, this machine cannot open their paths" in out and "hdfs" in out


def test_flink_environment_mistakes_are_reported(tmp_path):
    code, _, err = run_cli("run", "--config", "run_configs/flink.yaml", "--dry-run", *FLINK_FILLED,
                           "--environment_config=/opt/apache/beam/boot")
    assert code == 2 and "--environment_config /opt/apache/beam/boot: not JSON" in err
    code, _, err = run_cli("run", "--config", "run_configs/flink.yaml", "--dry-run", *FLINK_FILLED,
                           "--environment_type=EXTERNAL", "--environment_config=")
    assert code == 2 and "EXTERNAL needs --environment_config=HOST:PORT" in err
    code, _, err = run_cli("run", "--config", "run_configs/flink.yaml", "--dry-run", *FLINK_FILLED[:4],
                           "--set", f"output.path={tmp_path}", *FLINK_FILLED[6:])
    assert code == 2 and f"output.path {tmp_path} is a local path: the cluster's workers cannot read it" in err


def test_placeholder_runner_options_are_filled_by_options_after_the_double_dash():
    config = load_config("run_configs/dataflow.yaml")
    filled = fill_placeholder_options(config, ["--project=p", "--region=r", "--max_num_workers=3"])
    assert filled.runner.options == [o for o in config.runner.options
                                     if not o.startswith(("--project=", "--region="))]  # max_num_workers kept
    assert fill_placeholder_options(config, []) is config
    check = check_runner_options(filled, ["--project=my-project", "--region=europe-west4"])
    assert check.options["GoogleCloudOptions"]["project"] == "my-project"


# The CLI in a process where the hdfs package cannot be imported, as on a machine without it:
# Beam then registers no hdfs:// file system (the test runs whether or not this machine has it).
WITHOUT_HDFS = r'''
import importlib.abc, sys
class BlockHdfs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hdfs":
            raise ImportError("No module named 'hdfs' (blocked by the test)")
sys.meta_path.insert(0, BlockHdfs())
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_real_run_refuses_paths_this_machine_cannot_open():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HDFS, "run", "--config", "run_configs/flink.yaml",
                           *FLINK_FILLED], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert ("this machine cannot open the job's paths: input.path hdfs://nn:8020/data/users/*.parquet"
            in proc.stderr), proc.stderr
    assert "no hdfs:// file system here" in proc.stderr
    assert unreachable_paths(load_config("run_configs/local.yaml")) == []


def test_local_dry_run_checks_beam_options_too(tmp_path):
    code, out, err = run_cli("run", "--config", "run_configs/local.yaml", "--dry-run", "--",
                             "--direct_running_mod=multi_processing")
    assert code == 2
    assert "--direct_running_mod: not an option of Beam or of FnApiRunner" in err
