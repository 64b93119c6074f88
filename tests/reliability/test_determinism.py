"""Guarantee 7: the same input and model give byte-identical shard files when the runner and its
options are the same, and the same records in every shard across runners (bundling differs, so
record order within a shard may too). tests/test_job_runners.py adds the multi-process and the
portable runner; here the in-process runner with one and with two worker threads, and Beam's
bundle-based direct runner."""
import os

import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES, assert_accounted

pytestmark = pytest.mark.timeout(180)

SHARDS = 5
ROWS_CHECKED = FIGURES.setdefault("rows checked end to end (determinism)", [])
RUNNERS = {
    "in_memory": ("FnApiRunner", ["--direct_running_mode=in_memory"]),
    "two_threads": ("FnApiRunner", ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]),
    "bundle_based": ("BundleBasedDirectRunner", []),
}


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    write_users(str(root / "in"), 1500, files=3, bad=True, row_group_size=200)
    return str(root / "in" / "*.parquet")


def shard_bytes(out, manifest):
    return [open(os.path.join(out, s["file"]), "rb").read() for s in manifest["shards"]]


@pytest.mark.parametrize("fmt,compression", [("tfrecord", "gzip"), ("block", "none"), ("parquet", "none")])
def test_two_runs_give_byte_identical_shards(users, tmp_path, fmt, compression):
    runs = []
    for i in range(2):
        out = str(tmp_path / f"run{i}")
        manifest = run_export(preflight(tiny_config(users, tiny_model(), out, num_shards=SHARDS, fmt=fmt,
                                          compression=compression)))
        assert_accounted(out, manifest, verify=(i == 0))
        runs.append((manifest, shard_bytes(out, manifest)))
    (first, first_bytes), (second, second_bytes) = runs
    assert first["run_id"] != second["run_id"]
    assert first_bytes == second_bytes
    assert [s["crc32c"] for s in first["shards"]] == [s["crc32c"] for s in second["shards"]]
    ROWS_CHECKED.append(f"{fmt}/{compression}: 2 runs x {first['rows_written']} records, byte-identical")


def test_runners_give_the_same_records_per_shard(users, tmp_path):
    per_runner = {}
    for name, (runner, options) in RUNNERS.items():
        out = str(tmp_path / name)
        manifest = run_export(preflight(tiny_config(users, tiny_model(), out, num_shards=SHARDS, runner=runner,
                                          runner_options=options)))
        records = assert_accounted(out, manifest, verify=False)
        per_runner[name] = {shard: sorted(recs) for shard, recs in records.items()}
    reference = per_runner.pop("in_memory")
    for name, records in per_runner.items():
        assert records == reference, name
    ROWS_CHECKED.append(f"{len(RUNNERS)} runners x {sum(len(r) for r in reference.values())} records compared")
