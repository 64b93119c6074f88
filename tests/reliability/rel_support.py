"""Shared pieces of the reliability suite: a model that raises on poisoned rows, run configs on
disk, the real command line in a subprocess, and the checks every export must pass."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import pipeline.job
import transforms.export
from pipeline.tools.verify import verify_export
from pipeline_fixtures import build_tiny_model, cache_dir, shard_records, user_table
from transforms.ownership import looks_like_output

# Figures the tests record for the reliability note; conftest prints them after the run.
FIGURES: Dict[str, list] = {}

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POISON_ID = 123_456_789   # an id the generated users never carry (they use 1..9999)


def build_poison_model(path: str, always: bool = False) -> str:
    """The tiny model (``build_tiny_model``) guarded by
    ``tf.debugging.assert_none_equal(sparse_ids, POISON_ID)``: a real SavedModel that raises
    InvalidArgumentError on any batch holding a poisoned row (or, with ``always``, on every batch)."""
    import tensorflow as tf

    def guard(dense, sparse_ids):
        if always:
            tf.debugging.assert_equal(tf.shape(dense)[0], -1, message="this model always fails")
        tf.debugging.assert_none_equal(sparse_ids, tf.constant(POISON_ID, tf.int64),
                                       message="poisoned id in the batch")

    return build_tiny_model(path, guard=guard)


def poison_model(always: bool = False) -> str:
    path = os.path.join(cache_dir(), f"poison-model-{int(always)}")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        build_poison_model(path, always)
    return path


def poisoned_users(keys: np.ndarray, poisoned: Sequence[int], seed: int = 0) -> pa.Table:
    """Good users for ``keys``; the rows at ``poisoned`` carry POISON_ID as their first id."""
    table = user_table(keys, seed)
    ids = table.column("sparse_ids").to_pylist()
    for row in poisoned:
        ids[row] = [POISON_ID] + list(ids[row])[:2]
    return table.set_column(table.column_names.index("sparse_ids"), "sparse_ids", pa.array(ids, pa.list_(pa.int64())))


SMALL_PART_BUFFER = 4096   # bytes a bundle holds before it appends to a part file
SMALL_OPEN_PARTS = 2       # part files a bundle keeps open


def write_small_parts(monkeypatch) -> None:
    """Make ``run_export`` write every shard as many small parts: a 4 KiB part buffer and at most
    two open parts per bundle (both are set when the pipeline is built, so the settings reach
    workers in other processes too)."""
    monkeypatch.setattr(pipeline.job, "build_pipeline",
                        functools.partial(pipeline.job.build_pipeline, buffer_bytes=SMALL_PART_BUFFER))
    monkeypatch.setattr(transforms.export, "WriteShards",
                        functools.partial(transforms.export.WriteShards, max_open_parts=SMALL_OPEN_PARTS))


def write_config(cfg, path: str) -> str:
    with open(path, "w") as handle:
        yaml.safe_dump(cfg.model_dump(mode="json"), handle)
    return path


def cli_command(config_path: str, *extra: str) -> List[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", "--config", config_path, *extra]


def cli_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_cli(config_path: str, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(cli_command(config_path, *extra), cwd=ROOT, env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0, interval: float = 0.002) -> bool:
    """Poll ``predicate`` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(interval)
    raise TimeoutError("the run neither reached the awaited moment nor ended")


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL the process (it cannot run any cleanup) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)


def final_looking(out: str) -> List[str]:
    """Files a loader of exports would pick up: part-* at the top, anything under _rejected/,
    _MANIFEST.json, _SUCCESS."""
    found = []
    for dirpath, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/")
            if looks_like_output(rel):
                found.append(rel)
    return sorted(found)


def tree(out: str) -> List[str]:
    found = []
    for dirpath, _, files in os.walk(out):
        found += [os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/") for name in files]
    return sorted(found)


def read_bytes(out: str, names: Sequence[str]) -> Dict[str, bytes]:
    result = {}
    for name in names:
        with open(os.path.join(out, name), "rb") as handle:
            result[name] = handle.read()
    return result


def assert_accounted(out: str, manifest: Dict, verify: bool = True) -> Dict[int, List[bytes]]:
    """Guarantee 1 on a finished export: every row read is written or rejected, by counting the
    files themselves, and the rejected rows keep their columns plus reason and error."""
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_rejected"]
    records = shard_records(out, manifest)
    assert sum(len(r) for r in records.values()) == manifest["rows_written"]
    rejected_rows = 0
    for entry in manifest["rejected_files"]:
        table = pq.read_table(os.path.join(out, entry["file"]))
        assert {"user_id", "reason", "source_file", "error"} <= set(table.column_names)
        assert table.column("reason").null_count == 0
        rejected_rows += table.num_rows
    assert rejected_rows == manifest["rows_rejected"]
    if verify:
        report = verify_export(out)
        assert report.ok, [str(p) for p in report.problems]
        assert report.records == manifest["rows_written"]
    return records


def rejected_table(out: str, manifest: Dict) -> Optional[pa.Table]:
    tables = [pq.read_table(os.path.join(out, e["file"])) for e in manifest["rejected_files"]]
    return pa.concat_tables(tables) if tables else None
