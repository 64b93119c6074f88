"""The output directory of an export: its names, its shard file names and its manifest.

An export directory holds (docs/FORMAT.md):

    part-SSSSS-of-NNNNN<suffix>   one file per shard (``shard_file_name``)
    _rejected/part-*.parquet       the rejected rows, when there are any
    _MANIFEST.json                 what was written and counted (``ExportManifest``)
    _SUCCESS                       written last: the export is complete
    _temporary/<run id>/           a run's scratch files and publish journal (never published)

This module owns those names, the shard naming, the manifest's schema (the static part known
at launch, the finished manifest finalize writes, and parsing it back) and reading and writing
the manifest. It imports no Beam at module level, so the operator tools (verify, inspect) and
the writer, finalize and ownership steps all use the same definitions. Local paths are read with
plain file I/O, remote ones (gs://, hdfs://) through Beam's FileSystems.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any, BinaryIO, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from transforms.errors import ExportError
from twml.export_names import MANIFEST_NAME, SUCCESS_NAME  # shared with twml.dataset, which reads exports
from twml.feature_ids import feature_id

__all__ = ["MANIFEST_NAME", "SUCCESS_NAME", "REJECTED_DIR", "TEMP_DIR", "JOURNAL_NAME", "SHARD_PREFIX", "FORMATS",
           "PARQUET_COLUMNS", "PARQUET_KEY_ID_COLUMN", "KEY_ID_RULE", "KEY_ID_SHARD_RULE", "MAX_COLLISIONS_LISTED",
           "scratch_name", "shard_suffix", "numbered_file_name", "shard_file_name", "parse_shard_file_name", "OutputEntry",
           "ShardEntry", "ExportManifest", "parse_manifest", "static_manifest", "finished_manifest",
           "manifest_bytes", "read_manifest", "versions", "utc_now", "is_remote", "absolute_path", "join_path",
           "open_binary", "open_records"]

REJECTED_DIR = "_rejected"
TEMP_DIR = "_temporary"
JOURNAL_NAME = "_PUBLISH.json"  # under _temporary/<run id>/ (transforms.ownership)
SHARD_PREFIX = "part-"
FORMATS = ("tfrecord", "block", "parquet")
_EXTENSIONS = {"tfrecord": ".tfrecord", "block": "", "parquet": ".parquet"}
PARQUET_COLUMNS = ("key", "embedding", "data_record")  # the columns of a parquet shard, in order
PARQUET_KEY_ID_COLUMN = "key_id"  # string keys: the key id, after the (string) key column
_SHARD_NAME = re.compile(r"^part-(\d{5,})-of-(\d{5,})(\.tfrecord|\.parquet)?(\.gz)?$")


# ------------------------------------------------------------------------------------------------
# File names

def shard_suffix(fmt: str, compression: str = "none") -> str:
    """The suffix of a shard file in ``fmt``: ``.tfrecord``, none (block) or ``.parquet``, then
    ``.gz`` when gzip-compressed (tfrecord and block only)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    return _EXTENSIONS[fmt] + (".gz" if compression == "gzip" and fmt != "parquet" else "")


def scratch_name(run_id: str, name: str) -> str:
    """``name`` in run ``run_id``'s scratch directory, relative to the output directory."""
    return f"{TEMP_DIR}/{run_id}/{name}"


def numbered_file_name(index: int, count: int, suffix: str) -> str:
    """``part-SSSSS-of-NNNNN<suffix>`` (at least five digits, as Beam's shard name template)."""
    return f"{SHARD_PREFIX}{index:05d}-of-{count:05d}{suffix}"


def shard_file_name(index: int, num_shards: int, fmt: str, compression: str = "none") -> str:
    """The file name of shard ``index`` of ``num_shards`` in ``fmt``."""
    return numbered_file_name(index, num_shards, shard_suffix(fmt, compression))


def parse_shard_file_name(name: str) -> Optional[Tuple[int, int]]:
    """(index, num_shards) of a ``part-SSSSS-of-NNNNN...`` name, or None for any other name."""
    match = _SHARD_NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


# ------------------------------------------------------------------------------------------------
# Paths: local ones through os, remote ones (gs://, hdfs://, s3://) through Beam's FileSystems

