"""What the command line prints: quiet by default, the few things that matter always, --version,
run --help, and the tools extra missing.

The commands run as a user runs them, in a subprocess of this venv's ``embedding-export`` (logging,
warnings and TensorFlow's C++ notices are process-wide, so only a fresh process shows them).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from importlib import metadata
from types import SimpleNamespace

import pytest
import yaml

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from pipeline_fixtures import tiny_config, tiny_model, write_users

CLI = os.path.join(os.path.dirname(sys.executable), "embedding-export")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "CI")}
    env.update(extra)
    return env


def cli(*argv, timeout=600, python_prelude=None):
    """Run the installed command (or, with a prelude, ``pipeline.cli.main`` after the prelude)."""
    if python_prelude is None:
        cmd = [CLI, *map(str, argv)]
    else:
        code = f"{python_prelude}\nimport sys\nfrom pipeline.cli import main\nsys.exit(main({[str(a) for a in argv]!r}))"
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A run config of the tiny model, and the export the quiet run wrote (stdout, stderr kept)."""
    root = tmp_path_factory.mktemp("quiet")
    write_users(str(root / "in"), 400, files=2)
    raw = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(root / "out")).model_dump(mode="json")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = cli("run", "--config", path)
    return SimpleNamespace(config=path, root=root, out=root / "out", run=proc)


def test_a_successful_run_prints_only_the_summary(export):
    proc = export.run
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stderr == "", f"a quiet run printed on stderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["rows", "read", "400"] and any(line.startswith("output") for line in lines)
    assert not any(word in proc.stdout for word in ("apitools", "oneDNN", "absl", "WARNING", "INFO"))


def test_verify_and_inspect_print_no_library_noise(export):
    verify = cli("verify", export.out)
    assert verify.returncode == 0 and "OK: 400 records" in verify.stdout
    assert verify.stderr == ""
    inspect = cli("inspect", export.out, "--head", "2")
    assert inspect.returncode == 0 and len(inspect.stdout.splitlines()) == 2
    assert inspect.stderr == ""


def test_verbose_shows_what_beam_logs(export):
    proc = cli("-v", "run", "--config", export.config, "--overwrite")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "INFO apache_beam" in proc.stderr and "INFO pipeline.job: exporting 400 rows" in proc.stderr


def test_a_direct_runner_that_falls_back_from_prism_says_so_in_one_line(export, tmp_path):
    # A prism_location that does not exist makes Prism fail to start here, network or not.
    proc = cli("run", "--config", export.config, "--set", f"output.path={tmp_path / 'out'}",
               "--set", "runner.name=DirectRunner",
               "--", "--prism_location=/nonexistent/prism")
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("embedding-export: DirectRunner could not start Prism (")
    assert "/nonexistent/prism" in lines[0] and lines[0].endswith("running on Beam's Python runner instead")
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_a_dataflow_launch_prints_its_job_id_and_console_url():
    # Stand-in: the real DataflowRunner needs apache-beam[gcp] and a Google Cloud project, neither
    # of which this machine has. The result is Beam's own DataflowPipelineResult; only the Job
    # message (from the Dataflow API client) is replaced by an object with its id.
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult

    from pipeline.cli import _say_launch
    from pipeline.runner_options import launch_notice

    options = PipelineOptions(["--project=my-project", "--region=europe-west4"])
    result = DataflowPipelineResult(SimpleNamespace(id="2026-11-30_01_02_03-123"), runner=None)
    err = io.StringIO()
    _say_launch(result, options, err)
    assert err.getvalue() == ("embedding-export: Dataflow job 2026-11-30_01_02_03-123 submitted; console: "
                              "https://console.cloud.google.com/dataflow/jobs/europe-west4/"
                              "2026-11-30_01_02_03-123?project=my-project\n")
    assert launch_notice(DataflowPipelineResult(None, runner=None), options) is None  # a template run
    assert launch_notice(SimpleNamespace(state="DONE"), options) is None              # a local result


def test_run_export_hands_the_launched_result_to_on_launch(tmp_path):
    from pipeline.job import run_export
    from pipeline.plan import preflight
    from pipeline.runner_options import launch_notice

    write_users(str(tmp_path / "in"), 50, files=1)
    config = tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(tmp_path / "out"), num_shards=2)
    seen = []
    manifest = run_export(preflight(config), on_launch=lambda result, options: seen.append((result, options)))
    assert len(seen) == 1 and manifest["rows_written"] == 50
    result, options = seen[0]
    assert hasattr(result, "wait_until_finish") and launch_notice(result, options) is None


# ------------------------------------------------------------------------------------------------
# Packaging: one version, help text, extras.

def test_version_is_one_string_everywhere(capsys):
    import twml
    from twml._version import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"embedding-export {__version__}"
    assert twml.__version__ == __version__ == metadata.version("embedding-export")


def test_run_help_describes_beam_options_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "[-- BEAM OPTIONS ...]" in text and "Everything after a bare -- goes to Beam" in text
    for code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE):
        assert f"\n  {code}  " in text
    assert "docs/CONFIG.md" in text


def test_python_requires_matches_the_code():
    requires = metadata.metadata("embedding-export")["Requires-Python"]
    assert requires == ">=3.11"   # typing.Self (twml/io/compression.py) is 3.11+
    from typing import Self  # noqa: F401  (this interpreter satisfies it)


def test_the_job_does_not_require_the_tools_extra():
    requires = metadata.requires("embedding-export")
    core = [r for r in requires if "extra ==" not in r]
    tools = [r for r in requires if 'extra == "tools"' in r]
    assert not any(r.startswith(("rich", "matplotlib", "pytest", "hypothesis", "psutil")) for r in core), core
    assert {r.split(">")[0] for r in tools} == {"rich", "matplotlib"}


_WITHOUT_TOOLS = "import sys\nsys.modules['rich'] = None\nsys.modules['matplotlib'] = None"


def test_without_the_tools_extra_the_commands_degrade_clearly(export, tmp_path):
    plot = cli("inspect", export.out, "--plot", tmp_path / "p.png", python_prelude=_WITHOUT_TOOLS)
    assert plot.returncode == EXIT_USAGE
    assert plot.stderr.strip() == "inspect: inspect --plot needs matplotlib: pip install 'embedding-export[tools]'"
    verify = cli("verify", export.out, python_prelude=_WITHOUT_TOOLS)
    assert verify.returncode == 0 and "OK: 400 records in 4 shards verified" in verify.stdout, verify.stderr
    run = cli("run", "--config", export.config, "--set", f"output.path={tmp_path / 'out'}",
              python_prelude=_WITHOUT_TOOLS)
    assert run.returncode == EXIT_OK and run.stdout.startswith("rows read     400"), run.stderr
