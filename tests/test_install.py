"""Clean install: build the sdist, build the wheel from that sdist, install it into a fresh
virtual environment and run the package from a directory that has nothing to do with the repo.

This is the proof that the IDL, the demo and everything else a Dataflow/Flink worker needs ships
inside the package (workers get the sdist via --setup_file, users get the wheel). It is slow-ish
(about a minute with a warm pip cache: the dependencies resolve under constraints.txt), so it is
marked ``install``; CI runs it.

The build happens in a copy of the source tree, so the parallel working tree never gets
build/, dist/ or *.egg-info written into it.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("twml", "transforms", "pipeline")
IDL_FILES = ("data.thrift", "tensor.thrift", "prediction_service.thrift")
# What never belongs in a build: local environments and caches anywhere, and the outputs at the
# top of the tree (as .gitignore anchors them: pipeline/demo/ is source, /demo/ is the demo's output).
_ANYWHERE = shutil.ignore_patterns(".venv", "venv", ".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                                   ".hypothesis", ".mypy_cache", ".ruff_cache")
_AT_THE_TOP = {"build", "dist", "demo", "bench_out"}


def _NOT_SOURCE(directory, names):
    ignored = set(_ANYWHERE(directory, names))
    if Path(directory).resolve() == REPO:
        ignored |= _AT_THE_TOP & set(names)
    return ignored


def _run(cmd, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure, fail the test with its output (the point of this file is the log)."""
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        pytest.fail(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
                    f"(cwd {cwd})\n{proc.stdout[-6000:]}")
    return proc


def _clean_env() -> dict:
    """The caller's environment without anything that would let the repo leak into the venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _source_modules() -> set:
    """Every .py file of the shipped packages in the source tree, as wheel paths."""
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO)
            if "__pycache__" not in rel.parts:
                found.add(rel.as_posix())
    return found


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    """Build the sdist from a copy of the tree, then the wheel from the unpacked sdist."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE, symlinks=True)
    out = root / "dist"
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", out], cwd=src, env=_clean_env())
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root / "unpacked", **safe)
    (unpacked,) = (root / "unpacked").iterdir()
    # Building the wheel from the sdist (not from the tree) proves the sdist is complete.
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          unpacked, "-w", out], cwd=root, env=_clean_env())
    (wheel,) = glob.glob(str(out / "*.whl"))
    return {"sdist": Path(sdist), "wheel": Path(wheel)}


@pytest.fixture(scope="module")
def fresh_venv(dists, tmp_path_factory) -> Path:
    """A new virtualenv with only the wheel and its dependencies (pinned by constraints.txt)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", venv], cwd=venv.parent, env=_clean_env())
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-c", REPO / "constraints.txt", dists["wheel"]], cwd=venv.parent, env=_clean_env(),
         timeout=900)
    return venv


@pytest.fixture()
def elsewhere(tmp_path) -> Path:
    """A working directory with no relation to the repository."""
    cwd = tmp_path / "unrelated_cwd"
    cwd.mkdir()
    return cwd


def test_sdist_holds_the_idl_and_the_build_files(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for idl in IDL_FILES:
        assert f"thrift/{idl}" in names, f"sdist lacks thrift/{idl}: {sorted(names)}"
    for needed in ("setup.py", "pyproject.toml", "constraints.txt", "MANIFEST.in"):
        assert needed in names, f"sdist lacks {needed}"
    missing = _source_modules() - names
    assert not missing, f"sdist lacks source modules: {sorted(missing)}"


def test_wheel_holds_the_idl_every_module_and_the_entry_point(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    for idl in IDL_FILES:
        assert f"twml/idl/{idl}" in names, f"wheel lacks twml/idl/{idl}"
    # setup.py lists packages by hand: a new subpackage that is not listed would be left out.
    missing = _source_modules() - names
    assert not missing, f"wheel lacks modules (add their packages to setup.py): {sorted(missing)}"
    assert not any(n.startswith(("tests/", "thrift/", "benchmarks/")) for n in names), \
        "wheel ships non-package directories at top level (a 'thrift' package would shadow Apache Thrift)"
    assert "embedding-export = pipeline.cli:main" in entry_points


def test_fresh_venv_loads_the_schema_from_the_installed_package(fresh_venv, elsewhere):
    python = fresh_venv / "bin" / "python"
    probe = ("import twml, twml.schema as s, pipeline.config;"
             "print(s.idl_dir()); print(twml.__file__);"
             "r = s.data_thrift.DataRecord(discreteFeatures={1: 2});"
             "b = s.serialize(r); assert s.deserialize(s.data_thrift.DataRecord, b) == r;"
             "print(len(b))")
    proc = _run([python, "-c", probe], cwd=elsewhere, env=_clean_env())
    idl_dir, module_file, _ = proc.stdout.strip().splitlines()[-3:]
    site = str(fresh_venv)
    assert idl_dir.startswith(site) and idl_dir.endswith("twml/idl"), idl_dir
    assert module_file.startswith(site), f"twml imported from {module_file}, not the fresh venv"
    assert not module_file.startswith(str(REPO))


def test_console_script_is_installed(fresh_venv, elsewhere):
    script = fresh_venv / "bin" / "embedding-export"
    assert script.is_file(), "the embedding-export console script was not installed"


def test_demo_runs_from_an_unrelated_directory_and_verifies(fresh_venv, elsewhere):
    out = elsewhere / "demo_out"
    _run([fresh_venv / "bin" / "embedding-export", "demo", "--out", out, "--users", "2000"],
         cwd=elsewhere, env=_clean_env(), timeout=600)
    manifests = sorted(out.rglob("_MANIFEST.json"))
    assert manifests, f"the demo wrote no export with a _MANIFEST.json under {out}"
    export = manifests[0].parent
    assert (export / "_SUCCESS").is_file()
    # The installed verifier checks every record of the installed demo's export.
    proc = _run([fresh_venv / "bin" / "python", "-m", "pipeline.tools.verify", export],
                cwd=elsewhere, env=_clean_env())
    assert "OK" in proc.stdout


def test_the_job_installs_without_the_tools_extra_and_says_what_is_missing(fresh_venv, elsewhere, dists):
    """The wheel without extras: what workers install. The command line works, says its version,
    and names the extra for what needs it (matplotlib, which nothing else pulls in)."""
    script = fresh_venv / "bin" / "embedding-export"
    from twml._version import __version__
    proc = _run([script, "--version"], cwd=elsewhere, env=_clean_env())
    assert proc.stdout.strip() == f"embedding-export {__version__}"
    probe = _run([fresh_venv / "bin" / "python", "-c",
                  "import importlib.util as u; print(u.find_spec('matplotlib') is None)"],
                 cwd=elsewhere, env=_clean_env())
    assert probe.stdout.strip() == "True", "matplotlib is installed without the tools extra"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        metadata = next(whl.read(n).decode() for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    assert "Requires-Python: >=3.11" in metadata
    assert "Requires-Dist: matplotlib>=3.8; extra == \"tools\"" in metadata
    # The extra is checked before the export is read: any directory shows the message.
    plot = subprocess.run([str(script), "inspect", str(elsewhere), "--plot", str(elsewhere / "p.png")],
                          cwd=str(elsewhere), env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert plot.returncode == 2, plot.stderr
    assert plot.stderr.strip() == "inspect: inspect --plot needs matplotlib: pip install 'embedding-export[tools]'"
