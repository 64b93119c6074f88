"""``pipeline.tools.verify``: clean exports pass in every format; each kind of damage is caught and named.

Exports are built here from the real pieces (twml.encode, the TFRecord/block writers, pyarrow)
with a manifest laid out as docs/FORMAT.md section 7 says and ``transforms.finalize`` write it, so these tests do not
depend on the Beam job; ``test_real_export_verifies`` runs the job itself once it exists.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Dict, Optional

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.outputdir import shard_file_name
from pipeline.tools.verify import VerifyReport, main, print_report, verify_export
from twml.sharding import shard_of_keys
from twml.encode import EncodedRecords, encode_data_records
from twml.feature_ids import feature_id
from twml.io.block import BlockWriter
from twml.io.tfrecord import TFRecordWriter

KEY_FEATURE = "meta.user_id"
EMBEDDING_FEATURE = "output"
FORMATS = [("tfrecord", "none"), ("tfrecord", "gzip"), ("block", "none"), ("block", "gzip"),
           ("parquet", "none")]
REPO = Path(__file__).resolve().parents[1]


def _file_crc32c(path: Path) -> int:
    return google_crc32c.value(path.read_bytes())


def write_shard(path: Path, fmt: str, compression: str, keys: np.ndarray, embeddings: np.ndarray,
                records: Optional[EncodedRecords] = None, records_per_block: int = 16) -> None:
    """One shard file in ``fmt`` holding DataRecords of (keys, embeddings), or ``records`` as given."""
    if records is None:
        records = encode_data_records(keys, feature_id(KEY_FEATURE), [(feature_id(EMBEDDING_FEATURE), embeddings)])
    if fmt == "tfrecord":
        with TFRecordWriter(str(path), compression=compression) as writer:
            writer.write_records(records)
    elif fmt == "block":
        with BlockWriter(str(path), records_per_block=records_per_block, compression=compression) as writer:
            writer.write_records(records)
    else:
        dim = embeddings.shape[1]
        schema = pa.schema([pa.field("key", pa.int64(), nullable=False),
                            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
                            pa.field("data_record", pa.binary(), nullable=False)])
        table = pa.table([pa.array(keys, pa.int64()),
                          pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
                          pa.array(records.to_list(), pa.binary())], schema=schema)
        pq.write_table(table, str(path), row_group_size=64)


def write_export(out: Path, fmt: str = "tfrecord", compression: str = "none", num_shards: int = 4,
                 users: int = 400, dim: int = 8, by: str = "hash", seed: int = 0,
                 crc32c: bool = True, normalize: bool = True) -> Dict:
    """An export directory as docs/FORMAT.md describes it; returns keys, embeddings, shard of each, manifest."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.arange(10**12, 10**12 + 50 * users), size=users, replace=False).astype(np.int64)
    embeddings = rng.standard_normal((users, dim)).astype(np.float32)
    if normalize:
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    shards = shard_of_keys(keys, num_shards) if by == "hash" else rng.integers(0, num_shards, users)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(num_shards):
        rows = np.flatnonzero(shards == s)
        name = shard_file_name(s, num_shards, fmt, compression)
        write_shard(out / name, fmt, compression, keys[rows], embeddings[rows])
        entry = {"file": name, "records": int(len(rows)), "bytes": (out / name).stat().st_size}
        if crc32c:
            entry["crc32c"] = _file_crc32c(out / name)
        entries.append(entry)
    manifest = {
        "format": fmt, "compression": compression, "num_shards": num_shards, "shards": entries,
        "rows_read": users, "rows_written": users, "rows_rejected": 0,
        "rejected_by_reason": {}, "rejected_files": [],
        "key_feature": {"name": KEY_FEATURE, "id": feature_id(KEY_FEATURE)},
        "embedding_feature": {"name": EMBEDDING_FEATURE, "id": feature_id(EMBEDDING_FEATURE)},
        "embedding_dim": dim, "model": {"path": "model", "signature": "serving_default"},
        "config": {"partition": {"num_shards": num_shards, "by": by,
                                 "column": None if by == "hash" else "shard"},
                   "model": {"outputs": {"embedding": {"feature": EMBEDDING_FEATURE}}},
                   "output": {"format": fmt, "compression": compression, "key_feature": KEY_FEATURE}},
        "versions": {"embedding-export": "0.1.0"},
    }
    (out / "_MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    (out / "_SUCCESS").write_text("")
    return {"keys": keys, "embeddings": embeddings, "shards": shards, "manifest": manifest, "path": out}


def _edit_manifest(out: Path, edit) -> None:
    path = out / "_MANIFEST.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _shard_path(export: Dict, shard: int) -> Path:
    return export["path"] / export["manifest"]["shards"][shard]["file"]


def _problems(report: VerifyReport, file: Optional[str] = None):
    return [p for p in report.problems if file is None or p.file == file]


def _record_length(dim: int) -> int:
    return len(encode_data_records(np.zeros(1, np.int64), feature_id(KEY_FEATURE),
                                   [(feature_id(EMBEDDING_FEATURE), np.zeros((1, dim), np.float32))])[0])


# ----------------------------------------------------------------------------------------------
# Clean exports

@pytest.mark.parametrize("fmt,compression", FORMATS)
def test_clean_export_verifies_in_every_format(tmp_path, fmt, compression):
    export = write_export(tmp_path / "export", fmt, compression)
    report = verify_export(str(export["path"]))
    assert report.ok, [str(p) for p in report.problems]
    assert report.records == 400 and len(report.shards) == 4
    assert [s.records for s in report.shards] == [int((export["shards"] == s).sum()) for s in range(4)]
    assert report.placement_checked and report.embedding_dim == 8
    assert report.norm_min == pytest.approx(1.0, abs=1e-5) and report.norm_max == pytest.approx(1.0, abs=1e-5)
    assert not report.warnings


def test_small_batches_give_the_same_result_and_record_indices(tmp_path):
    export = write_export(tmp_path / "export", users=300)
    embeddings_path = _shard_path(export, 2)
    # Poison one record late in shard 2 and check its index is named the same whatever the batching.
    rows = np.flatnonzero(export["shards"] == 2)
    emb = export["embeddings"][rows].copy()
    emb[53, 3] = np.nan
    write_shard(embeddings_path, "tfrecord", "none", export["keys"][rows], emb)
    _edit_manifest(export["path"], lambda m: m["shards"][2].pop("crc32c"))
    for batch_size in (1, 7, 4096):
        report = verify_export(str(export["path"]), batch_size=batch_size)
        assert report.records == 300
        (problem,) = report.problems
        assert (problem.file, problem.record) == (embeddings_path.name, 53)
        assert "non-finite" in problem.message


def test_shards_checked_in_parallel_processes_give_the_same_report(tmp_path):
    export = write_export(tmp_path / "export", "block", "gzip", crc32c=False)
    _shard_path(export, 3).unlink()
    path = _shard_path(export, 1)
    path.write_bytes(path.read_bytes()[:-40])
    serial = verify_export(str(export["path"]))
    parallel = verify_export(str(export["path"]), processes=2)
    assert [str(p) for p in parallel.problems] == [str(p) for p in serial.problems]
    assert len(serial.problems) == 3
    assert parallel.shards == serial.shards and parallel.records == serial.records


def test_column_placement_skips_the_hash_check_and_says_so(tmp_path, capsys):
    export = write_export(tmp_path / "export", by="column")
    assert (export["shards"] != shard_of_keys(export["keys"], 4)).any()
    report = verify_export(str(export["path"]))
    assert report.ok and not report.placement_checked
    assert main([str(export["path"])]) == 0
    assert "NOT checked: partition.by is 'column'" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Damage: each is caught, with the file and the record index

def _flip_middle_byte(path: Path) -> int:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x5A
    path.write_bytes(bytes(data))
    return middle


def test_flipped_byte_in_a_tfrecord_shard_is_named_by_file_and_record(tmp_path):
    export = write_export(tmp_path / "export", crc32c=False)
    path = _shard_path(export, 1)
    middle = _flip_middle_byte(path)
    report = verify_export(str(export["path"]))
    assert not report.ok
    (problem,) = _problems(report)
    frame = _record_length(8) + 16
    assert problem.file == path.name
    assert problem.record == middle // frame
    assert "crc" in problem.message and problem.offset == (middle // frame) * frame
    # The records before the damage were read and checked; the ones after cannot be reached.
    assert report.shards[1].records == middle // frame and not report.shards[1].read_to_end


@pytest.mark.parametrize("fmt,compression", FORMATS)
def test_flipped_byte_is_caught_in_every_format(tmp_path, fmt, compression):
    export = write_export(tmp_path / "export", fmt, compression)
    path = _shard_path(export, 2)
    _flip_middle_byte(path)
    report = verify_export(str(export["path"]))
    assert not report.ok
    named = _problems(report, path.name)
    assert named, [str(p) for p in report.problems]
    assert all(p.file == path.name for p in report.problems)
    # The file checksum the manifest records always catches it; when the damage breaks framing
    # or a record, the record is named as well.
    assert any("crc32c" in p.message for p in named)
    if compression == "gzip" or fmt == "tfrecord":
        assert any(p.record is not None for p in named)


def test_flipped_key_byte_in_a_block_shard_without_file_crc_names_the_record(tmp_path):
    export = write_export(tmp_path / "export", "block", crc32c=False)
    path = _shard_path(export, 0)
    data = bytearray(path.read_bytes())
    rows = np.flatnonzero(export["shards"] == 0)
    target = 20   # a record in the second block (16 records a block)
    key_bytes = int(export["keys"][rows[target]]).to_bytes(8, "big")
    position = data.index(key_bytes) + 7
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_export(str(export["path"]))
    (problem,) = report.problems
    assert (problem.file, problem.record) == (path.name, target)
    assert "belongs in shard" in problem.message


@pytest.mark.parametrize("fmt,compression", FORMATS)
def test_truncated_shard_is_named_by_file_and_record(tmp_path, fmt, compression):
    export = write_export(tmp_path / "export", fmt, compression, crc32c=False)
    path = _shard_path(export, 3)
    data = path.read_bytes()
    cut = int(len(data) * 0.6)
    path.write_bytes(data[:cut])
    report = verify_export(str(export["path"]))
    assert not report.ok
    problems = _problems(report, path.name)
    assert problems and problems[0].record is not None, [str(p) for p in report.problems]
    first = problems[0]
    assert "unreadable" in first.message or "truncated" in first.message
    assert first.record <= export["manifest"]["shards"][3]["records"]
    if fmt == "tfrecord" and compression == "none":
        frame = _record_length(8) + 16
        assert first.record == cut // frame and "truncated" in first.message
    # bytes differ from the manifest as well
    assert any("bytes" in p.message for p in problems)


def test_deleted_shard_is_named(tmp_path):
    export = write_export(tmp_path / "export")
    path = _shard_path(export, 2)
    path.unlink()
    report = verify_export(str(export["path"]))
    (problem,) = report.problems
    assert problem.file == path.name and "missing" in problem.message
    assert report.shards[2].missing
    assert report.records == 400 - export["manifest"]["shards"][2]["records"]


def test_edited_shard_count_in_the_manifest_is_named_by_file_and_record(tmp_path):
    export = write_export(tmp_path / "export")
    real = export["manifest"]["shards"][1]["records"]
    _edit_manifest(export["path"], lambda m: m["shards"][1].update(records=real + 5))
    report = verify_export(str(export["path"]))
    messages = [str(p) for p in report.problems]
    shard_problem = next(p for p in report.problems if p.file)
    assert shard_problem.file == export["manifest"]["shards"][1]["file"]
    assert shard_problem.record == real and f"says {real + 5} records" in shard_problem.message
    assert any(f"rows_written says 400" in m for m in messages), messages


def test_edited_row_totals_in_the_manifest_are_caught(tmp_path):
    export = write_export(tmp_path / "export")
    _edit_manifest(export["path"], lambda m: m.update(rows_written=399))
    report = verify_export(str(export["path"]))
    messages = [p.message for p in report.problems]
    assert any("rows_read 400 != rows_written 399 + rows_rejected 0" in m for m in messages)
    assert any("the shards list 400 records in all, rows_written says 399" in m for m in messages)


def test_edited_embedding_dim_and_feature_id_are_caught(tmp_path):
    export = write_export(tmp_path / "export")
    _edit_manifest(export["path"], lambda m: (m.update(embedding_dim=16),
                                              m["key_feature"].update(id=12345)))
    report = verify_export(str(export["path"]))
    text = [str(p) for p in report.problems]
    assert any("key_feature id 12345 is not feature_id('meta.user_id')" in t for t in text)
    # With a wrong key id no record has a key: every shard says so at its first record.
    assert any(p.record == 0 and "no key" in p.message for p in report.problems)


def test_wrong_embedding_dim_is_named(tmp_path):
    export = write_export(tmp_path / "export")
    _edit_manifest(export["path"], lambda m: m.update(embedding_dim=16))
    report = verify_export(str(export["path"]))
    assert report.problem_count == 400
    assert len(report.problems) == 4   # one line a shard, with the count
    first = report.problems[0]
    assert first.record == 0 and "dimension 8, the manifest says 16" in first.message
    assert f"({export['manifest']['shards'][0]['records']} records of this shard" in first.message


def test_missing_success_marker_and_stray_part_file(tmp_path):
    export = write_export(tmp_path / "export")
    (export["path"] / "_SUCCESS").unlink()
    shutil.copy(_shard_path(export, 0), export["path"] / "part-00000-of-00008.tfrecord")
    (export["path"] / "_temporary").mkdir()
    report = verify_export(str(export["path"]))
    text = [str(p) for p in report.problems]
    assert any("_SUCCESS is missing" in t for t in text)
    assert any(t.startswith("part-00000-of-00008.tfrecord: part file that the manifest does not list")
               for t in text)
    assert any("_temporary" in w for w in report.warnings)


def test_misnamed_shard_is_caught(tmp_path):
    export = write_export(tmp_path / "export", "tfrecord", "gzip")
    old = _shard_path(export, 0)
    new = old.with_name("part-00000-of-00004.tfrecord")
    old.rename(new)
    _edit_manifest(export["path"], lambda m: m["shards"][0].update(file=new.name))
    report = verify_export(str(export["path"]))
    assert any(p.file == new.name and "should be named part-00000-of-00004.tfrecord.gz" in p.message
               for p in report.problems)


def test_misplaced_non_finite_and_undecodable_records_are_named(tmp_path):
    export = write_export(tmp_path / "export", crc32c=False)
    rows = np.flatnonzero(export["shards"] == 1)
    keys, emb = export["keys"][rows].copy(), export["embeddings"][rows].copy()
    stranger = next(int(k) for k in export["keys"] if shard_of_keys(np.array([k]), 4)[0] == 3)
    keys[10] = stranger
    emb[20, 0] = np.inf
    good = encode_data_records(keys, feature_id(KEY_FEATURE), [(feature_id(EMBEDDING_FEATURE), emb)]).to_list()
    good[30] = good[30][:-5] + b"\xff\xff\xff\xff\xff"    # garbage inside a well-framed record
    write_shard(_shard_path(export, 1), "tfrecord", "none", keys, emb, EncodedRecords.from_list(good))
    report = verify_export(str(export["path"]))
    name = _shard_path(export, 1).name
    by_record = {p.record: p.message for p in _problems(report, name)}
    assert set(by_record) == {10, 20, 30}, [str(p) for p in report.problems]
    assert f"key {stranger} belongs in shard 3" in by_record[10]
    assert "non-finite" in by_record[20]
    assert "does not decode" in by_record[30]
    assert report.shards[1].records == len(rows) and report.shards[1].read_to_end


def test_embedding_must_be_a_float_raw_tensor_as_spec_4_writes_it(tmp_path):
    export = write_export(tmp_path / "export", crc32c=False)
    rows = np.flatnonzero(export["shards"] == 2)
    keys, emb = export["keys"][rows], export["embeddings"][rows]
    records = encode_data_records(keys, feature_id(KEY_FEATURE), [(feature_id(EMBEDDING_FEATURE), emb)]).to_list()
    # A DOUBLE tensor holds the same numbers and every reader accepts it, but it is not the exported record (FORMAT.md section 3).
    records[17] = encode_data_records(keys[17:18], feature_id(KEY_FEATURE),
                                      [(feature_id(EMBEDDING_FEATURE), emb[17:18].astype(np.float64))])[0]
    path = _shard_path(export, 2)
    write_shard(path, "tfrecord", "none", keys, emb, EncodedRecords.from_list(records))
    _edit_manifest(export["path"], lambda m: m["shards"][2].update(bytes=path.stat().st_size))
    report = verify_export(str(export["path"]))
    (problem,) = report.problems
    assert (problem.file, problem.record) == (_shard_path(export, 2).name, 17)
    assert "not a rawTypedTensor of dataType FLOAT" in problem.message


def test_parquet_columns_must_agree_with_the_data_record(tmp_path):
    export = write_export(tmp_path / "export", "parquet", crc32c=False)
    path = _shard_path(export, 0)
    table = pq.read_table(path)
    keys = table.column("key").to_numpy().copy()
    keys[5] += 1
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    emb[7, 0] += 1e-3
    table = table.set_column(0, table.schema.field("key"), pa.array(keys, pa.int64()))
    table = table.set_column(1, table.schema.field("embedding"),
                             pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), 8))
    pq.write_table(table, path)
    report = verify_export(str(export["path"]))
    by_record = {p.record: p.message for p in _problems(report, path.name) if p.record is not None}
    assert "column key is" in by_record[5]
    assert "column embedding differs" in by_record[7]


