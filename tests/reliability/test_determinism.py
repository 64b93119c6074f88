"""Guarantee 7: the same input and model give byte-identical shard files when the runner and its
options are the same, and the same records in every shard across runners (bundling differs, so
record order within a shard may too). tests/test_job_runners.py adds the multi-process and the
portable runner; here the in-process runner with one and with two worker threads, and Beam's
bundle-based direct runner, and two multi-process runs whose shards are each assembled from many
parts arriving in whatever order the workers finish them."""
import os

import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import exact_model, tiny_config, tiny_model, write_users
from rel_support import FIGURES, assert_accounted, write_small_parts

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


def _small_buffer_runs(users, tmp_path, monkeypatch, runner_options):
    """Two exports of ``users`` with a 4 KiB part buffer and at most two open parts per bundle, so
    that every shard is joined from many parts: [(manifest, shard bytes, part files written)]."""
    write_small_parts(monkeypatch)
    runs = []
    for i in range(2):
        out = str(tmp_path / f"run{i}")
        results = []
        manifest = run_export(preflight(tiny_config(users, exact_model(), out, num_shards=SHARDS, runner="FnApiRunner",
                                                    runner_options=runner_options)),
                              on_launch=lambda result, options: results.append(result))
        assert_accounted(out, manifest, verify=(i == 0))
        counters = results[0].metrics().query(MetricsFilter().with_name("part_files"))["counters"]
        part_files = sum(c.committed for c in counters)
        assert part_files >= 4 * SHARDS, part_files  # the case under test: shards joined from many parts
        runs.append((manifest, shard_bytes(out, manifest), part_files))
    return runs


def test_in_process_runs_with_small_buffers_give_byte_identical_shards(users, tmp_path, monkeypatch):
    """Many parts per shard, on the in-process runner: the same bytes twice."""
    (first, first_bytes, parts), (_, second_bytes, _) = _small_buffer_runs(
        users, tmp_path, monkeypatch, ["--direct_running_mode=in_memory"])
    assert first_bytes == second_bytes
    ROWS_CHECKED.append(f"in-process, 4 KiB buffers: 2 runs x {first['rows_written']} records from {parts} part "
                        f"files each, byte-identical")


def test_multi_process_runs_with_small_buffers_give_byte_identical_shards(users, tmp_path, monkeypatch):
    """Two worker processes, whose bundles finish in any order: the same bytes twice. Each worker
    reads the same row groups every run (``SpreadOverWorkers``; with Beam's Reshuffle a worker's
    share changed from run to run, and the shards' bytes with it in about half the runs), and the
    assembler joins a shard's parts in checksum order, not arrival order."""
    runs = _small_buffer_runs(users, tmp_path, monkeypatch,
                              ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    (first, first_bytes, first_parts), (_, second_bytes, second_parts) = runs
    assert first_bytes == second_bytes
    ROWS_CHECKED.append(f"multi-process, 4 KiB buffers: 2 runs x {first['rows_written']} records from "
                        f"{first_parts} and {second_parts} part files, byte-identical")
