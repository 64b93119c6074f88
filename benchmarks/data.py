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
           "batches", "padded_ids", "INTRA_OP_THREADS", "work_directory", "print_result",
           "DATARECORD_KEY", "DATARECORD_INTERESTS", "dense_feature_names", "datarecords_of_table",
           "prepare_datarecord_inputs", "datarecord_export_config"]

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
                   rows_per_file: int = ROWS_PER_FILE, reuse: bool = False) -> Dict[int, str]:
    """Write max(sizes) generated users once; return {size: file pattern of exactly that many rows}.

    Args:
      workdir: the benchmark's scratch directory (``data/`` is replaced).
      sizes: the row counts the runs need (e.g. N and 2N).
      model: the benchmark model (MODELS) whose input shapes the users get.
      seed: data seed.
      rows_per_file: the largest Parquet file, in rows.
      reuse: keep ``data/`` when it already holds every size (rows counted from the footers):
        10^7 users take minutes to generate.
    """
    shape = model_kwargs(model)
    counts = _segments(sizes, rows_per_file)
    root = Path(workdir) / "data"
    if reuse:
        found = _existing_inputs(root, sizes, shape["dense_dim"])
        if found is not None:
            return found
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


def _existing_inputs(root: Path, sizes: Iterable[int], dense_dim: int) -> Optional[Dict[int, str]]:
    """{size: pattern} of ``root``'s inputs when each ``rows-<size>/`` holds exactly that many rows
    with ``dense`` of ``dense_dim`` values, else None."""
    found = {}
    for size in sorted({int(s) for s in sizes}):
        files = sorted((root / f"rows-{size}").glob("*.parquet"))
        if not files:
            return None
        metas = [pq.read_metadata(f) for f in files]
        if sum(m.num_rows for m in metas) != size:
            return None
        first = pq.read_table(files[0], columns=["dense"]).slice(0, 1).column("dense")[0]
        if len(first) != dense_dim:
            return None
        found[size] = str(root / f"rows-{size}" / "*.parquet")
    return found


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


DATARECORD_KEY = "meta.user_id"
DATARECORD_INTERESTS = "user.interests"


def dense_feature_names(dense_dim: int) -> List[str]:
    """The continuous features that hold ``dense`` in the DataRecord form of the users."""
    return [f"user.f{i}" for i in range(dense_dim)]


def datarecords_of_table(table: pa.Table, dense_dim: int) -> List[bytes]:
    """The users of a benchmark table as serialized DataRecords, as a feature pipeline writes them:
    the key as the discrete feature ``meta.user_id``, each dense value as a continuous feature
    ``user.f<i>`` (a double), and the sparse ids as the strings of a sparse-binary feature
    ``user.interests`` (their decimal digits, in list order). Fields in ascending id order.

    The continuous maps come from the batch encoder (``encode_continuous_records``); the key and
    the string set, which differ in length per user, are joined to each record here.
    """
    import struct

    from twml.encode import T_I64, T_MAP, T_SET, T_STRING, encode_continuous_records
    from twml.feature_ids import feature_id

    rows = table.num_rows
    dense = table.column("dense").combine_chunks().flatten().to_numpy().reshape(rows, dense_dim)
    continuous = encode_continuous_records([feature_id(n) for n in dense_feature_names(dense_dim)],
                                           dense.astype(np.float64))
    keys = table.column("user_id").to_numpy().tolist()
    id_lists = table.column("sparse_ids").to_pylist()
    # Field 3, discreteFeatures {key id: key}; field 5, sparseBinaryFeatures {interests id: {...}}.
    key_head = struct.pack(">bhbbiq", T_MAP, 3, T_I64, T_I64, 1, feature_id(DATARECORD_KEY))
    set_head = struct.pack(">bhbbiq", T_MAP, 5, T_I64, T_SET, 1, feature_id(DATARECORD_INTERESTS))
    out = []
    for record, key, ids in zip(continuous, keys, id_lists):
        strings = [str(x).encode() for x in ids]
        out.append(b"".join([record[:-1], key_head, struct.pack(">q", key), set_head,
                             struct.pack(">bi", T_STRING, len(strings)),
                             *[struct.pack(">i", len(x)) + x for x in strings], b"\x00"]))
    return out


def prepare_datarecord_inputs(workdir: str, patterns: Dict[int, str], model: str) -> Dict[int, str]:
    """The users of ``prepare_inputs``' files as TFRecord files of DataRecords, one per Parquet
    file, linked per size as the Parquet files are; returns {size: file pattern}."""
    import glob

    from twml.io.tfrecord import TFRecordWriter

    dense_dim = model_kwargs(model)["dense_dim"]
    root = Path(workdir) / "data-datarecord"
    if root.exists():
        shutil.rmtree(root)
    files_dir = root / "files"
    files_dir.mkdir(parents=True)
    written = {}
    out = {}
    for size, pattern in sorted(patterns.items()):
        directory = root / f"rows-{size}"
        directory.mkdir()
        for path in sorted(glob.glob(pattern)):
            name = os.path.basename(path).replace(".parquet", ".tfrecord")
            target = files_dir / name
            if name not in written:
                with TFRecordWriter(str(target)) as writer:
                    for record in datarecords_of_table(pq.read_table(path), dense_dim):
                        writer.write(record)
                written[name] = target
            try:
                os.link(target, directory / name)
            except OSError:
                shutil.copyfile(target, directory / name)
        out[size] = str(directory / "*.tfrecord")
    return out


def datarecord_export_config(input_pattern: str, model_path: str, output_dir: str, model: str,
                             batch_size: int = 4096, num_shards: int = 16) -> Dict:
    """``export_config`` reading the DataRecord form of the users (``input.format: datarecord``)."""
    raw = export_config(input_pattern, model_path, output_dir, model, batch_size, num_shards)
    shape = model_kwargs(model)
    raw["input"] = {"format": "datarecord", "path": input_pattern, "container": "tfrecord", "key": DATARECORD_KEY,
                    "features": {"dense": {"continuous": dense_feature_names(shape["dense_dim"]), "default": 0.0},
                                 "sparse_ids": {"sparse_binary": DATARECORD_INTERESTS}}}
    raw["model"]["inputs"] = {"dense": {"column": "dense"},
                              "sparse_ids": {"column": "sparse_ids", "length": shape["sparse_length"], "pad": 0}}
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
