"""``embedding-export inspect DIR``: decoded records of an export as JSON lines, and its plot.

Records are printed one a line, with feature ids shown by name where the manifest knows the name
(key feature, embedding feature, further model outputs); ``--key K`` reads only K's shard when
placement is by hash; ``--plot FILE.png`` draws the export (``pipeline.tools.plots``). Shards are
read with ``pipeline.tools.exports``.
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.tools.exports import is_directory, iter_record_batches
from transforms.errors import ExportError
from transforms.outputdir import ExportManifest, join_path, open_binary, read_manifest
from transforms.rejected import REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN
from twml.decode import decode_data_record, decode_embeddings, tensor_to_numpy
from twml.errors import RecordFormatError
from twml.feature_ids import string_key_ids
from twml.sharding import shard_of_keys

__all__ = ["record_to_json", "iter_records", "lookup_key", "record_key", "find_rejected", "register", "main"]


# ----------------------------------------------------------------------------------------------
# Records as JSON

def _json_number(value: float) -> Any:
    # JSON has no NaN/Infinity; a damaged embedding must still print, so spell them out.
    return value if math.isfinite(value) else str(value)


def _json_array(array: np.ndarray) -> List[Any]:
    if array.dtype == np.float32:   # shortest repr of each float32, not of its float64 widening
        return [_json_number(float(str(v))) for v in array.reshape(-1)]
    if array.dtype.kind == "f":
        return [_json_number(v) for v in array.reshape(-1).tolist()]
    if array.dtype.kind in "iub":
        return array.reshape(-1).tolist()
    return [_json_bytes(v) for v in array.reshape(-1)]


def _json_bytes(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _tensor_json(tensor) -> Dict[str, Any]:
    array = tensor_to_numpy(tensor)
    return {"dtype": str(array.dtype) if array.dtype != object else "string",
            "shape": list(array.shape), "values": _json_array(array)}


def record_to_json(record, names: Dict[int, str]) -> Dict[str, Any]:
    """A decoded ``DataRecord`` -> a JSON-ready dict, fields by their IDL names, features named.

    A feature id in ``names`` is shown as its name, any other as its decimal id (JSON object
    keys are strings). Tensors become {dtype, shape, values}; blobs UTF-8 text or {base64}.
    """
    def name(fid: int) -> str:
        return names.get(fid, str(fid))

    out: Dict[str, Any] = {}
    if record.binaryFeatures:
        out["binaryFeatures"] = [name(f) for f in record.binaryFeatures]
    if record.continuousFeatures:
        out["continuousFeatures"] = {name(f): _json_number(v) for f, v in record.continuousFeatures.items()}
    if record.discreteFeatures:
        out["discreteFeatures"] = {name(f): v for f, v in record.discreteFeatures.items()}
    if record.stringFeatures:
        out["stringFeatures"] = {name(f): _json_bytes(v) for f, v in record.stringFeatures.items()}
    if record.sparseBinaryFeatures:
        out["sparseBinaryFeatures"] = {name(f): sorted(_json_bytes(s) for s in v)
                                       for f, v in record.sparseBinaryFeatures.items()}
    if record.sparseContinuousFeatures:
        out["sparseContinuousFeatures"] = {name(f): {str(_json_bytes(k)): _json_number(x) for k, x in v.items()}
                                           for f, v in record.sparseContinuousFeatures.items()}
    if record.blobFeatures:
        out["blobFeatures"] = {name(f): _json_bytes(v) for f, v in record.blobFeatures.items()}
    if record.tensors:
        out["tensors"] = {name(f): _tensor_json(t) for f, t in record.tensors.items()}
    if record.sparseTensors:
        sparse = {}
        for f, t in record.sparseTensors.items():
            coo = t.cooSparseTensor
            sparse[name(f)] = None if coo is None else {
                "denseShape": list(coo.denseShape or []),
                "indices": list((coo.indices.longs if coo.indices else None) or []),
                "values": _tensor_json(coo.values) if coo.values else None}
        out["sparseTensors"] = sparse
    return out


UserKey = Union[int, str]


def lookup_key(manifest: ExportManifest, key: UserKey) -> Tuple[UserKey, int]:
    """(the key as the export holds it, the int64 id its records and shards go by).

    Integer keys are their own id; a string key's id is ``feature_id(key)``
    (docs/FORMAT.md section 5). ExportError when ``key`` cannot be a key of this export.
    """
    if manifest.string_keys:
        key = str(key)
        if not key:
            raise ExportError("the empty string is never a key (empty keys are rejected)")
        return key, int(string_key_ids([key])[0])
    try:
        value = int(key)
    except ValueError:
        raise ExportError(f"key {key!r} is not an integer, and this export has int64 keys") from None
    if not -(1 << 63) <= value < (1 << 63):
        raise ExportError(f"key {value} does not fit in int64")
    return value, value


def record_key(record, manifest: ExportManifest) -> Optional[UserKey]:
    """The user key of a decoded record: the int64 key, or the string key (str; {"base64"} if not UTF-8)."""
    if not manifest.string_keys:
        return (record.discreteFeatures or {}).get(manifest.key_feature_id)
    value = (record.stringFeatures or {}).get(manifest.key_feature_id)
    return _json_bytes(value) if isinstance(value, (bytes, bytearray)) else value


def iter_records(path: str, head: Optional[int] = None, key: Optional[UserKey] = None,
                 named: bool = True, batch_size: int = 1024) -> Iterator[Dict[str, Any]]:
    """Decoded records of the export at ``path`` as JSON-ready dicts, in shard order.

    Args:
      path: the export directory.
      head: stop after this many records (None: all).
      key: only records of this user key (an int, or a str for string keys). With hash
        placement only the key's own shard is read (a lookup); with column placement every
        shard is scanned.
      named: show feature ids by their names where the manifest knows them (else decimal ids).
      batch_size: records read and decoded at a time.
    Yields:
      {"file", "record" (index in the shard), "key", then the DataRecord fields (record_to_json)}.
    Raises:
      ExportError for an unreadable manifest, ShardReadError / RecordFormatError for bad bytes.
    """
    manifest = read_manifest(path)
    if head is not None and head <= 0:
        return
    files = [entry.file for entry in manifest.shards]
    key_id = None
    if key is not None:
        key, key_id = lookup_key(manifest, key)
        if manifest.partition_by == "hash":
            shard = int(shard_of_keys(np.array([key_id], np.int64), manifest.num_shards)[0])
            files = files[shard:shard + 1]
    names = manifest.feature_names if named else {}
    emitted = 0
    for file_name in files:
        shard_path = join_path(path, file_name)
        for batch in iter_record_batches(shard_path, manifest.format, batch_size, manifest.string_keys):
            rows = range(len(batch))
            if key is not None:
                keys, _ = decode_embeddings(batch.records, manifest.int_key_feature_id,
                                            manifest.embedding_feature_id, shard_path)
                rows = np.flatnonzero(keys == key_id).tolist()
            for i in rows:
                offset = int(batch.records.offsets[i])
                record = decode_data_record(batch.records[i], shard_path, offset)
                user = record_key(record, manifest)
                if key is not None and user != key:
                    continue   # another string with the same id (the export refuses those; be exact anyway)
                yield {"file": file_name, "record": batch.first + i, "key": user,
                       **record_to_json(record, names)}
                emitted += 1
                if head is not None and emitted >= head:
                    return


def find_rejected(path: str, key: UserKey) -> List[Dict[str, Any]]:
    """The rejected rows of user ``key`` in the export at ``path``, from the rejected-rows files
    its manifest lists: [{"rejected": True, "file" (relative to the export), "row" (index in
    that file), then the row's columns: the input columns, reason, source_file, source_row, error}]."""
    manifest = read_manifest(path)
    key, _ = lookup_key(manifest, key)
    config = manifest.raw.get("config")
    section = config.get("input") if isinstance(config, dict) else None
    column = section.get("key") if isinstance(section, dict) else None   # rejected rows keep the input's columns
    found: List[Dict[str, Any]] = []
    if not isinstance(column, str):
        return found
    for entry in manifest.raw.get("rejected_files") or []:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        try:
            found += _rejected_rows(join_path(path, name), name, column, key)
        except (OSError, pa.ArrowException) as err:
            raise ExportError(f"{join_path(path, name)}: unreadable rejected-rows file: {err}") from None
    return found


def _rejected_rows(file_path: str, name: str, column: str, key: UserKey) -> List[Dict[str, Any]]:
    """The rows of one rejected-rows file whose ``column`` is ``key``: the key column is read
    whole, then only the row groups holding a match."""
    with open_binary(file_path) as handle:
        parquet = pq.ParquetFile(handle)
        if column not in parquet.schema_arrow.names:
            return []
        values = parquet.read(columns=[column]).column(column)
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            target = pa.scalar(str(key).encode("utf-8"), values.type)
        elif pa.types.is_integer(values.type) and isinstance(key, int):
            target = pa.scalar(key, pa.int64())
        elif (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) and isinstance(key, str):
            target = pa.scalar(key, values.type)
        else:
            return []
        matches = np.flatnonzero(pc.equal(values, target).fill_null(False).to_numpy(zero_copy_only=False))
        ends = np.cumsum([parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
        rows = []
        for group in sorted(set(np.searchsorted(ends, matches, side="right").tolist())):
            table = parquet.read_row_group(group)
            first = int(ends[group - 1]) if group else 0
            for row in matches[(matches >= first) & (matches < ends[group])].tolist():
                values_of_row = {k: _json_value(v) for k, v in table.slice(row - first, 1).to_pylist()[0].items()}
                rows.append({"rejected": True, "file": name, "row": row, **values_of_row})
        return rows


def _json_value(value: Any) -> Any:
    """A rejected row's value as JSON: bytes as text (or base64), floats spelled out when not finite."""
    if isinstance(value, (bytes, bytearray)):
        return _json_bytes(value)
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# Command line

_DESCRIPTION = ("Print decoded records of an export as JSON lines (feature ids shown by name "
                "where the manifest knows them), and optionally plot it.")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="DIR", help="the export directory (holds _MANIFEST.json)")
    parser.add_argument("--head", type=int, default=None, metavar="N",
                        help="print the first N records (default 10 unless --key, --all or --plot)")
    parser.add_argument("--all", action="store_true", help="print every record")
    parser.add_argument("--key", default=None, metavar="K",
                        help="print the record(s) of user key K, an integer or, for an export with "
                             "string keys, the string (reads only K's shard when placement is by "
                             "hash); a rejected user's rejected row(s) instead, with the reason and "
                             "the file (exit 1: no exported record)")
    parser.add_argument("--ids", action="store_true", help="show raw feature ids instead of names")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write shard balance, embedding-norm histogram and a 2-D PCA "
                             "scatter to this PNG")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="records sampled for the plot's histogram and scatter (default 20000)")


def register(subcommands) -> None:
    """Add ``inspect`` to the command line's subcommands (``pipeline.cli``)."""
    parser = subcommands.add_parser("inspect", description=_DESCRIPTION,
                                    help="print decoded records as JSON lines; --key K, --plot FILE.png")
    _add_arguments(parser)
    parser.set_defaults(handler=_inspect)


def _explain_missing_key(path: str, key: str, out: TextIO, err: TextIO) -> None:
    """No exported record has ``key``: print its rejected rows (``out``, JSON lines) and say why
    and where (``err``), or that the export has no such user at all."""
    rejected = find_rejected(path, key)
    if not rejected:
        print(f"inspect: no record with key {key} in {path}, and no rejected row either", file=err)
        return
    for row in rejected:
        out.write(json.dumps(row) + "\n")
        print(f"inspect: key {key} was rejected: {row.get(REASON_COLUMN)} (input {row.get(SOURCE_COLUMN)} row "
              f"{row.get(SOURCE_ROW_COLUMN)}); its row is {join_path(path, row['file'])} row {row['row']}",
              file=err)


def _inspect(opts: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """0 on success, 1 on unreadable data, 2 on bad usage."""
    if not is_directory(opts.path):
        print(f"inspect: {opts.path} is not an export directory", file=err)
        return 2
    if opts.head is not None and opts.head < 0:
        print("inspect: --head must be >= 0", file=err)
        return 2
    head = None if opts.all else opts.head
    if head is None and not opts.all and opts.key is None:
        head = 0 if opts.plot else 10
    if opts.plot:
        from pipeline.extras import MissingExtra, require
        try:
            require("matplotlib", "inspect --plot")
        except MissingExtra as error:
            print(f"inspect: {error}", file=err)
            return 2
    try:
        if opts.plot:
            from pipeline.tools.plots import DEFAULT_SAMPLE, plot_export   # matplotlib only when asked
            summary = plot_export(opts.path, opts.plot, sample=opts.sample or DEFAULT_SAMPLE)
            print(f"wrote {opts.plot}: {summary}", file=err)
        found = 0
        if head != 0:
            rows = iter_records(opts.path, head=head, key=opts.key, named=not opts.ids)
            for found, row in enumerate(rows, start=1):
                out.write(json.dumps(row) + "\n")
        if opts.key is not None and found == 0:
            _explain_missing_key(opts.path, opts.key, out, err)
            return 1
    except (ExportError, RecordFormatError) as error:
        print(f"inspect: {error}", file=err)
        return 1
    except BrokenPipeError:   # `inspect ... | head` closing the pipe early is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(args: Optional[Sequence[str]] = None) -> int:
    """``embedding-export inspect`` on its own: 0 on success, 1 on unreadable data, 2 on bad usage."""
    parser = argparse.ArgumentParser(prog="embedding-export inspect", description=_DESCRIPTION)
    _add_arguments(parser)
    return _inspect(parser.parse_args(list(args) if args is not None else None), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
