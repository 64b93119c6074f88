"""The same export on the in-process, multi-process and portable local runners gives the same records per shard."""
import os

import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import (check_export, expected_embeddings, shard_records, sorted_records, tiny_config,
                               tiny_model, write_users)

SHARDS = 4
USERS = 1200
RUNNERS = {
    "in_process": ("FnApiRunner", ["--direct_running_mode=in_memory", "--direct_num_workers=1"]),
    "multi_process": ("FnApiRunner", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    "portable": ("PortableRunner", ["--job_endpoint=embed", "--environment_type=LOOPBACK"]),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    # 4 files x 2 row groups: enough work items for both worker processes to get some.
    paths = write_users(str(root / "in"), USERS, files=4, bad=True, row_group_size=150)
    expected = expected_embeddings(tiny_model(), paths)
    results = {}
    for name, (runner, options) in RUNNERS.items():
        out = str(root / name)
        cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), out, num_shards=SHARDS, batch_size=64,
                          runner=runner, runner_options=options)
        results[name] = (out, run_export(preflight(cfg)))
    return expected, results


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_runner_export_is_complete_and_correct(exports, runner):
    expected, results = exports
    out, manifest = results[runner]
    assert manifest["config"]["runner"]["name"] == RUNNERS[runner][0]
    check_export(out, manifest, expected, USERS, SHARDS)
    assert not os.path.exists(os.path.join(out, "_temporary"))


@pytest.mark.parametrize("runner", ["multi_process", "portable"])
def test_runner_gives_the_same_records_per_shard_as_in_process(exports, runner):
    _, results = exports
    reference = sorted_records(shard_records(*results["in_process"]))
    got = sorted_records(shard_records(*results[runner]))
    assert got == reference
    # Same bytes per record; the shard file bytes also match where the bundling matches.
    assert ([s["records"] for s in results[runner][1]["shards"]]
            == [s["records"] for s in results["in_process"][1]["shards"]])