def test_duplicate_keys_are_a_warning(tmp_path):
    export = write_export(tmp_path / "export", crc32c=False)
    rows = np.flatnonzero(export["shards"] == 0)
    keys = np.concatenate([export["keys"][rows], export["keys"][rows[:1]]])
    emb = np.concatenate([export["embeddings"][rows], export["embeddings"][rows[:1]]])
    path = _shard_path(export, 0)
    write_shard(path, "tfrecord", "none", keys, emb)
    _edit_manifest(export["path"], lambda m: (m["shards"][0].update(records=len(keys), bytes=path.stat().st_size),
                                              m.update(rows_written=401, rows_read=401)))
    report = verify_export(str(export["path"]))
    assert report.ok, [str(p) for p in report.problems]
    assert any("1 duplicate key(s)" in w for w in report.warnings)


def test_rejected_files_are_counted(tmp_path):
    export = write_export(tmp_path / "export")
    (export["path"] / "_rejected").mkdir()
    rejected = export["path"] / "_rejected" / "part-00000-of-00001.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "reason": ["null key", "null key"]}), rejected)
    _edit_manifest(export["path"], lambda m: m.update(rows_read=403, rows_rejected=3, rejected_files=[
        {"file": "_rejected/part-00000-of-00001.parquet", "records": 3, "bytes": rejected.stat().st_size}]))
    report = verify_export(str(export["path"]))
    assert any(p.file == "_rejected/part-00000-of-00001.parquet" and "says 3 rejected rows, the file holds 2"
               in p.message for p in report.problems)


