"""``embedding-export verify DIR``: check that an export is complete and every record is sound.

What is checked (docs/FORMAT.md):

- the directory: ``_MANIFEST.json`` parses, ``_SUCCESS`` exists, every shard the manifest lists
  exists under the name docs/FORMAT.md section 1 gives it, and no other ``part-*`` file is there;
- the manifest: one entry per shard, feature ids match their names, rows_read == rows_written +
  rows_rejected, and the shard counts add up to rows_written;
- every shard, streamed in batches: framing and checksums (TFRecord crc32c, gzip crc, parquet
  pages), every record decoded, the key and an embedding of the manifest's dimension present,
  every value finite, every further output the manifest lists present with its dtype and shape
  and finite, a string key non-empty UTF-8 with ``feature_id(key)`` as its key id
  (docs/FORMAT.md section 5), the record in the shard its key (id) hashes to (hash placement
  only: exports placed by an input column cannot be checked from the records, and the summary
  says so), for parquet the ``key`` (and ``key_id``) and ``embedding`` columns equal to the
  decoded record, and the record and byte counts equal to the manifest's (plus the file's crc32c
  when the manifest records one);
- the rejected-rows files the manifest lists: present, with the row counts, bytes and crc32c it
  gives; any other file under ``_rejected/`` is a problem.

Memory is bounded by the batch size: a shard is never loaded whole (only its keys are kept, 8
bytes a record, to find duplicate users). Shards are independent, so ``--processes N`` checks N
at a time. ``verify_export`` is the pure function (``verify_shard`` its per-shard part); ``main``
prints a summary table (rich on a terminal, plain text otherwise) and returns 0 only when all holds.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.tools.exports import (DEFAULT_BATCH_SIZE, RecordBatch, ShardReadError, file_size, is_directory,
                                    iter_record_batches, list_directory)
from transforms.errors import ExportError
from transforms.outputdir import (MANIFEST_NAME, REJECTED_DIR, SUCCESS_NAME, ExportManifest, is_remote, join_path, open_binary,
                                  parse_shard_file_name, read_manifest, shard_file_name)
from twml.sharding import shard_of_keys
from twml.decode import decode_data_record, decode_embeddings, tensor_to_numpy
from twml.encode import encode_data_records
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id, string_key_ids

__all__ = ["DEFAULT_MAX_PROBLEMS", "Problem", "ShardCheck", "ShardOutcome", "VerifyReport", "verify_shard",
           "verify_export", "print_report", "register", "main"]

DEFAULT_MAX_PROBLEMS = 50
_FLOAT_DATA_TYPE = 0          # tensor.thrift DataType.FLOAT
_TABLE_ALL_SHARDS_UP_TO = 64  # above this the table lists only shards with problems


@dataclass(frozen=True)
class Problem:
    """One thing that does not hold.

    Attributes:
      message: what is wrong.
      file: the file (relative to the export directory) it is in, if any.
      record: index of the first record concerned in that shard, if any.
      offset: byte offset in the (decompressed) file, when the reader knows it.
    """
    message: str
    file: Optional[str] = None
    record: Optional[int] = None
    offset: Optional[int] = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{' '.join(where)}: {self.message}" if where else self.message


@dataclass
class ShardCheck:
    """What was found in one shard file (``records`` counts records read before any framing error)."""
    index: int
    file: str
    records: int = 0
    bytes: Optional[int] = None
    manifest_records: Optional[int] = None
    manifest_bytes: Optional[int] = None
    read_to_end: bool = False
    problems: int = 0
    missing: bool = False


@dataclass
class VerifyReport:
    """The outcome of ``verify_export``; ``ok`` is True only when no problem was found.

    ``problems`` keeps the first ``max_problems`` in the order found (directory, then shards in
    order, then totals); ``problem_count`` counts all of them. ``warnings`` are things worth a
    look that do not make the export wrong (duplicate keys, zero vectors, stray files).
    """
    path: str
    format: Optional[str] = None
    compression: Optional[str] = None
    num_shards: Optional[int] = None
    embedding_dim: Optional[int] = None
    key_type: Optional[str] = None
    outputs_checked: List[str] = field(default_factory=list)
    partition_by: Optional[str] = None
    placement_checked: bool = False
    records: int = 0
    rows_written: Optional[int] = None
    shards: List[ShardCheck] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: List[str] = field(default_factory=list)
    norm_min: Optional[float] = None
    norm_mean: Optional[float] = None
    norm_max: Optional[float] = None
    max_problems: int = DEFAULT_MAX_PROBLEMS

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem, count: int = 1) -> None:
        self.problem_count += count
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["problems"] = [{**asdict(p), "text": str(p)} for p in self.problems]
        return out


# ----------------------------------------------------------------------------------------------
# Per-shard checks

class _ShardChecker:
    """Checks the batches of one shard and folds repeated problems of a kind into one.

    A whole shard of misplaced or non-finite records is one Problem naming the first record and
    the count, not a million lines. Args: the manifest, the shard's index and check, and whether
    the shard placement can be checked (hash placement).
    """

    def __init__(self, manifest: ExportManifest, shard: ShardCheck, check_placement: bool):
        self.manifest = manifest
        self.shard = shard
        self.check_placement = check_placement
        self.first: Dict[str, Problem] = {}
        self.counts: Dict[str, int] = {}
        self.keys: List[np.ndarray] = []
        self.strings: List[np.ndarray] = []   # string keys: the keys themselves (``keys`` holds their ids)
        self.norm_min = np.inf
        self.norm_max = -np.inf
        self.norm_sum = 0.0
        self.norm_count = 0
        self.zero_vectors = 0

    def note(self, kind: str, record: int, message: str, count: int = 1, offset: Optional[int] = None) -> None:
        if kind not in self.first or record < self.first[kind].record:
            self.first[kind] = Problem(message, self.shard.file, record, offset)
        self.counts[kind] = self.counts.get(kind, 0) + count

    def check(self, batch: RecordBatch, path: str) -> None:
        keys, embeddings, decoded, strings = _decode_batch(batch, self.manifest, path, self)
        self.shard.records += len(batch)
        if not decoded.any():
            return
        index = batch.first + np.flatnonzero(decoded)
        if batch.key_strings is not None and strings is not None:
            self._check_parquet_key_strings(batch, decoded, index, strings)
        keys, embeddings = keys[decoded], embeddings[decoded]
        self.keys.append(keys)
        if strings is not None:
            self.strings.append(strings[decoded])
        if embeddings.shape[1] != self.manifest.embedding_dim:
            self.note("dim", int(index[0]), f"embedding has dimension {embeddings.shape[1]}, "
                      f"the manifest says {self.manifest.embedding_dim}", count=len(index))
            return
        finite = np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            self.note("finite", int(index[bad[0]]),
                      f"embedding of key {int(keys[bad[0]])} has non-finite values", count=len(bad))
        if self.check_placement:
            shards = shard_of_keys(keys, self.manifest.num_shards)
            what = "key_id" if self.manifest.string_keys else "key"
            wrong = np.flatnonzero(shards != self.shard.index)
            if len(wrong):
                i = wrong[0]
                self.note("placement", int(index[i]),
                          f"{what} {int(keys[i])} belongs in shard {int(shards[i])} "
                          f"(fmix64({what}) % {self.manifest.num_shards}), not shard {self.shard.index}",
                          count=len(wrong))
        if batch.keys is not None:
            self._check_parquet_columns(batch, decoded, index, keys, embeddings)
        norms = np.linalg.norm(embeddings[finite].astype(np.float64), axis=1)
        if len(norms):
            self.norm_min = min(self.norm_min, float(norms.min()))
            self.norm_max = max(self.norm_max, float(norms.max()))
            self.norm_sum += float(norms.sum())
            self.norm_count += len(norms)
            self.zero_vectors += int((norms == 0).sum())

    def _string_key_warnings(self, outcome: "ShardOutcome") -> None:
        """String keys: duplicate keys (one string twice) and key ids shared by different strings."""
        ids, strings = np.concatenate(self.keys), np.concatenate(self.strings)
        unique, counts = np.unique(strings.astype(str), return_counts=True)
        if len(unique) != len(strings):
            outcome.warnings.append(f"{self.shard.file}: {len(strings) - len(unique)} duplicate key(s), "
                                    f"e.g. key {unique[np.argmax(counts)]!r} x{int(counts.max())}")
        shared = collections.defaultdict(set)
        for key_id, key in zip(ids.tolist(), strings.tolist()):
            shared[key_id].add(key)
        collided = sorted((key_id, sorted(keys)) for key_id, keys in shared.items() if len(keys) > 1)
        if collided:
            key_id, keys = collided[0]
            outcome.warnings.append(f"{self.shard.file}: {len(collided)} key id(s) shared by different keys, e.g. "
                                    f"{key_id} by {keys} (a hash collision; the manifest lists key_id_collisions)")

    def _check_parquet_key_strings(self, batch: RecordBatch, decoded: np.ndarray, index: np.ndarray,
                                   strings: np.ndarray) -> None:
        """String keys in parquet: the ``key`` column equals the record's string key."""
        column, held = batch.key_strings[decoded], strings[decoded]
        wrong = [i for i in range(len(column)) if column[i] != held[i]]
        if wrong:
            i = wrong[0]
            self.note("parquet_key", int(index[i]), f"column key is {column[i]!r} but the data_record holds "
                      f"key {held[i]!r}", count=len(wrong))

    def _check_parquet_columns(self, batch: RecordBatch, decoded: np.ndarray, index: np.ndarray,
                               keys: np.ndarray, embeddings: np.ndarray) -> None:
        column_keys = batch.keys[decoded]
        wrong = np.flatnonzero(column_keys != keys)
        if len(wrong):
            i = wrong[0]
            self.note("parquet_key", int(index[i]), f"column key is {int(column_keys[i])} but the "
                      f"data_record holds key {int(keys[i])}", count=len(wrong))
        column_emb = batch.embeddings[decoded]
        if column_emb.shape != embeddings.shape:
            self.note("parquet_embedding", int(index[0]), f"column embedding has shape {column_emb.shape[1:]}, "
                      f"the data_record {embeddings.shape[1:]}", count=len(index))
            return
        # Bitwise: NaN payloads and -0.0 must match too.
        differs = (np.ascontiguousarray(column_emb).view(np.uint32)
                   != np.ascontiguousarray(embeddings).view(np.uint32)).any(axis=1)
        if differs.any():
            i = np.flatnonzero(differs)[0]
            self.note("parquet_embedding", int(index[i]), f"column embedding differs from the "
                      f"data_record's embedding (key {int(keys[i])})", count=int(differs.sum()))

    def finish(self, outcome: "ShardOutcome") -> None:
        """Fold the problems noted into ``outcome`` (one a kind, with its count), plus warnings."""
        for kind, problem in sorted(self.first.items(), key=lambda kv: kv[1].record):
            count = self.counts[kind]
            message = problem.message
            if count > 1:
                message += f" ({count} records of this shard have this problem)"
            outcome.add(Problem(message, problem.file, problem.record, problem.offset), count)
        if self.strings:
            self._string_key_warnings(outcome)
        elif self.keys:
            keys = np.concatenate(self.keys)
            unique, counts = np.unique(keys, return_counts=True)
            if len(unique) != len(keys):
                dup = int(unique[np.argmax(counts)])
                outcome.warnings.append(f"{self.shard.file}: {len(keys) - len(unique)} duplicate key(s), "
                                        f"e.g. key {dup} x{int(counts.max())}")
        if self.zero_vectors:
            outcome.warnings.append(f"{self.shard.file}: {self.zero_vectors} all-zero embedding(s)")
        outcome.norm_min, outcome.norm_max = self.norm_min, self.norm_max
        outcome.norm_sum, outcome.norm_count = self.norm_sum, self.norm_count


