"""Problems that used to surface minutes into a run (exit 1) are found before launch (exit 2),
with a message naming the path or key, and nothing is written: pattern characters in the output
or model path, a missing or truncated variables checkpoint, an unknown runner, a read-only output,
a file where the job needs its ``_temporary`` directory, a disk too small for the export.

The read-only and small disks are real file systems: a tmpfs mounted in a private mount
namespace (``unshare``), where the real command line runs.
"""
import os
import shutil
import subprocess

import pytest

from pipeline.cli import main as cli_main
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES, cli_command, cli_env, ROOT, tree, write_config

pytestmark = pytest.mark.timeout(300)

REFUSED = FIGURES.setdefault("problems refused before launch (exit 2)", [])


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    write_users(str(root / "in"), 300, files=1)
    return str(root / "in" / "*.parquet")


def run_cli(cfg, tmp_path, capsys, *extra):
    path = write_config(cfg, str(tmp_path / "c.yaml"))
    code = cli_main(["run", "--config", path, *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["out[1]", "out*", "o?t", "a]b"])
def test_an_output_path_with_pattern_characters_is_refused(users, tmp_path, capsys, name):
    out = tmp_path / name
    code, err = run_cli(tiny_config(users, tiny_model(), str(out), num_shards=2), tmp_path, capsys)
    assert code == 2 and f"output.path {out} holds" in err and "pattern" in err, err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["c.yaml"]
    REFUSED.append(f"output.path {name}")


def test_a_model_path_with_pattern_characters_is_refused(users, tmp_path, capsys):
    model = tmp_path / "model[v2]"
    shutil.copytree(tiny_model(), model)
    code, err = run_cli(tiny_config(users, str(model), str(tmp_path / "out"), num_shards=2), tmp_path, capsys)
    assert code == 2 and f"model.path {model} holds '[' ']'" in err, err
    assert not (tmp_path / "out").exists()
    REFUSED.append("model.path model[v2]")


@pytest.mark.parametrize("damage", ["variables missing", "index missing", "data truncated"])
def test_a_model_without_whole_variables_is_refused(users, tmp_path, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model(), model)
    variables = model / "variables"
    if damage == "variables missing":
        shutil.rmtree(variables)
    elif damage == "index missing":
        os.remove(variables / "variables.index")
    else:
        (data,) = [p for p in variables.iterdir() if ".data-" in p.name]
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, err = run_cli(tiny_config(users, str(model), str(tmp_path / "out"), num_shards=2), tmp_path, capsys)
    assert code == 2 and f"model.path {model}" in err, err
    assert ("truncated" in err) if damage == "data truncated" else ("variables.index does not exist" in err), err
    assert not (tmp_path / "out").exists()
    REFUSED.append(f"model {damage}")


def test_an_unknown_runner_is_refused(users, tmp_path, capsys):
    cfg = tiny_config(users, tiny_model(), str(tmp_path / "out"), num_shards=2, runner="NoSuchRunner",
                      runner_options=[])
    code, err = run_cli(cfg, tmp_path, capsys)
    assert code == 2 and "runner.name 'NoSuchRunner'" in err, err
    assert not (tmp_path / "out").exists()
    REFUSED.append("runner.name NoSuchRunner")


@pytest.mark.parametrize("name", ["_temporary", "_rejected"])
def test_a_file_where_the_job_needs_a_directory_is_refused(users, tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("a file")
    code, err = run_cli(tiny_config(users, tiny_model(), str(out), num_shards=2), tmp_path, capsys, "--overwrite")
    assert code == 2 and f"{out / name} is a file" in err, err
    assert tree(str(out)) == [name]
    REFUSED.append(f"a file named {name} in the output")


def in_private_tmpfs(tmp_path, size, script_lines, config_path, *extra):
    """Run the command line in a private mount namespace with a tmpfs of ``size`` at
    ``tmp_path/mnt``, after ``script_lines`` (shell) have prepared it; returns (code, stderr)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    command = " ".join(f"'{part}'" for part in cli_command(config_path, *extra))
    script = "\n".join(["set -e", f"mount -t tmpfs -o size={size} tmpfs '{mnt}'", *script_lines, f"exec {command}"])
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                          env=cli_env(), capture_output=True, timeout=240)
    return proc.returncode, proc.stderr.decode()


def test_a_read_only_output_is_refused(users, tmp_path):
    out = tmp_path / "mnt" / "out"
    path = write_config(tiny_config(users, tiny_model(), str(out), num_shards=2), str(tmp_path / "c.yaml"))
    code, err = in_private_tmpfs(tmp_path, "1m", [f"mkdir '{out}'", f"mount -o remount,ro '{tmp_path / 'mnt'}'"], path)
    assert code == 2 and f"output.path {out}: {out} is on a read-only file system" in err, err[-3000:]
    REFUSED.append("read-only output (tmpfs mounted read-only)")


def test_a_disk_too_small_for_the_export_is_refused(users, tmp_path):
    out = tmp_path / "mnt" / "out"
    path = write_config(tiny_config(users, tiny_model(), str(out), num_shards=2), str(tmp_path / "c.yaml"))
    code, err = in_private_tmpfs(tmp_path, "8k", [], path)
    # 300 records of at least 8 + 6 * 4 + 4 bytes: 10,800 bytes, on an 8 KiB file system
    assert code == 2 and "the export needs at least 10,800 bytes (300 records of at least 36 bytes)" in err, err[-3000:]
    REFUSED.append("disk too small (8 KiB tmpfs, export at least 10,800 bytes)")
