"""Count user keys that the export writes more than once (they are exported as they come).

A duplicate key is not an error the job can resolve (which row is right?), but the manifest must
say how many there are. Two ways, both exact:

- **Per shard** (hash placement, the default): every copy of a key goes to the same shard, so a
  shard's duplicates are all the duplicates of its keys. The writer logs the keys of each part
  file it writes to a key log beside it (``KeyLog``: Arrow IPC, 8 bytes a row, written in pieces
  of ``KEY_LOG_ROWS`` keys), and the step that assembles the shard counts them
  (``count_logged_keys``). No key crosses a shuffle, and memory holds one shard's keys at a
  time: a runner that keeps its shuffle in memory (Beam's local FnApiRunner) would otherwise
  hold every key of the run.
- **By bucket** (``CountDuplicateKeys``, for a partition-id column, which may send copies of a
  key to different shards): every batch's keys are split into buckets by
  ``fmix64(key) % buckets``; one step per bucket counts them. Only the keys cross the shuffle,
  8 bytes a row, and a bucket holds about ``KEYS_PER_BUCKET`` keys in memory.

Either way string keys are counted by their strings, their int64 ids alongside: a key is its
string, and an id shared by different strings (a hash collision) is reported for the manifest.
"""
from __future__ import annotations

import collections
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.elements import EmbeddedBatch, ShardResult
from transforms.formats import open_read, open_write
from transforms.partition import split_by_shard
from twml.sharding import shard_of_keys

__all__ = ["CountDuplicateKeys", "KeyLog", "KEY_LOG_ROWS", "KEY_LOG_SUFFIX", "count_logged_keys", "duplicate_counts",
           "sum_duplicate_counts", "shard_duplicates", "bucket_count", "KEYS_PER_BUCKET", "Collision",
           "DuplicateCounts", "NO_DUPLICATES"]

KEY_LOG_ROWS = 1 << 17
"""Keys a part's ``KeyLog`` holds before it writes them (1 MiB of int64 keys)."""
KEY_LOG_SUFFIX = ".keys"
"""A part file's key log is the part's path with this suffix (``KeyLog``)."""
KEYS_PER_BUCKET = 1 << 20
"""About 8 MiB of keys a bucket."""


def bucket_count(total_rows: Optional[int]) -> int:
    """Buckets for about KEYS_PER_BUCKET keys each (16 when the row count is not known)."""
    if total_rows is None:
        return 16
    return max(1, math.ceil(total_rows / KEYS_PER_BUCKET))


Collision = Tuple[int, Tuple[str, ...]]
"""A string-key id shared by different keys: (key id, the keys, sorted)."""
DuplicateCounts = Tuple[int, int, Tuple[Collision, ...]]
"""(keys that occur more than once, rows beyond the first of each key, key-id collisions)."""
NO_DUPLICATES: DuplicateCounts = (0, 0, ())


@beam.typehints.with_input_types(Iterable[DuplicateCounts])  # a combiner's types: Beam reads no string annotations
@beam.typehints.with_output_types(DuplicateCounts)
def sum_duplicate_counts(counts: Iterable[DuplicateCounts]) -> DuplicateCounts:
    """The counts of disjoint sets of keys (shards, buckets) added up; collisions sorted by id."""
    keys = rows = 0
    collisions: List[Collision] = []
    for k, r, c in counts:
        keys += k
        rows += r
        collisions.extend(c)
    return keys, rows, tuple(sorted(collisions))


class KeyLog:
    """The keys of one part file: an Arrow IPC stream at ``path`` with ``key`` (int64; string
    keys: their ids) and, for string keys, ``key_string`` (binary).

    Keys are held in memory and written when ``KEY_LOG_ROWS`` of them are held, and at ``close``:
    a small part opens its log once, at the end (an object store's writer holds an upload buffer
    for each open file), and a bundle holds at most ``KEY_LOG_ROWS`` keys of each open part,
    however many rows it writes.

    Args:
      path: where the log goes (beside the part file, in the run's scratch directory).
    """

    def __init__(self, path: str):
        self.path = path
        self._keys: List[np.ndarray] = []
        self._strings: List[np.ndarray] = []
        self._held = 0
        self._file = None
        self._writer: Optional[pa.ipc.RecordBatchStreamWriter] = None

    def add(self, batch: EmbeddedBatch) -> None:
        self._keys.append(np.asarray(batch.keys, dtype=np.int64))
        if batch.key_strings is not None:
            self._strings.append(batch.key_strings)
        self._held += len(batch)
        if self._held >= KEY_LOG_ROWS:
            self._write()

    def _write(self) -> None:
        if not self._keys:
            return
        columns = {"key": pa.array(np.concatenate(self._keys))}
        if self._strings:
            columns["key_string"] = pa.array(np.concatenate(self._strings), type=pa.binary())
        table = pa.table(columns)
        self._keys, self._strings, self._held = [], [], 0
        if self._writer is None:
            self._file = open_write(self.path)
            self._writer = pa.ipc.new_stream(self._file, table.schema)
        self._writer.write_table(table)

    def close(self) -> Optional[str]:
        """Write what is held and close; the log's path, or None when no key was logged."""
        self._write()
        if self._writer is None:
            return None
        self._writer.close()
        self._file.close()
        return self.path