def _decode_batch(batch: RecordBatch, manifest: ExportManifest, path: str, checker: _ShardChecker
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(keys, embeddings, decoded mask, string keys or None) of a batch; records that do not
    decode become problems. ``keys`` are the int64 keys, or a string-key export's key ids.

    An export with further outputs or string keys has every record decoded strictly on its own
    (once), so each output and the string key are checked against the manifest. Otherwise the
    batch decoder reads every record (byte-checking those laid out as the exporter writes them,
    fully decoding the rest) and the records it accepts are re-encoded from what was decoded: a
    record whose bytes differ from the encoder's (a DOUBLE embedding, another layout) is decoded
    strictly on its own, so the exported form (FLOAT rawTypedTensor of shape [D]) is held to in
    every batch. When the batch decoder refuses a batch, its records are decoded one by one to
    name the bad ones.
    """
    if manifest.string_keys or manifest.other_outputs:   # every record is checked whole: decode each once
        return _decode_each(batch, np.arange(len(batch)), manifest, path, checker)
    try:
        keys, embeddings = decode_embeddings(batch.records, manifest.int_key_feature_id,
                                             manifest.embedding_feature_id, path)
    except RecordFormatError:
        return _decode_each(batch, np.arange(len(batch)), manifest, path, checker)
    decoded = np.ones(len(batch), dtype=bool)
    if embeddings.shape[1] != manifest.embedding_dim:
        return keys, embeddings, decoded, None   # reported once for the whole batch by the caller
    unusual = _differs_from_encoder(batch, keys, embeddings, manifest)
    strings = None
    if len(unusual):
        _, _, strict_ok, strings = _decode_each(batch, unusual, manifest, path, checker)
        decoded[unusual] = strict_ok[unusual]
    return keys, embeddings, decoded, strings


def _differs_from_encoder(batch: RecordBatch, keys: np.ndarray, embeddings: np.ndarray,
                          manifest: ExportManifest) -> np.ndarray:
    """Indices of the records whose bytes are not what ``encode_data_records`` writes for a key and
    an embedding alone."""
    n = len(batch)
    expected = encode_data_records(keys, manifest.key_feature_id,
                                   [(manifest.embedding_feature_id, embeddings)])
    length = expected.fixed_length()
    if length is not None and batch.records.fixed_length() == length:
        have = batch.records.buffer[:n * length].reshape(n, length)
        want = expected.buffer.reshape(n, length)
        return np.flatnonzero((have != want).any(axis=1))
    return np.array([i for i in range(n) if batch.records[i] != expected[i]], dtype=np.int64)


def _decode_each(batch: RecordBatch, rows: np.ndarray, manifest: ExportManifest, path: str,
                 checker: _ShardChecker) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Strictly decode the records at ``rows`` one by one; each failure becomes a problem."""
    n = len(batch)
    dim = manifest.embedding_dim
    keys = np.zeros(n, np.int64)
    embeddings = np.zeros((n, dim), np.float32)
    decoded = np.zeros(n, dtype=bool)
    strings = np.full(n, None, dtype=object) if manifest.string_keys else None
    for i in rows.tolist():
        record_index = batch.first + i
        try:
            key, vector, string, issues = _decode_one(batch.records[i], manifest, path)
        except RecordFormatError as err:
            checker.note("decode", record_index, f"record does not decode as the export writes it: {err.reason}")
            continue
        if vector.shape[0] != dim:
            checker.note("dim", record_index, f"embedding has dimension {vector.shape[0]}, "
                         f"the manifest says {dim}")
            continue
        for kind, message in issues:
            checker.note(kind, record_index, f"{message} (key {string if string is not None else key})")
        keys[i], embeddings[i], decoded[i] = key, vector, True
        if strings is not None:
            strings[i] = string
    return keys, embeddings, decoded, strings


def _decode_one(data: bytes, manifest: ExportManifest, path: str
                ) -> Tuple[int, np.ndarray, Optional[str], List[Tuple[str, str]]]:
    """(int64 key or key id, embedding, string key or None, [(kind, problem)] of the further
    outputs) of one record, strictly as the job writes them (FLOAT rawTypedTensor, 1-D); a
    string key must be non-empty UTF-8 with ``feature_id(key)`` as its key id."""
    record = decode_data_record(data, path)
    key_name = manifest.key_id_feature_name if manifest.string_keys else manifest.key_feature_name
    key = (record.discreteFeatures or {}).get(manifest.int_key_feature_id)
    if key is None:
        raise RecordFormatError(f"no key: discreteFeatures has no entry for "
                                f"{key_name or manifest.int_key_feature_id}")
    string = _string_key(record, manifest, int(key)) if manifest.string_keys else None
    tensor = (record.tensors or {}).get(manifest.embedding_feature_id)
    if tensor is None:
        raise RecordFormatError(f"no embedding: tensors has no entry for "
                                f"{manifest.embedding_feature_name or manifest.embedding_feature_id}")
    raw = tensor.rawTypedTensor
    if raw is None or raw.dataType != _FLOAT_DATA_TYPE:
        raise RecordFormatError("embedding is not a rawTypedTensor of dataType FLOAT")
    vector = tensor_to_numpy(tensor)
    if vector.ndim != 1:
        raise RecordFormatError(f"embedding has shape {list(vector.shape)}, expected [D]")
    return int(key), vector, string, _output_issues(record, manifest)


def _string_key(record, manifest: ExportManifest, key_id: int) -> str:
    """The record's string key, checked: present, non-empty UTF-8, and ``key_id`` its id."""
    value = (record.stringFeatures or {}).get(manifest.key_feature_id)
    if value is None:
        raise RecordFormatError(f"no key: stringFeatures has no entry for "
                                f"{manifest.key_feature_name or manifest.key_feature_id}")
    try:
        text = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
    except UnicodeDecodeError:
        raise RecordFormatError(f"string key {value!r} is not UTF-8") from None
    if not text:
        raise RecordFormatError("string key is empty")
    expected = int(string_key_ids([text])[0])
    if expected != key_id:
        raise RecordFormatError(f"key id {key_id} is not feature_id({text!r}) = {expected}")
    return text


def _output_issues(record, manifest: ExportManifest) -> List[Tuple[str, str]]:
    """[(kind, problem)] for each further output that is missing, of another dtype or shape than
    the manifest's, or not finite."""
    issues: List[Tuple[str, str]] = []
    tensors = record.tensors or {}
    for output in manifest.other_outputs:
        tensor = tensors.get(output.id)
        if tensor is None:
            issues.append((f"output:{output.feature}", f"output {output.feature} is missing"))
            continue
        try:
            array = tensor_to_numpy(tensor)
        except RecordFormatError as err:
            issues.append((f"output:{output.feature}", f"output {output.feature}: {err.reason}"))
            continue
        dtype = "string" if array.dtype == object else str(array.dtype)
        if dtype != output.dtype:
            issues.append((f"output:{output.feature}", f"output {output.feature} has dtype {dtype}, "
                           f"the manifest says {output.dtype}"))
            continue
        if len(array.shape) != len(output.shape) or any(
                want is not None and have != want for have, want in zip(array.shape, output.shape)):
            issues.append((f"output:{output.feature}", f"output {output.feature} has shape {list(array.shape)}, "
                           f"the manifest says {list(output.shape)}"))
            continue
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            issues.append((f"finite:{output.feature}", f"output {output.feature} has non-finite values"))
    return issues


def _file_crc32c(path: str) -> int:
    """crc32c of the file's bytes as stored (compressed or not), read in 1 MiB chunks."""
    crc = 0
    with open_binary(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = google_crc32c.extend(crc, chunk)
    return crc


def _as_crc(value: Any) -> Optional[int]:
    """A manifest crc32c (an int, or a hex string) -> int; None when absent or unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


@dataclass
class ShardOutcome:
    """What checking one shard found; picklable, so shards can be checked in worker processes.

    ``problems`` holds (problem, records it stands for) in record order, a handful at most: each
    kind of per-record problem is folded into one entry.
    """
    check: ShardCheck
    problems: List[Tuple[Problem, int]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    norm_min: float = float("inf")
    norm_max: float = float("-inf")
    norm_sum: float = 0.0
    norm_count: int = 0

    def add(self, problem: Problem, count: int = 1) -> None:
        self.problems.append((problem, count))
        self.check.problems += count


def verify_shard(export_dir: str, manifest: ExportManifest, index: int,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> ShardOutcome:
    """Check shard ``index`` of the export: its name, every record, counts, bytes and crc32c.

    Args:
      export_dir: the export directory.
      manifest: its manifest (``read_manifest``).
      index: the shard, 0 .. num_shards - 1 (its position in the manifest's ``shards``).
      batch_size: records read and decoded at a time.
    """
    entry = manifest.shards[index]
    shard = ShardCheck(index=index, file=entry.file, manifest_records=entry.records,
                       manifest_bytes=entry.bytes)
    outcome = ShardOutcome(shard)
    expected = shard_file_name(index, manifest.num_shards, manifest.format, manifest.compression)
    if entry.file != expected:
        outcome.add(Problem(f"shard {index} of {manifest.num_shards} should be named {expected} "
                            f"(format {manifest.format}, compression {manifest.compression})", entry.file))
    path = join_path(export_dir, entry.file)
    shard.bytes = file_size(path)
    if shard.bytes is None:
        shard.missing = True
        outcome.add(Problem("shard file is missing (the manifest lists it)", entry.file))
        return outcome
    checker = _ShardChecker(manifest, shard, manifest.partition_by == "hash")
    try:
        for batch in iter_record_batches(path, manifest.format, batch_size, manifest.string_keys):
            checker.check(batch, path)
        shard.read_to_end = True
    except ShardReadError as err:
        checker.note("framing", err.record, f"unreadable from here on: {err.reason}", offset=err.offset)
    checker.finish(outcome)
    # Counts are compared only when the whole file could be read: after a framing error the
    # framing problem is the one to name, a short count would only repeat it.
    if shard.read_to_end and shard.records != entry.records:
        outcome.add(Problem(f"the manifest says {entry.records} records, the file holds {shard.records}",
                            entry.file, min(shard.records, entry.records)))
    if entry.bytes is not None and shard.bytes != entry.bytes:
        outcome.add(Problem(f"the manifest says {entry.bytes} bytes, the file has {shard.bytes}", entry.file))
    raw_entry = manifest.raw["shards"][index]
    expected_crc = _as_crc(raw_entry.get("crc32c"))
    if expected_crc is not None:
        actual_crc = _file_crc32c(path)
        if actual_crc != expected_crc:
            outcome.add(Problem(f"file crc32c is {actual_crc:#010x}, the manifest says {expected_crc:#010x} "
                                "(the file changed after the export wrote it)", entry.file))
    return outcome


# ----------------------------------------------------------------------------------------------
# Directory and manifest checks

def _check_directory(export_dir: str, manifest: ExportManifest, report: VerifyReport) -> None:
    if file_size(join_path(export_dir, SUCCESS_NAME)) is None:
        report.add(Problem(f"{SUCCESS_NAME} is missing: the job did not finish (or is still writing)"))
    listed = {s.file for s in manifest.shards}
    known = listed | {MANIFEST_NAME, SUCCESS_NAME, REJECTED_DIR}
    for name in list_directory(export_dir):
        if name in known:
            continue
        if parse_shard_file_name(name) is not None or name.startswith("part-"):
            report.add(Problem("part file that the manifest does not list (left over from another run?)", name))
        else:
            report.warnings.append(f"{name}: unexpected entry in the export directory")


def _check_manifest(manifest: ExportManifest, report: VerifyReport) -> None:
    if len(manifest.shards) != manifest.num_shards:
        report.add(Problem(f"{MANIFEST_NAME}: num_shards is {manifest.num_shards} but it lists "
                           f"{len(manifest.shards)} shards"))
    features = [(manifest.key_feature_name, manifest.key_feature_id, "key_feature"),
                (manifest.embedding_feature_name, manifest.embedding_feature_id, "embedding_feature")]
    if manifest.string_keys:
        features.append((manifest.key_id_feature_name, manifest.key_id_feature_id, "key_id_feature"))
    features += [(o.feature, o.id, f"outputs feature {o.feature!r}") for o in manifest.outputs]
    for name, fid, what in features:
        if name is not None and feature_id(name) != fid:
            report.add(Problem(f"{MANIFEST_NAME}: {what} id {fid} is not feature_id({name!r}) = {feature_id(name)}"))
    read, written, rejected = manifest.rows_read, manifest.rows_written, manifest.rows_rejected
    if None in (read, written, rejected):
        report.add(Problem(f"{MANIFEST_NAME}: rows_read, rows_written and rows_rejected must all be integers"))
    elif read != written + rejected:
        report.add(Problem(f"{MANIFEST_NAME}: rows_read {read} != rows_written {written} + rows_rejected {rejected}"))
    if manifest.embedding_dim <= 0:
        report.add(Problem(f"{MANIFEST_NAME}: embedding_dim must be > 0, got {manifest.embedding_dim}"))


def _files_under(export_dir: str, directory: str) -> List[str]:
    """Relative names ("a/b") of every file under ``export_dir/directory``, at any depth."""
    root = join_path(export_dir, directory)
    if is_remote(export_dir):
        from apache_beam.io.filesystems import FileSystems
        prefix = root.rstrip("/") + "/"
        found = FileSystems.match([prefix + "**"])[0].metadata_list
        return sorted(f"{directory}/{m.path[len(prefix):]}" for m in found if m.path.startswith(prefix))
    names = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, export_dir).replace(os.sep, "/")
        names += [f"{rel}/{name}" for name in files]
    return sorted(names)


def _check_rejected(export_dir: str, manifest: ExportManifest, report: VerifyReport) -> None:
    """The ``rejected_files`` the manifest lists exist, hold the rows, bytes and crc32c it gives,
    and add up to rows_rejected; every other file under ``_rejected/`` is a problem (a loader of
    rejected rows would read it)."""
    entries = manifest.raw.get("rejected_files")
    if not isinstance(entries, list):
        return   # an older manifest without the list: nothing to compare
    total = 0
    listed = set()
    for entry in entries:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            report.add(Problem(f"{MANIFEST_NAME}: rejected_files entry {entry!r} has no file"))
            continue
        listed.add(name)
        path = join_path(export_dir, name)
        size = file_size(path)
        if size is None:
            report.add(Problem("rejected-rows file is missing (the manifest lists it)", name))
            continue
        expected_bytes = entry.get("bytes")
        if isinstance(expected_bytes, int) and not isinstance(expected_bytes, bool) and size != expected_bytes:
            report.add(Problem(f"the manifest says {expected_bytes} bytes, the file has {size}", name))
        expected_crc = _as_crc(entry.get("crc32c"))
        if expected_crc is not None:
            actual_crc = _file_crc32c(path)
            if actual_crc != expected_crc:
                report.add(Problem(f"file crc32c is {actual_crc:#010x}, the manifest says {expected_crc:#010x} "
                                   "(the file changed after the export wrote it)", name))
        try:
            with open_binary(path) as source, pq.ParquetFile(source) as parquet:
                rows = parquet.metadata.num_rows
        except (pa.ArrowException, OSError) as err:
            report.add(Problem(f"unreadable rejected-rows parquet: {err}", name))
            continue
        total += rows
        if rows != entry.get("records"):
            report.add(Problem(f"the manifest says {entry.get('records')} rejected rows, the file holds {rows}", name))
    for name in _files_under(export_dir, REJECTED_DIR):
        if name not in listed:
            report.add(Problem("file under _rejected/ that the manifest does not list (left by another run, "
                               "or added)", name))
    if manifest.rows_rejected is not None and total != manifest.rows_rejected and \
            not any(p.file and p.file.startswith(REJECTED_DIR) for p in report.problems):
        report.add(Problem(f"{MANIFEST_NAME}: rejected_files hold {total} rows, rows_rejected says "
                           f"{manifest.rows_rejected}"))


def _check_totals(manifest: ExportManifest, report: VerifyReport) -> None:
    listed = sum(s.records for s in manifest.shards)
    if manifest.rows_written is not None and listed != manifest.rows_written:
        report.add(Problem(f"{MANIFEST_NAME}: the shards list {listed} records in all, "
                           f"rows_written says {manifest.rows_written}"))


def _merge(report: VerifyReport, outcome: ShardOutcome) -> None:
    report.shards.append(outcome.check)
    report.records += outcome.check.records
    for problem, count in outcome.problems:
        report.add(problem, count=count)
    report.warnings.extend(outcome.warnings)


def _shard_outcomes(path: str, manifest: ExportManifest, batch_size: int, processes: int) -> Iterator[ShardOutcome]:
    """One outcome per shard, in shard order; shards are checked in ``processes`` processes."""
    indices = range(len(manifest.shards))
    if processes <= 1 or len(indices) <= 1:
        for index in indices:
            yield verify_shard(path, manifest, index, batch_size)
        return
    # spawn: a forked child would inherit grpc/Beam state that is not fork-safe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(processes, len(indices)), mp_context=context) as pool:
        yield from pool.map(functools.partial(verify_shard, path, manifest, batch_size=batch_size), indices)


def verify_export(path: str, batch_size: int = DEFAULT_BATCH_SIZE, max_problems: int = DEFAULT_MAX_PROBLEMS,
                  processes: int = 1) -> VerifyReport:
    """Check the export directory ``path`` (see the module docstring for what is checked).

    Args:
      path: the export directory (local, or gs:// etc. where Beam's FileSystems can read it).
      batch_size: records read and decoded at a time (memory is about one batch a process).
      max_problems: problems kept in the report (all are counted).
      processes: shards checked in parallel in this many processes.
    Returns:
      a VerifyReport; ``report.ok`` is True only when everything holds. Never raises for bad
      data: an unreadable manifest is a problem like any other.
    """
    report = VerifyReport(path=path, max_problems=max_problems)
    if not is_directory(path):
        report.add(Problem(f"{path} is not an export directory"))
        return report
    try:
        manifest = read_manifest(path)
    except ExportError as err:
        report.add(Problem(str(err), MANIFEST_NAME))
        return report
    report.format, report.compression = manifest.format, manifest.compression
    report.num_shards, report.embedding_dim = manifest.num_shards, manifest.embedding_dim
    report.key_type = manifest.key_type
    report.outputs_checked = [o.feature for o in manifest.outputs] or [manifest.embedding_feature_name or
                                                                       str(manifest.embedding_feature_id)]
    report.partition_by, report.rows_written = manifest.partition_by, manifest.rows_written
    report.placement_checked = manifest.partition_by == "hash"
    _check_manifest(manifest, report)
    _check_directory(path, manifest, report)
    norm_min, norm_max, norm_sum, norm_count = np.inf, -np.inf, 0.0, 0
    for outcome in _shard_outcomes(path, manifest, batch_size, processes):
        _merge(report, outcome)
        if outcome.norm_count:
            norm_min, norm_max = min(norm_min, outcome.norm_min), max(norm_max, outcome.norm_max)
            norm_sum, norm_count = norm_sum + outcome.norm_sum, norm_count + outcome.norm_count
    _check_rejected(path, manifest, report)
    _check_totals(manifest, report)
    if norm_count:
        report.norm_min, report.norm_max, report.norm_mean = norm_min, norm_max, norm_sum / norm_count
    return report


# ----------------------------------------------------------------------------------------------
# Output

def _shard_rows(report: VerifyReport) -> Iterable[ShardCheck]:
    if len(report.shards) <= _TABLE_ALL_SHARDS_UP_TO:
        return report.shards
    return [s for s in report.shards if s.problems]


def _status(shard: ShardCheck) -> str:
    if shard.missing:
        return "MISSING"
    if shard.problems:
        return f"{shard.problems} problem(s)"
    return "ok"


def _summary_lines(report: VerifyReport) -> List[str]:
    lines = [f"export      {report.path}",
             f"format      {report.format}, compression {report.compression}, "
             f"{report.num_shards} shards, embedding dim {report.embedding_dim}",
             f"records     {report.records} read, manifest rows_written {report.rows_written}"]
    if report.key_type == "string":
        lines.append("keys        string: the key, its key_id = feature_id(key) and the parquet columns checked")
    if len(report.outputs_checked) > 1:
        lines.append(f"outputs     {', '.join(report.outputs_checked)}: present, dtype and shape as the manifest "
                     "says, finite")
    if report.placement_checked:
        what = "key_id" if report.key_type == "string" else "key"
        lines.append(f"placement   checked: every key in shard fmix64({what}) % {report.num_shards}")
    elif report.partition_by == "column":
        lines.append("placement   NOT checked: partition.by is 'column' (shards come from an input "
                     "column that the records do not carry)")
    if report.norm_mean is not None:
        lines.append(f"norms       min {report.norm_min:.4g}, mean {report.norm_mean:.4g}, max {report.norm_max:.4g}")
    if len(report.shards) > _TABLE_ALL_SHARDS_UP_TO:
        counts = np.array([s.records for s in report.shards])
        lines.append(f"per shard   records min {counts.min()}, median {int(np.median(counts))}, "
                     f"max {counts.max()} (table lists only shards with problems)")
    return lines


def _print_plain_report(report: VerifyReport, stream) -> None:
    """``print_report`` without rich (the ``tools`` extra): the same facts as plain lines."""
    for shard in _shard_rows(report):
        records = str(shard.records) if not shard.missing else "-"
        size = str(shard.bytes) if shard.bytes is not None else "-"
        print(f"{shard.file}  records {records}  manifest {shard.manifest_records}  bytes {size}  "
              f"{_status(shard)}", file=stream)
    for line in _summary_lines(report):
        print(line, file=stream)
    for warning in report.warnings[:20]:
        print(f"warning: {warning}", file=stream)
    if report.ok:
        print(f"OK: {report.records} records in {len(report.shards)} shards verified", file=stream)
        return
    print(f"FAILED: {report.problem_count} problem(s); the first {len(report.problems)}:", file=stream)
    for problem in report.problems:
        print(f"  {problem}", file=stream)


def print_report(report: VerifyReport, stream=None) -> None:
    """The summary table, then warnings and the first problems; rich on a terminal, plain text otherwise."""
    from pipeline.extras import available

    stream = stream or sys.stdout
    if not available("rich"):
        _print_plain_report(report, stream)
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    tty = stream.isatty()
    console = Console(file=stream, force_terminal=tty, no_color=not tty, highlight=False,
                      width=None if tty else 200, soft_wrap=not tty)
    table = Table(box=box.SIMPLE_HEAD if tty else None, show_edge=tty, pad_edge=False,
                  title="embedding export: shards" if tty else None)
    for column, justify in (("shard file", "left"), ("records", "right"), ("manifest", "right"),
                            ("bytes", "right"), ("status", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for shard in _shard_rows(report):
        status = _status(shard)
        style = None if status == "ok" else "bold red"
        table.add_row(shard.file, str(shard.records) if not shard.missing else "-",
                      str(shard.manifest_records), str(shard.bytes) if shard.bytes is not None else "-",
                      status, style=style)
    if report.shards:
        console.print(table)
    for line in _summary_lines(report):
        console.print(line)
    for warning in report.warnings[:20]:
        console.print(f"warning: {warning}", style="yellow")
    if report.ok:
        console.print(f"OK: {report.records} records in {len(report.shards)} shards verified", style="bold green")
        return
    shown = len(report.problems)
    console.print(f"FAILED: {report.problem_count} problem(s); the first {shown}:", style="bold red")
    for problem in report.problems:
        console.print(f"  {problem}", markup=False)


_DESCRIPTION = ("Read every shard of an export, check framing, checksums, every record, shard "
                "placement and the manifest counts. Exit 0 only when all holds.")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="DIR", help="the export directory (holds _MANIFEST.json)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"records decoded at a time (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-problems", type=int, default=DEFAULT_MAX_PROBLEMS,
                        help=f"problems listed (all are counted; default {DEFAULT_MAX_PROBLEMS})")
    parser.add_argument("--processes", type=int, default=1,
                        help="check shards in parallel in this many processes (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def register(subcommands) -> None:
    """Add ``verify`` to the command line's subcommands (``pipeline.cli``)."""
    parser = subcommands.add_parser(
        "verify", description=_DESCRIPTION,
        help="check an export: framing, checksums, every record, placement, manifest counts")
    _add_arguments(parser)
    parser.set_defaults(handler=_verify)


def _verify(opts: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """0 when the export is sound, 1 when not, 2 on bad usage."""
    if not is_directory(opts.path):
        print(f"verify: {opts.path} is not an export directory", file=err)
        return 2
    if opts.batch_size <= 0 or opts.max_problems <= 0 or opts.processes <= 0:
        print("verify: --batch-size, --max-problems and --processes must be > 0", file=err)
        return 2
    report = verify_export(opts.path, batch_size=opts.batch_size, max_problems=opts.max_problems,
                           processes=opts.processes)
    if opts.json:
        print(json.dumps(report.to_dict()), file=out)
    else:
        print_report(report, out)
    return 0 if report.ok else 1


def main(args: Optional[Sequence[str]] = None) -> int:
    """``embedding-export verify DIR`` on its own: 0 when the export is sound, 1 when not, 2 on bad usage."""
    parser = argparse.ArgumentParser(prog="embedding-export verify", description=_DESCRIPTION)
    _add_arguments(parser)
    return _verify(parser.parse_args(list(args) if args is not None else None), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
