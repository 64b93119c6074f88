"""Generated users for the demo and the benchmarks: seeded, deterministic Parquet files.

``generate_users`` writes ``<out>/users/part-*.parquet`` (replacing what was there); the
benchmarks call ``user_ids``, ``user_table`` and ``write_user_files`` with the reference
model's shapes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo.staging import staged_directory

__all__ = ["user_table", "user_ids", "write_user_files", "generate_users", "ROW_GROUP_ROWS"]

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
