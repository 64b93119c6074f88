"""The engines the engine tests run on: the Prism binary and an HDFS on loopback.

Both come from ``.ci/engines/fetch.sh`` (``make engines``), which builds them into a cache outside
the repository. ``.ci/run`` starts one HDFS for the whole run and passes it in
``EMBEDDING_EXPORT_HDFS`` ("HOST RPC_PORT HTTP_PORT"); without it the tests start their own with
``.ci/engines/hdfs.sh``. With ``CI`` set a missing engine fails the tests; elsewhere (no Go, no
Java) they are skipped with one line saying why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List

import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.file_listing import list_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINES = os.path.join(ROOT, ".ci", "engines")
HDFS_ENV = "EMBEDDING_EXPORT_HDFS"
HDFS_USER = "ci"


MISSING: set = set()  # why engine tests were skipped, for the one-line summary (conftest.py)


def unavailable(reason: str):
    """Fail in CI (an engine CI was to provide is missing), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"engine missing in CI: {reason}", pytrace=False)
    MISSING.add(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Hdfs:
    host: str
    rpc_port: int
    http_port: int

    @property
    def beam_args(self) -> List[str]:
        """Beam options for its hdfs:// file system (full URLs, as run_configs/flink.yaml uses)."""
        return [f"--hdfs_host={self.host}", f"--hdfs_port={self.http_port}", f"--hdfs_user={HDFS_USER}",
                "--hdfs_full_urls"]

    def url(self, path: str) -> str:
        return f"hdfs://{self.host}:{self.rpc_port}/{path.lstrip('/')}"


def start_hdfs(work_dir: str) -> Hdfs:
    if not shutil.which("java"):
        unavailable("no java here: the HDFS tests need Java 17 and `make engines`")
    proc = subprocess.run([os.path.join(ENGINES, "hdfs.sh"), "start", work_dir], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        unavailable(f"no MiniDFSCluster started (`make engines` fetches it; needs Java 17, Maven): "
                    f"{proc.stderr.strip()[-300:]}")
    host, rpc, http = proc.stdout.split()[-3:]
    return Hdfs(host, int(rpc), int(http))


def stop_hdfs(work_dir: str) -> None:
    subprocess.run([os.path.join(ENGINES, "hdfs.sh"), "stop", work_dir], capture_output=True, timeout=120)


def hdfs_from_env() -> Hdfs:
    host, rpc, http = os.environ[HDFS_ENV].split()
    return Hdfs(host, int(rpc), int(http))


def use_hdfs(hdfs: Hdfs) -> None:
    """Point this process's Beam FileSystems at ``hdfs``."""
    FileSystems.set_options(PipelineOptions(hdfs.beam_args))


def upload_tree(local: str, remote: str) -> None:
    """Copy a local directory to ``remote`` through Beam's FileSystems."""
    for dirpath, _, files in os.walk(local):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            with open(src, "rb") as handle, FileSystems.create(
                    f"{remote.rstrip('/')}/{rel}", compression_type=CompressionTypes.UNCOMPRESSED) as out:
                shutil.copyfileobj(handle, out)


def download_tree(remote: str, local: str) -> List[str]:
    """Copy every file under ``remote`` to ``local``; returns their relative paths."""
    root = remote.rstrip("/")
    names = []
    for m in list_files(root):
        rel = m.path[len(root) + 1:]
        target = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        names.append(rel)
    return sorted(names)