def test_unreadable_manifest_is_a_problem_not_a_crash(tmp_path):
    export = write_export(tmp_path / "export")
    (export["path"] / "_MANIFEST.json").write_text("{not json")
    report = verify_export(str(export["path"]))
    (problem,) = report.problems
    assert problem.file == "_MANIFEST.json" and "unreadable manifest" in problem.message
    _edit_manifest_text = {"format": "tfrecord", "num_shards": 4}
    (export["path"] / "_MANIFEST.json").write_text(json.dumps(_edit_manifest_text))
    (problem,) = verify_export(str(export["path"])).problems
    assert "shards must be a list" in problem.message


# ----------------------------------------------------------------------------------------------
# Command line

def test_main_exit_codes_and_plain_text_summary(tmp_path, capsys):
    export = write_export(tmp_path / "export")
    assert main([str(export["path"])]) == 0
    out = capsys.readouterr().out
    assert "OK: 400 records in 4 shards verified" in out
    assert "part-00003-of-00004.tfrecord" in out
    assert not any(ch in out for ch in "─│┃━"), "plain text expected when stdout is not a terminal"
    _shard_path(export, 1).unlink()
    assert main([str(export["path"])]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 problem(s)" in out and "part-00001-of-00004.tfrecord: shard file is missing" in out
    assert main([str(tmp_path / "nowhere")]) == 2


def test_main_json_report(tmp_path, capsys):
    export = write_export(tmp_path / "export", "parquet")
    assert main([str(export["path"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["records"] == 400 and len(report["shards"]) == 4


def test_rich_table_on_a_terminal(tmp_path):
    export = write_export(tmp_path / "export")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    print_report(verify_export(str(export["path"])), stream)
    text = stream.getvalue()
    assert "embedding export: shards" in text and "OK: 400 records" in text


def test_real_export_verifies(tmp_path):
    """The Beam job's own output (DirectRunner), checked by the verifier."""
    from pipeline.demo.run import run_demo
    manifest = run_demo(str(tmp_path / "demo"), users=600, stream=io.StringIO())
    export = tmp_path / "demo" / "export"
    report = verify_export(str(export))
    assert report.ok, [str(p) for p in report.problems]
    assert report.records == manifest["rows_written"] > 0
    assert report.placement_checked
