"""The built-in demo: generated user features, the demo model, and one local export run.

``embedding-export demo`` calls ``run_demo``: it writes ``<out>/users/part-*.parquet`` (seeded
random users), builds ``<out>/model`` (the demo SavedModel of ``pipeline.models``; reused when it
is already there with the same arguments), writes ``<out>/run_config.yaml`` (``run_configs/
local.yaml`` with the paths moved under ``<out>``), runs the export into ``<out>/export`` and prints
a summary. The demo owns ``<out>``: running it again replaces the data and the export.

The data generator is also what the benchmarks use (with the reference model's shapes).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.models import demo_model_kwargs, ensure_embedding_model
from pipeline.staging import staged_directory

__all__ = ["user_table", "user_ids", "write_user_files", "generate_users", "demo_config", "run_demo"]

# Twitter-style user ids: large, unique, not dense (snowflake ids are ~1.5e18).
_ID_LOW = 10**12
_ID_HIGH = 2**62
# Sparse ids are drawn from this range; 0 is the pad value, so never drawn.
_SPARSE_ID_HIGH = 10**10
ROW_GROUP_ROWS = 16384


def user_ids(count: int, seed: int) -> np.ndarray:
    """``count`` unique int64 user ids in [10^12, 2^62), shuffled, deterministic for ``seed``.

    Sorted unique ids are a cumulative sum of random positive gaps (so uniqueness needs no
    set), then shuffled; ids therefore arrive in no particular order, as in a real table.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng([seed, 0x1D5])
    max_gap = max(1, (_ID_HIGH - _ID_LOW) // max(count, 1) - 1)
    ids = _ID_LOW + np.cumsum(rng.integers(1, max_gap, size=count, endpoint=True, dtype=np.int64))
    return rng.permutation(ids)


def user_table(ids: np.ndarray, seed: Union[int, Sequence[int]], dense_dim: int = 32,
               max_sparse: int = 40) -> pa.Table:
    """Random features for ``ids``: a table (user_id int64, dense list<float32>, sparse_ids list<int64>).

    Args:
      ids: int64 user ids, one row each, in this order.
      seed: seed of the features, an int or a tuple of ints (the same ids and seed give the
        same table).
      dense_dim: length of every ``dense`` list (standard-normal values).
      max_sparse: ``sparse_ids`` lists are 0..max_sparse long (uniform), ids in [1, 10^10).
    """
    if dense_dim <= 0 or max_sparse < 0:
        raise ValueError(f"need dense_dim > 0 and max_sparse >= 0, got {dense_dim} and {max_sparse}")
    ids = np.asarray(ids, dtype=np.int64)
    rows = len(ids)
    if rows * max(dense_dim, max_sparse) >= 2**31:
        # list<> offsets are int32: split the users over more files instead.
        raise ValueError(f"{rows} rows of up to {max(dense_dim, max_sparse)} values overflow one Parquet "
                         "list column's int32 offsets; write them as more files")
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 0xFEA7])
    dense_values = rng.standard_normal(rows * dense_dim, dtype=np.float32)
    dense_offsets = np.arange(0, (rows + 1) * dense_dim, dense_dim, dtype=np.int32)
    lengths = rng.integers(0, max_sparse, size=rows, endpoint=True)
    sparse_offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=sparse_offsets[1:])
    sparse_values = rng.integers(1, _SPARSE_ID_HIGH, size=int(sparse_offsets[-1]), dtype=np.int64)
    return pa.table({
        "user_id": pa.array(ids, pa.int64()),
        "dense": pa.ListArray.from_arrays(pa.array(dense_offsets), pa.array(dense_values)),
        "sparse_ids": pa.ListArray.from_arrays(pa.array(sparse_offsets.astype(np.int32)),
                                               pa.array(sparse_values)),
    })


def write_user_files(directory: str, ids: np.ndarray, files: int, seed: int, dense_dim: int = 32,
                     max_sparse: int = 40, row_group_rows: int = ROW_GROUP_ROWS,
                     first_file: int = 0, total_files: Optional[int] = None) -> List[str]:
    """Write the users ``ids`` (split in order into ``files`` files) as ``part-SSSSS-of-NNNNN.parquet``.

    File k holds the k-th consecutive slice of ``ids`` and its features are seeded by
    (seed, first_file + k), so files can be written in separate calls (``first_file``) and
    still be deterministic. ``total_files`` is the NNNNN of the names (default: files).
    Returns the paths written, in order.
    """
    if files <= 0:
        raise ValueError(f"files must be > 0, got {files}")
    total = total_files if total_files is not None else first_file + files
    Path(directory).mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(np.array_split(np.asarray(ids, dtype=np.int64), files)):
        index = first_file + k
        path = os.path.join(directory, f"part-{index:05d}-of-{total:05d}.parquet")
        table = user_table(part, seed=(seed, index), dense_dim=dense_dim, max_sparse=max_sparse)
        pq.write_table(table, path, row_group_size=row_group_rows)
        paths.append(path)
    return paths