def is_remote(path: str) -> bool:
    return "://" in path


def absolute_path(path: str) -> str:
    """Local paths made absolute (workers may have another cwd); URLs (gs://, hdfs://) unchanged."""
    if "://" in path:
        return path.rstrip("/") if not path.endswith("://") else path
    return os.path.abspath(os.path.expanduser(path))


def join_path(directory: str, name: str) -> str:
    if is_remote(directory):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.join(directory, name)
    return os.path.join(directory, name)


def open_binary(path: str) -> BinaryIO:
    """The file's bytes as stored (no decompression), for reading."""
    if is_remote(path):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.open(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED)
    return open(path, "rb")


@contextlib.contextmanager
def open_records(path: str) -> Iterator[BinaryIO]:
    """A shard's record stream: gunzipped when the name ends in ``.gz`` (as shard names say)."""
    import gzip
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_binary(path))
        if path.endswith(".gz"):
            yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        else:
            yield raw


def _exists(path: str) -> bool:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.exists(path)
    return os.path.exists(path)


# ------------------------------------------------------------------------------------------------
# The manifest

def utc_now() -> str:
    """Now, UTC, to the second, ISO 8601 (the manifest's timestamps)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _version(*dists: str) -> Optional[str]:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> Dict[str, Optional[str]]:
    """Versions of the project and the libraries the output depends on (TF without importing it)."""
    import twml
    return {
        "embedding_export": _version("embedding-export") or twml.__version__,
        "apache_beam": _version("apache-beam"),
        "tensorflow": _version("tensorflow-cpu", "tensorflow"),
        "pyarrow": _version("pyarrow"),
        "python": platform.python_version(),
    }


# How a string key becomes its int64 id and its shard (docs/FORMAT.md section 5).
KEY_ID_RULE = ("feature_id(key): the first 64 bits (h1, little-endian, signed) of MurmurHash3_x64_128, "
               "seed 0, over the key's UTF-16LE code units (twml's feature id function, '#' rule included)")
KEY_ID_SHARD_RULE = "fmix64(uint64(key_id)) % num_shards"
MAX_COLLISIONS_LISTED = 100  # key-id collisions the manifest spells out (all are counted)


def static_manifest(*, fmt: str, compression: str, num_shards: int, key_feature: str, key_feature_id: int,
                    outputs: Sequence[Any], embedding_dim: int, model_path: Optional[str] = None,
                    signature: Optional[str] = None, partition_column: Optional[str] = None,
                    input_path: Optional[str] = None, files: Optional[int] = None, rows: Optional[int] = None,
                    skipped_files: Sequence[Tuple[str, str]] = (), config: Optional[Mapping[str, Any]] = None,
                    created_at: Optional[str] = None, key_id_feature: Optional[str] = None,
                    key_id_feature_id: Optional[int] = None) -> Dict[str, Any]:
    """Everything in the manifest that is known before the run starts.

    Args:
      key_feature / key_feature_id: the feature holding the key (discreteFeatures for int64
        keys, stringFeatures for string keys).
      key_id_feature / key_id_feature_id: string keys only: the discreteFeatures entry holding
        the key's int64 id (docs/FORMAT.md section 5); None for int64 keys.
      outputs: the exported outputs (``transforms.specs.OutputSpec``), the embedding first.
      model_path / signature: the model, None when the embeddings come from elsewhere.
      partition_column: the partition-id column, None for hash placement.
      input_path / files / rows: the input pattern, its files and their rows (None: not known).
      skipped_files: (path, why) of unreadable input files skipped.
      config: the effective run config, as JSON (None: no run config).
      created_at: when the run was launched (default: now).
    """
    first = outputs[0]
    by = "hash" if partition_column is None else "column"
    string_keys = key_id_feature_id is not None
    return {
        "format": fmt,
        "compression": compression,
        "num_shards": num_shards,
        "key_type": "string" if string_keys else "int64",
        "key_feature": {"name": key_feature, "id": key_feature_id},
        # String keys only (null otherwise): where the key's int64 id is, and how it is derived.
        "key_id_feature": {"name": key_id_feature, "id": key_id_feature_id} if string_keys else None,
        "key_id": KEY_ID_RULE if string_keys else None,
        "embedding_feature": {"name": first.feature, "id": first.feature_id},
        "embedding_dim": embedding_dim,
        "outputs": [{"output": o.name, "feature": o.feature, "id": o.feature_id, "dtype": o.dtype,
                     "shape": list(o.shape)} for o in outputs],
        "model": {"path": model_path, "signature": signature},
        "partition": {"by": by, "column": partition_column,
                      "hash": ((KEY_ID_SHARD_RULE if string_keys else "fmix64(uint64(key)) % num_shards")
                               if by == "hash" else None)},
        "input": {"path": input_path, "files": files, "rows": rows,
                  # unreadable files (on_bad_file: skip): the rows they hold are not known
                  "skipped_files": [{"file": p, "rows": None, "error": e} for p, e in skipped_files]},
        "config": dict(config) if config is not None else None,
        "versions": versions(),
        "created_at": created_at or utc_now(),
    }


def finished_manifest(base: Mapping[str, Any], run_id: str, shards: Sequence[Any], rows_read: int,
                      rejected: Sequence[Tuple[Any, str]], by_reason: Dict[str, int], unreadable: Sequence[Any],
                      duplicate_keys: Optional[Dict[str, int]],
                      key_id_collisions: Optional[Sequence[Tuple[int, Sequence[str]]]] = None) -> Dict[str, Any]:
    """The manifest finalize writes: what the run wrote and counted, then the static entries of ``base``.

    Args:
      shards: one ``ShardResult`` per shard, in shard order.
      rejected: (``RejectedPart``, its published name) of each rejected-rows file.
      by_reason: rejected rows per reason, commonest first.
      unreadable: row groups skipped (``path``, ``row_group``, ``rows``, ``error``).
      duplicate_keys: {"keys", "rows"} of keys written more than once.
      key_id_collisions: string keys: (key id, the different keys sharing it) for every shared
        id; None for int64 keys.
    """
    manifest = {key: base[key] for key in ("format", "compression", "num_shards") if key in base}
    manifest.update({
        "shards": [{"file": r.final_name, "records": r.records, "bytes": r.bytes, "crc32c": r.crc32c}
                   for r in shards],
        "rows_read": rows_read,
        "rows_written": sum(r.records for r in shards),
        "rows_rejected": sum(p.records for p, _ in rejected),
        "rows_unreadable": sum(u.rows for u in unreadable),
        "rejected_by_reason": by_reason,
        "rejected_files": [{"file": name, "records": p.records, "bytes": p.bytes, "crc32c": p.crc32c}
                           for p, name in rejected],
        "duplicate_keys": dict(duplicate_keys or {"keys": 0, "rows": 0}),
    })
    manifest["key_id_collisions"] = None   # integer keys: ids are the keys
    if key_id_collisions is not None:      # string keys: ids that different keys share
        ordered = sorted(key_id_collisions)
        manifest["key_id_collisions"] = {
            "ids": len(ordered),
            "examples": [{"key_id": key_id, "keys": list(keys)} for key_id, keys in ordered[:MAX_COLLISIONS_LISTED]]}
    manifest.update({k: v for k, v in base.items() if k not in manifest})
    if isinstance(manifest.get("input"), dict):
        manifest["input"] = {**manifest["input"], "unreadable_row_groups": [
            {"file": u.path, "row_group": u.row_group, "rows": u.rows, "error": u.error} for u in unreadable]}
    manifest["run_id"] = run_id
    manifest["finalized_at"] = utc_now()
    return manifest


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """``_MANIFEST.json`` as written: indented JSON and a final newline."""
    return json.dumps(manifest, indent=2).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class ShardEntry:
    """One ``shards`` entry of the manifest: the file (relative to the export) and what it holds."""
    file: str
    records: int
    bytes: Optional[int]


@dataclass(frozen=True)
class OutputEntry:
    """One ``outputs`` entry of the manifest: a model output and the feature it is exported under.

    ``shape`` is the per-record shape (None for a dim the model left open); ``dtype`` a numpy name.
    """
    output: str
    feature: str
    id: int
    dtype: str
    shape: Tuple[Optional[int], ...]


@dataclass(frozen=True)
class ExportManifest:
    """What ``_MANIFEST.json`` says about an export (the fields the tools use; ``raw`` has all).

    Attributes:
      raw: the whole parsed JSON, for anything else (versions, model, ...).
      partition_by: "hash" (placement by fmix64 of the key, checkable) or "column" (placement
        by an input column, not checkable from the records).
      feature_names: feature id -> name for every feature the manifest names.
    """
    raw: Dict[str, Any]
    format: str
    compression: str
    num_shards: int
    shards: Tuple[ShardEntry, ...]
    embedding_dim: int
    key_feature_name: Optional[str]
    key_feature_id: int
    embedding_feature_name: Optional[str]
    embedding_feature_id: int
    partition_by: str
    rows_read: Optional[int]
    rows_written: Optional[int]
    rows_rejected: Optional[int]
    feature_names: Dict[int, str]
    key_type: str = "int64"
    key_id_feature_name: Optional[str] = None
    key_id_feature_id: Optional[int] = None
    outputs: Tuple[OutputEntry, ...] = ()

    @property
    def string_keys(self) -> bool:
        return self.key_type == "string"

    @property
    def int_key_feature_id(self) -> int:
        """The discreteFeatures entry holding the int64 key: the key itself, or a string key's id."""
        return self.key_id_feature_id if self.string_keys else self.key_feature_id

    @property
    def other_outputs(self) -> Tuple[OutputEntry, ...]:
        """The exported outputs after the embedding, in record order."""
        return tuple(o for o in self.outputs if o.id != self.embedding_feature_id)