def shard_duplicates(result: ShardResult) -> DuplicateCounts:
    """The duplicate counts of a shard assembled with ``count_duplicates`` (``transforms.write``)."""
    if result.duplicates is None:
        raise ValueError(f"shard {result.shard} was assembled without counting its duplicate keys")
    return result.duplicates


def count_logged_keys(paths: Sequence[str]) -> DuplicateCounts:
    """``duplicate_counts`` over the keys of the key logs at ``paths`` (one shard's parts)."""
    keys: List[np.ndarray] = []
    strings: List[np.ndarray] = []
    for path in paths:
        with open_read(path) as handle:
            table = pa.ipc.open_stream(handle.read()).read_all()
        keys.append(table.column("key").to_numpy())
        if "key_string" in table.column_names:
            strings.append(np.array(table.column("key_string").to_pylist(), dtype=object))
    if not keys:
        return NO_DUPLICATES
    return duplicate_counts(np.concatenate(keys), np.concatenate(strings) if strings else None)


def duplicate_counts(keys: np.ndarray, strings: Optional[np.ndarray] = None) -> DuplicateCounts:
    """(keys that occur more than once, rows beyond the first of each key, collisions).

    With ``strings`` (string keys: ``keys`` are their int64 ids) a key is its string: rows with
    one id but different strings are different users whose ids collide (a 64-bit hash
    collision), listed in ``collisions`` (docs/FORMAT.md section 5), not counted as duplicates.
    """
    if len(keys) == 0:
        return 0, 0, ()
    keys = np.asarray(keys, dtype=np.int64)
    if strings is None:  # one sorted copy, no inverse and counts arrays of the keys' length
        ordered = np.sort(keys)
        same = ordered[1:] == ordered[:-1]  # a row whose key the row before it has: an extra copy
        if not same.any():
            return 0, 0, ()
        starts = same & ~np.concatenate(([False], same[:-1]))  # the first extra copy of each key
        return int(starts.sum()), int(same.sum()), ()
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    repeated = counts[counts > 1]
    if strings is None or not len(repeated):
        return int(len(repeated)), int((repeated - 1).sum()), ()
    # Only the rows of repeated ids (few) are looked at by string.
    duplicated = rows = 0
    collisions: List[Collision] = []
    inverse = inverse.reshape(-1)
    for group in np.flatnonzero(counts > 1).tolist():
        per_key = collections.Counter(strings[inverse == group].tolist())
        duplicated += sum(1 for n in per_key.values() if n > 1)
        rows += sum(n - 1 for n in per_key.values())
        if len(per_key) > 1:
            collisions.append((int(unique[group]), tuple(sorted(k.decode("utf-8") for k in per_key))))
    return duplicated, rows, tuple(collisions)


@beam.typehints.with_input_types(EmbeddedBatch)
@beam.typehints.with_output_types(Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]])
class _KeysByBucketFn(beam.DoFn):
    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, batch: EmbeddedBatch) -> Iterable[Tuple[int, Tuple[np.ndarray, Optional[np.ndarray]]]]:
        keys = np.asarray(batch.keys, dtype=np.int64)
        strings = batch.key_strings
        if self._buckets == 1:  # every key in bucket 0 (inputs up to KEYS_PER_BUCKET rows): no hash, no sort
            yield 0, (keys, strings)
            return
        for bucket, rows in split_by_shard(shard_of_keys(keys, self._buckets)):
            yield bucket, (keys[rows], None if strings is None else strings[rows])


def _count_bucket(item: Tuple[int, Iterable[Tuple[np.ndarray, Optional[np.ndarray]]]]) -> DuplicateCounts:
    _, pairs = item
    pairs = list(pairs)
    if not pairs:
        return NO_DUPLICATES
    keys = np.concatenate([k for k, _ in pairs])
    strings = None if any(s is None for _, s in pairs) else np.concatenate([s for _, s in pairs])
    return duplicate_counts(keys, strings)


class CountDuplicateKeys(beam.PTransform):
    """EmbeddedBatch -> one (duplicated keys, extra rows, key-id collisions) per key bucket that holds keys.

    Args:
      buckets: key buckets (``bucket_count(total rows)``).
    """

    def __init__(self, buckets: int):
        super().__init__()
        self._buckets = buckets

    def expand(self, batches):
        return (batches
                | "KeysByBucket" >> beam.ParDo(_KeysByBucketFn(self._buckets))
                | "GroupKeys" >> beam.GroupByKey()
                | "CountBucket" >> beam.Map(_count_bucket).with_output_types(DuplicateCounts))
