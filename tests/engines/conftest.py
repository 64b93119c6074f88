"""Fixtures for the tests that run the export on real engines (Prism, HDFS)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines_support import HDFS_ENV, MISSING, hdfs_from_env, start_hdfs, stop_hdfs, unavailable, use_hdfs  # noqa: E402


@pytest.fixture(scope="session")
def prism():
    """The Prism binary (built by `make engines`)."""
    from pipeline.local_engines import prism_binary
    binary = prism_binary()
    if binary is None:
        unavailable("no Prism binary here: `make engines` builds it (needs Go)")
    return binary


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory):
    """An HDFS on loopback: the one .ci/run started, else one of our own for this session."""
    if os.environ.get(HDFS_ENV):
        cluster = hdfs_from_env()
        use_hdfs(cluster)
        yield cluster
        return
    work = str(tmp_path_factory.mktemp("minihdfs"))
    cluster = start_hdfs(work)
    try:
        use_hdfs(cluster)
        yield cluster
    finally:
        stop_hdfs(work)


def pytest_terminal_summary(terminalreporter):
    for reason in sorted(MISSING):
        terminalreporter.write_line(f"engine tests skipped: {reason}")