def _field(raw: Dict[str, Any], name: str, kind, where: str = "") -> Any:
    value = raw.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ExportError(f"{MANIFEST_NAME}: {where}{name} must be a {expected}, got {value!r}")
    return value


def _optional_int(raw: Dict[str, Any], name: str) -> Optional[int]:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _feature(raw: Dict[str, Any], name: str) -> Tuple[Optional[str], int]:
    entry = raw.get(name)
    if isinstance(entry, str):
        return entry, feature_id(entry)
    if not isinstance(entry, dict) or ("id" not in entry and "name" not in entry):
        raise ExportError(f"{MANIFEST_NAME}: {name} must be {{name, id}}, got {entry!r}")
    fname = entry.get("name")
    if fname is not None and not isinstance(fname, str):
        raise ExportError(f"{MANIFEST_NAME}: {name}.name must be a string, got {fname!r}")
    fid = entry.get("id")
    if fid is None:
        fid = feature_id(fname)
    if not isinstance(fid, int) or isinstance(fid, bool):
        raise ExportError(f"{MANIFEST_NAME}: {name}.id must be an int64, got {fid!r}")
    return fname, fid


def _config_section(raw: Dict[str, Any], section: str) -> Dict[str, Any]:
    config = raw.get("config") or {}
    value = config.get(section) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def parse_manifest(raw: Any) -> ExportManifest:
    """Validate the fields the tools rely on; ExportError names the first one that is wrong."""
    if not isinstance(raw, dict):
        raise ExportError(f"{MANIFEST_NAME}: the top level must be a JSON object")
    fmt = _field(raw, "format", str)
    if fmt not in FORMATS:
        raise ExportError(f"{MANIFEST_NAME}: format {fmt!r} is not one of {FORMATS}")
    compression = raw.get("compression") or "none"
    if compression not in ("none", "gzip"):
        raise ExportError(f"{MANIFEST_NAME}: compression {compression!r} is not 'none' or 'gzip'")
    num_shards = _field(raw, "num_shards", int)
    if num_shards <= 0:
        raise ExportError(f"{MANIFEST_NAME}: num_shards must be > 0, got {num_shards}")
    shards = []
    for i, entry in enumerate(_field(raw, "shards", list)):
        if not isinstance(entry, dict):
            raise ExportError(f"{MANIFEST_NAME}: shards[{i}] must be an object, got {entry!r}")
        shards.append(ShardEntry(file=_field(entry, "file", str, f"shards[{i}]."),
                                 records=_field(entry, "records", int, f"shards[{i}]."),
                                 bytes=_optional_int(entry, "bytes")))
    dim = _field(raw, "embedding_dim", int)
    key_name, key_id = _feature(raw, "key_feature")
    emb_name, emb_id = _feature(raw, "embedding_feature")
    # The effective config's partition section; the job also writes a top-level copy.
    partition = _config_section(raw, "partition")
    if not partition and isinstance(raw.get("partition"), dict):
        partition = raw["partition"]
    partition_by = partition.get("by", "hash")
    if partition_by not in ("hash", "column"):
        raise ExportError(f"{MANIFEST_NAME}: partition.by {partition_by!r} is not 'hash' or 'column'")
    names = {}
    for output in raw.get("outputs") or []:   # [{output, feature, id, dtype, shape}] as the job writes it
        if isinstance(output, dict) and isinstance(output.get("feature"), str):
            fid = output.get("id")
            names[fid if isinstance(fid, int) else feature_id(output["feature"])] = output["feature"]
    outputs = _config_section(raw, "model").get("outputs") or {}
    if isinstance(outputs, dict):
        for output in outputs.values():
            if isinstance(output, dict) and isinstance(output.get("feature"), str):
                names[feature_id(output["feature"])] = output["feature"]
    if key_name:
        names[key_id] = key_name
    if emb_name:
        names[emb_id] = emb_name
    key_type = raw.get("key_type") or "int64"
    if key_type not in ("int64", "string"):
        raise ExportError(f"{MANIFEST_NAME}: key_type {key_type!r} is not 'int64' or 'string'")
    key_id_name, key_id_id = (None, None)
    if key_type == "string":
        key_id_name, key_id_id = _feature(raw, "key_id_feature")
        if key_id_name:
            names[key_id_id] = key_id_name
    return ExportManifest(raw=raw, format=fmt, compression=compression, num_shards=num_shards,
                          shards=tuple(shards), embedding_dim=dim, key_feature_name=key_name,
                          key_feature_id=key_id, embedding_feature_name=emb_name,
                          embedding_feature_id=emb_id, partition_by=partition_by,
                          rows_read=_optional_int(raw, "rows_read"),
                          rows_written=_optional_int(raw, "rows_written"),
                          rows_rejected=_optional_int(raw, "rows_rejected"), feature_names=names,
                          key_type=key_type, key_id_feature_name=key_id_name, key_id_feature_id=key_id_id,
                          outputs=_outputs(raw))


