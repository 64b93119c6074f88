"""The manifest (SPEC section 6): its static part, built at launch, and reading it back.

The finalize step (``transforms.finalize.publish``) adds what only the finished run knows (shard
files, row counts, rejected rows by reason, unreadable row groups, duplicate keys) to the static
part built here, and writes ``_MANIFEST.json`` before ``_SUCCESS``.
"""
from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Dict, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.preflight import ExportPlan, key_id_feature
from transforms.finalize import MANIFEST_NAME, SUCCESS_NAME

__all__ = ["manifest_base", "versions", "read_manifest"]


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


# How a string key becomes its int64 id and its shard (docs/FORMAT_string_keys.md).
KEY_ID_RULE = ("feature_id(key): the first 64 bits (h1, little-endian, signed) of MurmurHash3_x64_128, "
               "seed 0, over the key's UTF-16LE code units (twml's feature id function, '#' rule included)")
KEY_ID_SHARD_RULE = "fmix64(uint64(key_id)) % num_shards"


def _key_feature(plan: ExportPlan) -> Dict:
    """{name, id} of the feature holding the key: discreteFeatures (int64), stringFeatures (string)."""
    layout = plan.layout
    fid = layout.key_string_feature_id if layout.string_keys else layout.key_feature_id
    return {"name": plan.config.output.key_feature, "id": fid}


def manifest_base(plan: ExportPlan) -> Dict:
    """Everything in the manifest that is known before the run starts."""
    cfg = plan.config
    first = plan.outputs[0]
    return {
        "format": cfg.output.format,
        "compression": cfg.output.compression,
        "num_shards": plan.partition.num_shards,
        "key_type": "string" if plan.layout.string_keys else "int64",
        "key_feature": _key_feature(plan),
        # String keys only (null otherwise): where the key's int64 id is, and how it is derived.
        "key_id_feature": ({"name": key_id_feature(cfg.output), "id": plan.layout.key_feature_id}
                           if plan.layout.string_keys else None),
        "key_id": KEY_ID_RULE if plan.layout.string_keys else None,
        "embedding_feature": {"name": first.feature, "id": first.feature_id},
        "embedding_dim": plan.embedding_dim,
        "outputs": [{"output": o.name, "feature": o.feature, "id": o.feature_id, "dtype": o.dtype,
                     "shape": list(o.shape)} for o in plan.outputs],
        "model": {"path": cfg.model.path, "signature": cfg.model.signature},
        "partition": {"by": cfg.partition.by, "column": cfg.partition.column,
                      "hash": ((KEY_ID_SHARD_RULE if plan.layout.string_keys else "fmix64(uint64(key)) % num_shards")
                               if cfg.partition.by == "hash" else None)},
        "input": {"path": cfg.input.path, "files": len(plan.files), "rows": plan.total_rows,
                  # unreadable footers (on_bad_file: skip): the rows they hold are not known
                  "skipped_files": [{"file": p, "rows": None, "error": e} for p, e in plan.skipped_files]},
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
        "created_at": plan.created_at,
    }


def read_manifest(output_path: str, require_success: bool = True) -> Dict:
    """The ``_MANIFEST.json`` of a finished export (checking ``_SUCCESS`` unless told not to)."""
    if require_success and not FileSystems.exists(FileSystems.join(output_path, SUCCESS_NAME)):
        raise FileNotFoundError(f"{output_path} has no {SUCCESS_NAME}: the export is missing or incomplete")
    with FileSystems.open(FileSystems.join(output_path, MANIFEST_NAME),
                          compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read().decode("utf-8"))
