"""A failed run leaves a finished export exactly as it was.

An --overwrite run that fails on too many rejected rows keeps them for inspection, but not inside
the finished export it failed to replace (a ``_rejected/<run_id>/`` beside the old ``_SUCCESS``,
whose manifest lists none, would be read by a loader of rejected rows): they stay in the failed
run's scratch directory, and every file of the export keeps its bytes and mtime.
"""
import os

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import assert_accounted, tree, write_config

pytestmark = pytest.mark.timeout(240)


def snapshot(out):
    """{name: (bytes, mtime)} of every file outside the scratch directory."""
    found = {}
    for name in tree(str(out)):
        if not name.startswith("_temporary/"):
            path = os.path.join(out, name)
            with open(path, "rb") as handle:
                found[name] = (handle.read(), os.stat(path).st_mtime_ns)
    return found


@pytest.mark.parametrize("earlier_rejects", [False, True])
def test_an_overwrite_that_fails_on_rejects_leaves_the_export_as_it_was(tmp_path, capsys, earlier_rejects):
    write_users(str(tmp_path / "good"), 300, files=2, bad=earlier_rejects)
    write_users(str(tmp_path / "bad"), 300, files=2, bad=True, seed=3)
    out = tmp_path / "out"
    earlier = run_export(preflight(tiny_config(str(tmp_path / "good" / "*.parquet"), tiny_model(), str(out), num_shards=3,
                                     max_reject_fraction=0.1)))
    before = snapshot(out)
    cfg = tiny_config(str(tmp_path / "bad" / "*.parquet"), tiny_model(), str(out), num_shards=2,
                      max_reject_fraction=0.001)
    path = write_config(cfg, str(tmp_path / "c.yaml"))
    assert cli_main(["run", "--config", path, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "more than output.max_reject_fraction" in err
    assert snapshot(out) == before                                     # every file: bytes and mtime
    report = verify_export(str(out))
    assert report.ok, [str(p) for p in report.problems]
    kept = [name for name in tree(str(out)) if name.startswith("_temporary/")]
    assert kept and all(name.split("/")[2] == "_rejected" and name.endswith(".parquet") for name in kept), kept
    assert os.path.join(str(out), *kept[0].split("/")[:3]) in err      # the message says where they are
    assert sum(pq.read_metadata(os.path.join(out, name)).num_rows for name in kept) == 8
    assert_accounted(str(out), earlier)
    # The next run (it must --overwrite the finished export) clears the failed run's rows too.
    assert cli_main(["run", "--config", path, "--overwrite", "--set", "output.max_reject_fraction=0.5"]) == 0
    assert not any(name.startswith("_temporary/") for name in tree(str(out)))