def _outputs(raw: Dict[str, Any]) -> Tuple[OutputEntry, ...]:
    """The manifest's ``outputs`` entries (record order); ExportError for a malformed one."""
    entries = []
    for i, entry in enumerate(raw.get("outputs") or []):
        where = f"outputs[{i}]."
        if not isinstance(entry, dict):
            raise ExportError(f"{MANIFEST_NAME}: outputs[{i}] must be an object, got {entry!r}")
        feature = _field(entry, "feature", str, where)
        fid = entry.get("id")
        fid = feature_id(feature) if fid is None else fid
        shape = entry.get("shape")
        if not isinstance(shape, list) or any(d is not None and (not isinstance(d, int) or isinstance(d, bool))
                                              for d in shape):
            raise ExportError(f"{MANIFEST_NAME}: {where}shape must be a list of ints (or null), got {shape!r}")
        entries.append(OutputEntry(output=str(entry.get("output", feature)), feature=feature, id=int(fid),
                                   dtype=_field(entry, "dtype", str, where), shape=tuple(shape)))
    return tuple(entries)


def read_manifest(export_dir: str, require_success: bool = False) -> ExportManifest:
    """Load and check ``<export_dir>/_MANIFEST.json`` (and that ``_SUCCESS`` is there, if asked).

    Raises:
      ExportError: no manifest (or no ``_SUCCESS`` when required), or one that does not parse.
    """
    if require_success and not _exists(join_path(export_dir, SUCCESS_NAME)):
        raise ExportError(f"{export_dir} has no {SUCCESS_NAME}: the export is missing or incomplete")
    path = join_path(export_dir, MANIFEST_NAME)
    try:
        with open_binary(path) as f:
            raw = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: no manifest (is this an export directory? was the job finished?)") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable manifest: {err}") from None
    return parse_manifest(raw)
