"""Benchmark inputs: the reference model, generated users of its shape, and preloaded batches.

Every run of one harness invocation reads the same generated rows: the users are written once
as consecutive Parquet files, and the input of a run over ``s`` rows is a directory of hard
links to the first files, which hold exactly ``s`` rows. So the 2N run reads the N run's rows
plus N more, and ``time(2N) - time(N)`` is the cost of those N rows alone.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo.run import demo_config
from pipeline.demo.users import user_ids, write_user_files
from pipeline.demo.models import demo_model_kwargs, ensure_embedding_model, reference_model_kwargs

__all__ = ["MODELS", "model_kwargs", "prepare_model", "prepare_inputs", "export_config", "load_arrays",
           "batches", "padded_ids", "INTRA_OP_THREADS", "work_directory", "print_result"]

ROWS_PER_FILE = 50_000
# The benchmark runs the export with model.intra_op_threads: 1, i.e. one thread per model call
# and one call per core at once (transforms.embed.concurrent_model_calls): on a small machine
# that beats one call spread over all cores, whose ops wait for the core that the bundle's own
# thread (reading, writing) is using. benchmarks/limit.py measures the model both ways.
INTRA_OP_THREADS = 1

MODELS = ("reference", "demo", "small")
"""Benchmark models: the reference model (benchmarks/README.md), the built-in demo model, and a tiny one of
the same architecture for smoke tests."""


def model_kwargs(model: str) -> Dict:
    """Builder arguments of a benchmark model (one of MODELS)."""
    if model == "small":
        return dict(dense_dim=16, sparse_length=8, vocab=1000, embed_dim=8, hidden=(32,), output_dim=16)
    if model == "demo":
        return demo_model_kwargs()
    if model == "reference":
        return reference_model_kwargs()
    raise ValueError(f"unknown benchmark model {model!r}; expected one of {MODELS}")


def prepare_model(workdir: str, model: str) -> str:
    """Build (or reuse) the benchmark model in ``workdir``; returns its path."""
    path = os.path.join(workdir, f"model-{model}")
    ensure_embedding_model(path, **model_kwargs(model))
    return path


def _segments(sizes: Iterable[int], rows_per_file: int) -> List[int]:
    """File row counts such that every size is the row count of a prefix of the files."""
    bounds = sorted({int(s) for s in sizes})
    if not bounds or bounds[0] <= 0:
        raise ValueError(f"row counts must be > 0, got {sorted(sizes)}")
    counts, previous = [], 0
    for bound in bounds:
        span = bound - previous
        files = max(1, math.ceil(span / rows_per_file))
        counts += [len(part) for part in np.array_split(np.arange(span), files)]
        previous = bound
    return counts


def prepare_inputs(workdir: str, sizes: Iterable[int], model: str, seed: int = 0,
                   rows_per_file: int = ROWS_PER_FILE) -> Dict[int, str]:
    """Write max(sizes) generated users once; return {size: file pattern of exactly that many rows}.

    Args:
      workdir: the benchmark's scratch directory (``data/`` is replaced).
      sizes: the row counts the runs need (e.g. N and 2N).
      model: the benchmark model (MODELS) whose input shapes the users get.
      seed: data seed.
      rows_per_file: the largest Parquet file, in rows.
    """
    shape = model_kwargs(model)
    counts = _segments(sizes, rows_per_file)
    root = Path(workdir) / "data"
    if root.exists():
        shutil.rmtree(root)
    files_dir = root / "files"
    ids = user_ids(sum(counts), seed)
    paths, start = [], 0
    for index, count in enumerate(counts):
        paths += write_user_files(str(files_dir), ids[start:start + count], 1, seed,
                                  dense_dim=shape["dense_dim"], max_sparse=shape["sparse_length"],
                                  first_file=index, total_files=len(counts))
        start += count
    patterns = {}
    for size in sorted({int(s) for s in sizes}):
        ends = np.cumsum(counts)
        used = int(np.searchsorted(ends, size)) + 1
        directory = root / f"rows-{size}"
        directory.mkdir()
        for path in paths[:used]:
            link = directory / os.path.basename(path)
            try:
                os.link(path, link)
            except OSError:  # no hard links on this filesystem: a copy reads the same
                shutil.copyfile(path, link)
        patterns[size] = str(directory / "*.parquet")
    return patterns


def export_config(input_pattern: str, model_path: str, output_dir: str, model: str,
                  batch_size: int = 4096, num_shards: int = 16) -> Dict:
    """The raw run config of a benchmark export: the demo's (``run_configs/local.yaml``'s runner and
    layout) pointed at the benchmark's data, model and output, with INTRA_OP_THREADS."""
    raw = demo_config(os.path.dirname(os.path.abspath(output_dir)))
    raw["input"]["path"] = input_pattern
    raw["model"]["path"] = model_path
    raw["model"]["batch_size"] = batch_size
    raw["model"]["intra_op_threads"] = INTRA_OP_THREADS
    raw["model"]["inputs"]["sparse_ids"]["length"] = model_kwargs(model)["sparse_length"]
    raw["partition"]["num_shards"] = num_shards
    raw["output"]["path"] = output_dir
    return raw


def padded_ids(lists: pa.ListArray, length: int, pad: int = 0) -> np.ndarray:
    """int64 [rows, length]: each list truncated to its first ``length`` ids and padded with ``pad``."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.flatten().to_numpy()
    rows = len(offsets) - 1
    lengths = np.diff(offsets)
    out = np.full((rows, length), pad, dtype=np.int64)
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    keep = position < length
    out[row_of[keep], position[keep]] = values[keep]
    return out


def load_arrays(pattern: str, dense_dim: int, sparse_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """The rows of ``pattern`` (files in name order) as model inputs: dense [R, dense_dim], sparse_ids [R, L]."""
    import glob

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no input files match {pattern}")
    table = pa.concat_tables(pq.read_table(f, columns=["dense", "sparse_ids"]) for f in files)
    dense = table.column("dense").combine_chunks().flatten().to_numpy().astype(np.float32, copy=False)
    if len(dense) != len(table) * dense_dim:
        raise ValueError(f"{pattern}: dense lists are not all {dense_dim} long")
    return dense.reshape(len(table), dense_dim), padded_ids(table.column("sparse_ids"), sparse_length)


def batches(dense: np.ndarray, sparse: np.ndarray, rows: int, batch_size: int
            ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The first ``rows`` rows cut into (dense, sparse_ids) batches of ``batch_size`` (views, no copy)."""
    return [(dense[i:min(i + batch_size, rows)], sparse[i:min(i + batch_size, rows)])
            for i in range(0, rows, batch_size)]


@contextlib.contextmanager
def work_directory(workdir: Optional[str], prefix: str) -> Iterator[str]:
    """``workdir`` (made if missing, kept afterwards), or a new temp directory removed at the end."""
    path = workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        if not workdir:
            shutil.rmtree(path, ignore_errors=True)


def print_result(result: dict, json_path: Optional[str] = None) -> None:
    """Print a benchmark's JSON result and, when asked, write it to ``json_path`` too."""
    text = json.dumps(result, indent=2)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    print(text)