def generate_users(out_dir: str, users: int, files: int = 4, seed: int = 0, dense_dim: int = 32,
                   max_sparse: int = 40, row_group_rows: int = ROW_GROUP_ROWS) -> List[str]:
    """Write ``users`` random users to ``out_dir/users/part-*.parquet``, replacing what was there.

    Args:
      out_dir: the demo directory; the files go to its ``users/`` subdirectory.
      users: number of rows (unique user ids).
      files: number of Parquet files (rows split evenly, in order).
      seed: everything is deterministic for a seed.
      dense_dim: length of the ``dense`` lists.
      max_sparse: ``sparse_ids`` lists are 0..max_sparse long.
      row_group_rows: Parquet row-group size in rows.
    Returns:
      the paths of the files, sorted.
    """
    if users < 0:
        raise ValueError(f"users must be >= 0, got {users}")
    if files <= 0:
        raise ValueError(f"files must be > 0, got {files}")
    target = Path(out_dir) / "users"
    with staged_directory(target, prefix=".users.writing-") as staging:
        written = write_user_files(str(staging), user_ids(users, seed), files, seed, dense_dim,
                                   max_sparse, row_group_rows)
    return sorted(str(target / os.path.basename(p)) for p in written)


def demo_config(out_dir: str) -> Dict[str, Any]:
    """The raw run config of the demo: ``run_configs/local.yaml`` with its paths under ``out_dir``.

    Paths are absolute, so the written ``run_config.yaml`` works from any directory.
    """
    root = os.path.abspath(out_dir)
    model = demo_model_kwargs()
    return {
        "input": {"format": "parquet", "path": os.path.join(root, "users", "*.parquet"), "key": "user_id"},
        "model": {
            "path": os.path.join(root, "model"),
            "signature": "serving_default",
            "batch_size": 4096,
            "inputs": {"dense": {"column": "dense"},
                       "sparse_ids": {"column": "sparse_ids", "length": model["sparse_length"], "pad": 0}},
            "outputs": {"embedding": {"feature": "output"}},
            "intra_op_threads": 1,
        },
        "partition": {"num_shards": 16, "by": "hash"},
        "output": {"path": os.path.join(root, "export"), "format": "tfrecord", "compression": "none",
                   "key_feature": "meta.user_id"},
        # FnApiRunner, named explicitly, as in local.yaml: "DirectRunner" first tries Prism, which
        # it downloads, so a run would differ with and without a network (docs/RUNNING.md).
        "runner": {"name": "FnApiRunner",
                   "options": ["--direct_running_mode=in_memory", "--direct_num_workers=1"]},
    }


def _print_summary(manifest: Dict[str, Any], seconds: float, out_dir: str, stream=None) -> None:
    """The demo's closing summary: a rich table on a terminal, plain lines otherwise (or without rich)."""
    from pipeline.extras import available

    stream = stream or sys.stdout
    rows_read = int(manifest.get("rows_read", 0))
    shards = manifest.get("shards") or []
    root = os.path.abspath(out_dir)
    facts = [
        ("rows read", f"{rows_read:,}"),
        ("rows written", f"{int(manifest.get('rows_written', 0)):,}"),
        ("rows rejected", f"{int(manifest.get('rows_rejected', 0)):,}"),
        ("shards", f"{len(shards)} x {manifest.get('format', '?')}"
                   f" ({sum(int(s.get('bytes', 0)) for s in shards) / 2**20:,.1f} MiB)"),
        ("export time", f"{seconds:,.1f} s"),
        ("throughput", f"{rows_read / seconds:,.0f} rows/s" if seconds > 0 else "n/a"),
        ("input", os.path.join(root, "users")),
        ("model", os.path.join(root, "model")),
        ("output", os.path.join(root, "export")),
        ("run config", os.path.join(root, "run_config.yaml")),
    ]
    console = None
    if available("rich"):
        from rich.console import Console
        console = Console(file=stream)
    if console is None or not console.is_terminal:
        print("embedding-export demo: done", file=stream)
        for name, value in facts:
            print(f"  {name + ':':<15}{value}", file=stream)
        return
    from rich.table import Table

    table = Table(title="embedding-export demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in facts:
        table.add_row(name, value)
    console.print(table)


def run_demo(out_dir: str = "demo", users: int = 100000, *, seed: int = 0, stream=None) -> Dict[str, Any]:
    """Generate the demo data and model under ``out_dir``, export into ``out_dir/export``, print a summary.

    Args:
      out_dir: the demo's own directory (data, model, run config and export are replaced on rerun).
      users: number of generated users.
      seed: seed of the generated data (the model is always the seed-0 demo model).
      stream: where the summary goes (default stdout).
    Returns:
      the export's manifest (``_MANIFEST.json`` as a dict).
    """
    import yaml

    from pipeline.config import parse_config
    from pipeline.job import run_export

    model = demo_model_kwargs()
    generate_users(out_dir, users, seed=seed, dense_dim=model["dense_dim"])
    ensure_embedding_model(os.path.join(out_dir, "model"), **model)
    raw = demo_config(out_dir)
    config = parse_config(raw, source="demo config")
    Path(out_dir, "run_config.yaml").write_text(
        "# Written by `embedding-export demo`: run_configs/local.yaml with the paths under this directory.\n"
        + yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    manifest = run_export(config, overwrite=True)
    _print_summary(manifest, time.perf_counter() - start, out_dir, stream)
    return manifest
