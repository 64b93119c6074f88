"""Publish the export: check the accounting, move the files into place, manifest, then ``_SUCCESS``.

Runs once, after every shard file and rejected-rows file is complete (they arrive as side
inputs). Nothing in the output directory changes unless every check passes:

1. every shard 0..N-1 has exactly one complete file; rows_read (counted from the data) equals
   the rows in the input files' footers and rows_written + rows_rejected; rejected rows are
   within ``max_reject_fraction``;
2. ``_SUCCESS`` and ``_MANIFEST.json`` of an earlier export are removed (overwrite only), then
   its shard and rejected files that this export does not replace;
3. the temporary files are renamed to their final names (a file whose source is gone and whose
   destination exists was renamed by an earlier attempt: skipped, so a retry is harmless);
4. ``_MANIFEST.json`` is written (temporary name, then rename), then ``_SUCCESS``, last;
5. ``_temporary/<run_id>/`` is deleted (orphan parts of retried bundles go with it).

Only files named as this job names them are ever deleted.
"""
from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.elements import RejectedPart, ShardResult
from transforms.formats import shard_file_name
from transforms.specs import OutputLayout

__all__ = ["ExportError", "FinalizeExport", "publish", "MANIFEST_NAME", "SUCCESS_NAME", "REJECTED_DIR",
           "TEMP_DIR", "OUTPUT_NAME_PATTERN", "is_output_name"]

MANIFEST_NAME = "_MANIFEST.json"
SUCCESS_NAME = "_SUCCESS"
REJECTED_DIR = "_rejected"
TEMP_DIR = "_temporary"
# The names this job writes at the top of the output directory (and so may delete on overwrite).
OUTPUT_NAME_PATTERN = re.compile(r"^part-\d{5,}-of-\d{5,}(\.tfrecord|\.parquet)?(\.gz)?$")


class ExportError(RuntimeError):
    """The export cannot be published (accounting mismatch, too many rejected rows, lost files)."""


