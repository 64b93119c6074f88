"""The contract lives in the repository: docs/CONFIG.md lists exactly the config model's keys with
its defaults, docs/FORMAT.md's byte table is what the encoder writes, and nothing in the
repository points at a file outside it."""
from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.config import ExportConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG_MD = REPO / "docs" / "CONFIG.md"
FORMAT_MD = REPO / "docs" / "FORMAT.md"


# ------------------------------------------------------------------------------------------------
# docs/CONFIG.md against pipeline/config.py

def _dict_value_model(annotation) -> typing.Optional[type]:
    """The model of ``Dict[str, Model]`` (optional or not), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is dict:
            value = typing.get_args(candidate)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value
    return None


def config_keys(model: type = ExportConfig, prefix: str = "") -> dict:
    """{dotted key: pydantic FieldInfo} of every key a run config can hold, sections left out;
    a map of named entries appears as ``key`` and its entries' keys as ``key.<name>.sub``."""
    keys = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(config_keys(annotation, key + "."))
            continue
        keys[key] = field
        entry = _dict_value_model(annotation)
        if entry is not None:
            keys.update(config_keys(entry, key + ".<name>."))
    return keys


def default_cell(field) -> str:
    """How CONFIG.md writes a field's default: ``required`` or the JSON value in backticks."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    return f"`{json.dumps(value)}`"


def documented_keys() -> dict:
    """{key: row cells} of CONFIG.md's key table."""
    rows = {}
    for line in CONFIG_MD.read_text().splitlines():
        match = re.match(r"^\| `([a-z_<>.]+)` \|(.*)\|\s*$", line)
        if match:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", match.group(2))]
            assert match.group(1) not in rows, f"CONFIG.md lists {match.group(1)} twice"
            rows[match.group(1)] = cells
    return rows


def test_config_md_lists_every_key_of_the_model_and_no_other():
    model, documented = config_keys(), documented_keys()
    assert len(model) > 30
    missing = sorted(set(model) - set(documented))
    extra = sorted(set(documented) - set(model))
    assert not missing, f"keys of pipeline/config.py missing from docs/CONFIG.md: {missing}"
    assert not extra, f"docs/CONFIG.md lists keys pipeline/config.py does not have: {extra}"
    assert list(documented) == list(model), "docs/CONFIG.md should list the keys in the model's order"


def test_config_md_gives_every_default_and_a_meaning():
    documented = documented_keys()
    for key, field in config_keys().items():
        type_cell, default, meaning = documented[key]
        assert default == default_cell(field), f"{key}: CONFIG.md says {default}, the model {default_cell(field)}"
        assert type_cell and len(meaning) > 10, f"{key}: type or meaning missing"


def test_the_walk_sees_nested_entries():
    keys = config_keys()
    assert "model.outputs.<name>.feature" in keys and "input.features.<name>.sparse_binary" in keys
    assert "partition" not in keys and "partition.num_shards" in keys


# ------------------------------------------------------------------------------------------------
# docs/FORMAT.md against the encoder

def test_format_md_byte_table_is_what_the_encoder_writes():
    from twml.encode import encode_data_records
    from twml.feature_ids import feature_id

    dim = 3
    key_id, emb_id = feature_id("meta.user_id"), feature_id("output")
    embedding = np.array([[1.5, -2.0, 0.25]], np.float32)
    record = encode_data_records(np.array([-7]), key_id, [(emb_id, embedding)])[0]
    assert len(record) == 78 + 4 * dim   # FORMAT.md: "78 + 4·D bytes"
    rows = re.findall(r"^\| (\d+(?: \+ 4D)?) \| (.+?) \| (.+?) \|$", FORMAT_MD.read_text(), re.M)
    assert len(rows) == 14
    fields = {"key feature id": key_id.to_bytes(8, "big", signed=True),
              "the user key (int64)": (-7).to_bytes(8, "big", signed=True),
              "embedding feature id": emb_id.to_bytes(8, "big", signed=True),
              "the float32 values": embedding.astype("<f4").tobytes()}
    for offset_text, cell, value in rows:
        offset = eval(offset_text.replace("4D", "4 * dim"), {"dim": dim})   # "59 + 4D"
        constant = re.match(r"^`([0-9a-f ]+)`", cell)
        if constant:
            expected = bytes.fromhex(constant.group(1))
            assert record[offset:offset + len(expected)] == expected, (offset_text, cell)
        elif value in fields:
            assert record[offset:offset + len(fields[value])] == fields[value], (offset_text, value)
    assert record[-1:] == b"\x00"


def test_format_md_names_every_manifest_field():
    from types import SimpleNamespace

    from transforms.outputdir import finished_manifest, static_manifest

    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", FORMAT_MD.read_text(), re.M))
    documented = {name for pair in documented for name in pair if name}
    output = SimpleNamespace(name="embedding", feature="output", feature_id=1, dtype="float32", shape=(4,))
    base = static_manifest(fmt="tfrecord", compression="none", num_shards=1, key_feature="k", key_feature_id=2,
                           outputs=[output], embedding_dim=4, model_path="m", signature="s",
                           partition_column=None, input_path="i", files=1, rows=0, skipped_files=[],
                           config={}, created_at="t")
    written = set(finished_manifest(base, "run", [], 0, [], {}, [], None))
    assert {"key_feature", "outputs", "versions", "shards", "rows_read"} <= written
    missing = sorted(written - documented)
    assert not missing, f"manifest fields not described in docs/FORMAT.md: {missing}"


# ------------------------------------------------------------------------------------------------
# Nothing points outside the repository.

_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", "demo", "bench_out", ".pytest_cache",
              ".hypothesis", "node_modules"}
_TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".in", ".thrift", ".sh", ".json"}
# Written split so that this file does not match itself.
_OUTSIDE = [re.compile(p) for p in (r"\.\./" + "shared", "SPEC" + r"\.md", r"\bSPEC" + r"( section)? ?\d",
                                    r"/work/" + "shared")]


def _repo_text_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(root) / name
            if path.suffix in _TEXT_SUFFIXES or name in ("Makefile", "run") or path.parent.name == ".ci":
                yield path


def test_nothing_in_the_repository_points_outside_it():
    found = []
    for path in _repo_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if any(p.search(line) for p in _OUTSIDE):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("doc", ["README.md", "docs/RUNNING.md", "docs/GUARANTEES.md", "docs/FORMAT.md",
                                 "docs/CONFIG.md", "benchmarks/README.md"])
def test_links_between_the_docs_resolve(doc):
    path = REPO / doc
    text = path.read_text()
    targets = set(re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text))
    targets |= {t for t in re.findall(r"`?\b((?:docs|benchmarks)/[A-Z]+\.md)\b", text)}
    for target in targets:
        resolved = (path.parent / target) if not target.startswith(("docs/", "benchmarks/")) else REPO / target
        assert resolved.is_file(), f"{doc} links to {target}, which does not exist"