def is_output_name(name: str) -> bool:
    return bool(OUTPUT_NAME_PATTERN.match(name)) or name in (MANIFEST_NAME, SUCCESS_NAME)


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _matching(pattern: str) -> List[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def _delete(paths: Sequence[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def _delete_tree(path: str) -> None:
    """Delete a directory (local) or every object under a prefix (object stores)."""
    if "://" not in path:
        if FileSystems.exists(path):
            FileSystems.delete([path])
        return
    _delete(_matching(_join(path, "**")))


def _write_file(path: str, data: bytes) -> None:
    """Write a small file under a temporary name and rename it into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    FileSystems.rename([tmp], [path])


def _rename_into_place(pairs: Sequence[tuple]) -> None:
    todo_src, todo_dst = [], []
    for src, dst in pairs:
        if FileSystems.exists(src):
            todo_src.append(src)
            todo_dst.append(dst)
        elif not FileSystems.exists(dst):
            raise ExportError(f"cannot publish {dst}: neither it nor its temporary file {src} exists")
    if todo_src:
        # Local and HDFS renames need the destination directory; on object stores mkdirs is a no-op.
        for parent in sorted({dst.rsplit("/", 1)[0] for dst in todo_dst}):
            if not FileSystems.exists(parent):
                FileSystems.mkdirs(parent)
        FileSystems.rename(todo_src, todo_dst)


def _check_shards(shards: Iterable[ShardResult], num_shards: int) -> List[ShardResult]:
    by_shard: Dict[int, ShardResult] = {}
    for result in shards:
        seen = by_shard.get(result.shard)
        if seen is not None and (seen.records, seen.crc32c) != (result.records, result.crc32c):
            raise ExportError(f"shard {result.shard} was assembled twice with different contents "
                              f"({seen.records} vs {result.records} records)")
        by_shard[result.shard] = result
    missing = sorted(set(range(num_shards)) - set(by_shard))
    extra = sorted(set(by_shard) - set(range(num_shards)))
    if missing or extra:
        raise ExportError(f"shard files missing for shards {missing[:20]} / unexpected shards {extra[:20]} "
                          f"(expected 0..{num_shards - 1})")
    return [by_shard[s] for s in range(num_shards)]


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def publish(layout: OutputLayout, shards: Iterable[ShardResult], rows_read: int,
            rejected: Iterable[RejectedPart], manifest_base: Dict, expected_rows: Optional[int] = None,
            max_reject_fraction: float = 1.0, overwrite: bool = False) -> Dict:
    """Check, move into place, write the manifest and ``_SUCCESS``; return the manifest.

    Args:
      layout: the output directory, run id and shard count.
      shards: one ShardResult per shard.
      rows_read: rows counted from the input data.
      rejected: the temporary rejected-rows files.
      manifest_base: the manifest's static entries (config, model, features, versions, ...).
      expected_rows: rows in the input files by their footers (None: not known).
      max_reject_fraction: fail when rows_rejected > this fraction of rows_read.
      overwrite: remove an earlier export's files from the directory.
    Raises:
      ExportError: a check failed; the output directory is left as it was, except that on too
        many rejected rows the rejected rows are published to ``_rejected/`` for inspection.
    """
    results = _check_shards(shards, layout.num_shards)
    rejected = sorted(rejected, key=lambda part: (part.crc32c, part.records, part.path))
    rows_written = sum(r.records for r in results)
    rows_rejected = sum(p.records for p in rejected)
    by_reason: Dict[str, int] = {}
    for part in rejected:
        for reason, count in part.reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    by_reason = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    if expected_rows is not None and rows_read != expected_rows:
        raise ExportError(f"read {rows_read} rows but the input files' footers hold {expected_rows}: "
                          "the input changed during the run or rows were lost while reading")
    if rows_read != rows_written + rows_rejected:
        raise ExportError(f"accounting mismatch: rows_read {rows_read} != rows_written {rows_written} "
                          f"+ rows_rejected {rows_rejected}")

    out = layout.path
    temp = _join(out, TEMP_DIR, layout.run_id)
    rejected_names = [_join(REJECTED_DIR, shard_file_name(i, len(rejected), ".parquet"))
                      for i in range(len(rejected))]
    if rows_rejected > max_reject_fraction * rows_read:
        _rename_into_place([(p.path, _join(out, name)) for p, name in zip(rejected, rejected_names)])
        _delete_tree(temp)
        _remove_empty_local_dir(_join(out, TEMP_DIR))
        raise ExportError(
            f"{rows_rejected} of {rows_read} rows rejected ({rows_rejected / max(rows_read, 1):.2%}), "
            f"more than output.max_reject_fraction {max_reject_fraction:g}; by reason: {by_reason}; "
            f"the rejected rows are in {_join(out, REJECTED_DIR)}; nothing else was published")

    keep = {r.final_name for r in results} | set(rejected_names)
    if overwrite:
        _delete([_join(out, SUCCESS_NAME), _join(out, MANIFEST_NAME)])
        stale = [p for p in _matching(_join(out, "part-*")) if OUTPUT_NAME_PATTERN.match(_basename(p))
                 and _basename(p) not in keep]
        stale += [p for p in _matching(_join(out, REJECTED_DIR, "part-*"))
                  if _join(REJECTED_DIR, _basename(p)) not in keep]
        _delete(stale)
    _rename_into_place([(r.temp_path, _join(out, r.final_name)) for r in results]
                       + [(p.path, _join(out, name)) for p, name in zip(rejected, rejected_names)])

    manifest = {key: manifest_base[key] for key in ("format", "compression", "num_shards") if key in manifest_base}
    manifest.update({
        "shards": [{"file": r.final_name, "records": r.records, "bytes": r.bytes, "crc32c": r.crc32c}
                   for r in results],
        "rows_read": rows_read,
        "rows_written": rows_written,
        "rows_rejected": rows_rejected,
        "rejected_by_reason": by_reason,
        "rejected_files": [{"file": name, "records": p.records, "bytes": p.bytes}
                           for p, name in zip(rejected, rejected_names)],
    })
    manifest.update({k: v for k, v in manifest_base.items() if k not in manifest})
    manifest["run_id"] = layout.run_id
    manifest["finalized_at"] = _utc_now()
    _write_file(_join(out, MANIFEST_NAME), json.dumps(manifest, indent=2).encode("utf-8") + b"\n")
    _write_file(_join(out, SUCCESS_NAME), b"")
    _delete_tree(temp)
    if overwrite:
        _delete_tree(_join(out, TEMP_DIR))  # scratch files of earlier, failed runs
    _remove_empty_local_dir(_join(out, TEMP_DIR))
    return manifest


def _remove_empty_local_dir(path: str) -> None:
    """Object stores have no directories; a local empty ``_temporary`` is removed."""
    import os
    if "://" not in path and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


class _FinalizeFn(beam.DoFn):
    def __init__(self, layout: OutputLayout, manifest_base: Dict, expected_rows: Optional[int],
                 max_reject_fraction: float, overwrite: bool):
        self._layout = layout
        self._base = manifest_base
        self._expected = expected_rows
        self._max_reject = max_reject_fraction
        self._overwrite = overwrite

    def process(self, _run_id, shards, rows_read, rejected):
        yield publish(self._layout, shards, int(rows_read), rejected, self._base, self._expected,
                      self._max_reject, self._overwrite)


class FinalizeExport(beam.PTransform):
    """{"shards", "rows_read", "rejected"} PCollections -> the manifest dict, once everything is published.

    Args:
      layout: the output directory, run id and shard count.
      manifest_base: the manifest's static entries.
      expected_rows: rows by the input footers, or None.
      max_reject_fraction: fail above this fraction of rejected rows.
      overwrite: replace an earlier export in the directory.
    """

    def __init__(self, layout: OutputLayout, manifest_base: Dict, expected_rows: Optional[int] = None,
                 max_reject_fraction: float = 1.0, overwrite: bool = False):
        super().__init__()
        self._args = (layout, manifest_base, expected_rows, max_reject_fraction, overwrite)

    def expand(self, inputs):
        layout = self._args[0]
        rows_read = inputs["rows_read"] | "SumRowsRead" >> beam.CombineGlobally(sum)
        return (inputs["shards"].pipeline
                | "Once" >> beam.Create([layout.run_id])
                | "Publish" >> beam.ParDo(_FinalizeFn(*self._args),
                                          shards=beam.pvalue.AsList(inputs["shards"]),
                                          rows_read=beam.pvalue.AsSingleton(rows_read),
                                          rejected=beam.pvalue.AsList(inputs["rejected"])))
