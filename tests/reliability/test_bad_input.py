"""Guarantees 1 and 3: every row read is written or rejected, checked before _SUCCESS; bad input
fails naming the file (and column, or row group), or with ``on_bad_file: skip`` is recorded in the
manifest; an empty input is a valid empty export; duplicate keys are exported and counted."""
import dataclasses
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, user_table
from rel_support import FIGURES, assert_accounted, tree, write_config, write_small_parts
from transforms.errors import ExportError
from transforms.finalize import publish
from twml.decode import decode_embeddings
from twml.feature_ids import feature_id

pytestmark = pytest.mark.timeout(180)

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
ROWS_CHECKED = FIGURES.setdefault("rows checked end to end (bad input)", [])


def users_file(path, keys, seed=0, row_group_size=200):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(user_table(np.asarray(keys, np.int64), seed), path, row_group_size=row_group_size)
    return path


def damage_page_header(path, row_group, column=1):
    """Overwrite the page header of one column chunk; the footer stays intact and readable."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(row_group).column(column)
    offset = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(open(path, "rb").read())
    data[offset:offset + 24] = bytes(b ^ 0x5A for b in data[offset:offset + 24])
    open(path, "wb").write(bytes(data))
    return meta.row_group(row_group).num_rows


def config(pattern, out, **extra):
    raw = tiny_config(pattern, tiny_model(), str(out), num_shards=4).model_dump(mode="json")
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    from pipeline.config import parse_config
    return parse_config(raw)


# -- missing and mistyped columns: refused before launch, naming the file and the column ----------

@pytest.mark.parametrize("change,message", [
    (lambda t: t.drop_columns(["sparse_ids"]),
     r"b.parquet: column 'sparse_ids' \(model.inputs.sparse_ids.column\) does not exist"),
    (lambda t: t.set_column(1, "dense", pa.array([["x"] * 8] * t.num_rows, pa.list_(pa.string()))),
     r"b.parquet: column 'dense' \(feeds float32 input 'dense'\) has type list<element: string>"),
    (lambda t: t.set_column(0, "user_id", pa.array([float(k) for k in t.column("user_id").to_pylist()])),
     r"b.parquet: key column 'user_id' has type double"),
    # String keys are keys too (docs/FORMAT.md section 5), but every file must have the same key type.
    (lambda t: t.set_column(0, "user_id", pa.array([str(k) for k in t.column("user_id").to_pylist()])),
     r"b.parquet: column types differ from .*a.parquet: user_id: int64 vs string"),
])
def test_missing_or_mistyped_column_fails_before_launch(tmp_path, capsys, change, message):
    users_file(str(tmp_path / "in" / "a.parquet"), range(100))
    pq.write_table(change(user_table(np.arange(100, 200), 1)), str(tmp_path / "in" / "b.parquet"))
    out = tmp_path / "out"
    cfg = write_config(config(str(tmp_path / "in" / "*.parquet"), out), str(tmp_path / "cfg.yaml"))
    assert cli_main(["run", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()                                      # nothing ran, nothing written


# -- truncated and corrupt files ------------------------------------------------------------------

def test_truncated_file_fails_naming_it_or_is_skipped_and_recorded(tmp_path):
    users_file(str(tmp_path / "in" / "a.parquet"), range(300))
    bad = users_file(str(tmp_path / "in" / "b.parquet"), range(300, 600))
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) * 2 // 3])              # the footer is gone
    pattern = str(tmp_path / "in" / "*.parquet")
    with pytest.raises(PreflightError, match=r"b.parquet: not a readable Parquet file .*on_bad_file: skip"):
        run_export(preflight(config(pattern, tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    manifest = run_export(preflight(config(pattern, tmp_path / "out", input__on_bad_file="skip")))
    assert manifest["input"]["skipped_files"] == [
        {"file": bad, "rows": None, "error": manifest["input"]["skipped_files"][0]["error"]}]
    assert "Parquet" in manifest["input"]["skipped_files"][0]["error"]
    assert manifest["rows_read"] == manifest["rows_written"] == 300
    assert_accounted(str(tmp_path / "out"), manifest)


def test_corrupt_row_group_fails_naming_file_and_row_group(tmp_path):
    users_file(str(tmp_path / "in" / "a.parquet"), range(600))
    bad = users_file(str(tmp_path / "in" / "b.parquet"), range(600, 1200), seed=1)
    damage_page_header(bad, row_group=1)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"b.parquet: row group 1 \(200 rows\) cannot be read: OSError: .*"
                                          r"set input.on_bad_file: skip"):
        run_export(preflight(config(str(tmp_path / "in" / "*.parquet"), out)))
    assert not out.exists() or not [n for n in tree(str(out)) if not n.startswith("_temporary/")]
    assert not (out / "_temporary").exists()                       # the failed run's scratch is gone


def test_corrupt_row_group_skipped_is_counted_as_unreadable(tmp_path):
    users_file(str(tmp_path / "in" / "a.parquet"), range(600))
    bad = users_file(str(tmp_path / "in" / "b.parquet"), range(600, 1200), seed=1)
    lost = damage_page_header(bad, row_group=1)
    out = tmp_path / "out"
    manifest = run_export(preflight(config(str(tmp_path / "in" / "*.parquet"), out, input__on_bad_file="skip")))
    assert manifest["rows_unreadable"] == lost == 200
    (entry,) = manifest["input"]["unreadable_row_groups"]
    assert entry["file"] == bad and entry["row_group"] == 1 and entry["rows"] == 200 and entry["error"]
    assert manifest["rows_read"] + manifest["rows_unreadable"] == 1200 == manifest["input"]["rows"]
    records = assert_accounted(str(out), manifest)
    keys = set()
    for recs in records.values():
        keys.update(decode_embeddings(recs, KEY_ID, EMB_ID)[0].tolist())
    assert keys == set(range(0, 800)) | set(range(1000, 1200))     # exactly row group 1 of b is missing
    ROWS_CHECKED.append(f"corrupt row group skipped: {len(keys)} keys checked, 200 unreadable")


def test_file_truncated_after_launch_fails_naming_it(tmp_path):
    users_file(str(tmp_path / "in" / "a.parquet"), range(400))
    bad = users_file(str(tmp_path / "in" / "b.parquet"), range(400, 800), seed=1)
    cfg = config(str(tmp_path / "in" / "*.parquet"), tmp_path / "out")
    plan = preflight(cfg)                                          # footers read: all fine ...
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[:100])                              # ... then the file is cut short
    with pytest.raises(ExportError, match=r"b.parquet: row group 0 \(200 rows\) cannot be read"):
        run_export(plan)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_file_rewritten_after_launch_fails_naming_it(tmp_path):
    users_file(str(tmp_path / "in" / "a.parquet"), range(400))
    cfg = config(str(tmp_path / "in" / "*.parquet"), tmp_path / "out")
    plan = preflight(cfg)
    users_file(str(tmp_path / "in" / "a.parquet"), range(300), row_group_size=150)   # fewer rows now
    with pytest.raises(ExportError, match=r"a.parquet: row group 0 \(200 rows\) cannot be read: ValueError: it "
                                          r"holds 150 rows, its footer said 200 at launch"):
        run_export(plan)


# -- accounting ------------------------------------------------------------------------------------

def test_the_job_checks_the_accounting_before_success(tmp_path):
    """A real run whose read rows do not add up to the launch-time count (rows lost between the
    footers and the data) is refused by finalize: nothing is published."""
    users_file(str(tmp_path / "in" / "a.parquet"), range(400))
    cfg = config(str(tmp_path / "in" / "*.parquet"), tmp_path / "out")
    plan = preflight(cfg)
    short = dataclasses.replace(plan, files=(dataclasses.replace(plan.files[0], rows=401),))
    with pytest.raises(ExportError, match=r"read 400 rows but the input files' footers hold 401"):
        run_export(short)
    assert not (tmp_path / "out").exists() or tree(str(tmp_path / "out")) == []


def test_publish_refuses_a_mismatch_and_changes_nothing(tmp_path):
    from transforms.elements import ShardResult
    from transforms.specs import OutputLayout
    layout = OutputLayout(str(tmp_path / "out"), "20250101T000000Z-00000000", "tfrecord", "none", 1, KEY_ID)
    os.makedirs(tmp_path / "out" / "_temporary" / layout.run_id)
    temp = tmp_path / "out" / "_temporary" / layout.run_id / "s0"
    temp.write_bytes(b"x")
    shard = ShardResult(0, str(temp), "part-00000-of-00001.tfrecord", 3, 1, 0)
    before = tree(str(tmp_path / "out"))
    with pytest.raises(ExportError, match=r"accounting mismatch: rows_read 4 != rows_written 3 \+ rows_rejected 0"):
        publish(layout, [shard], 4, [], {"format": "tfrecord"})
    assert tree(str(tmp_path / "out")) == before                    # no journal, no rename, no _SUCCESS


# -- empty input and duplicate keys ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["tfrecord", "block", "parquet"])
def test_empty_input_is_a_valid_empty_export(tmp_path, fmt):
    os.makedirs(tmp_path / "in")
    pq.write_table(user_table(np.arange(0), 0), str(tmp_path / "in" / "empty.parquet"))
    out = tmp_path / "out"
    manifest = run_export(preflight(config(str(tmp_path / "in" / "*.parquet"), out, output__format=fmt)))
    assert manifest["rows_read"] == manifest["rows_written"] == manifest["rows_rejected"] == 0
    assert manifest["duplicate_keys"] == {"keys": 0, "rows": 0}
    assert [s["records"] for s in manifest["shards"]] == [0, 0, 0, 0]
    assert_accounted(str(out), manifest)


@pytest.mark.parametrize("counted", ["per_shard", "per_shard_many_parts", "by_bucket"])
def test_duplicate_keys_are_exported_as_they_come_and_counted(tmp_path, monkeypatch, counted):
    """Hash placement counts duplicates per shard from the parts' key logs (many parts: a 4 KiB
    buffer, two open parts); a partition column may split a key's copies over shards, so they are
    counted by key bucket. The same counts each way."""
    keys = np.arange(1000, 1600, dtype=np.int64)
    extra = [1000, 1000, 1000, 1001, 1500]
    users_file(str(tmp_path / "in" / "a.parquet"), keys)
    # key 1000 three times more, 1001 and 1500 once more: 3 duplicated keys, 5 rows beyond their first
    users_file(str(tmp_path / "in" / "b.parquet"), extra, seed=7)
    overrides = {}
    if counted == "by_bucket":  # each copy of 1000 in another shard than the first
        for name, table in (("a.parquet", user_table(keys, 0)), ("b.parquet", user_table(np.array(extra), 7))):
            shard = pa.array((np.arange(table.num_rows) + (name == "b.parquet")) % 4, pa.int64())
            pq.write_table(table.append_column("shard", shard), str(tmp_path / "in" / name), row_group_size=200)
        overrides = {"partition__by": "column", "partition__column": "shard"}
    if counted == "per_shard_many_parts":
        write_small_parts(monkeypatch)
    out = tmp_path / "out"
    manifest = run_export(preflight(config(str(tmp_path / "in" / "*.parquet"), out, **overrides)))
    assert manifest["rows_written"] == 605
    assert manifest["duplicate_keys"] == {"keys": 3, "rows": 5}
    records = assert_accounted(str(out), manifest)
    written = []
    for recs in records.values():
        written += decode_embeddings(recs, KEY_ID, EMB_ID)[0].tolist()
    assert sorted(written) == sorted(keys.tolist() + [1000, 1000, 1000, 1001, 1500])
    report = verify_export(str(out))
    assert report.ok
    if counted != "by_bucket":  # verify finds a key's copies within a shard, where hash placement puts them
        assert any("duplicate key" in w for w in report.warnings), report.warnings
    ROWS_CHECKED.append(f"duplicate keys ({counted}): {len(written)} records decoded")


# -- rejected rows keep every input column and point at their row -----------------------------------

def with_extra_columns(table, first, int_type, tags=True):
    """``table`` plus columns the job does not read: age (``int_type``, some null), tags
    (list<string>, when ``tags``) and joined (timestamp); values from the row's position + ``first``."""
    n = table.num_rows
    at = range(first, first + n)
    table = table.append_column("age", pa.array([None if i % 9 == 4 else i % 90 for i in at], int_type))
    if tags:
        table = table.append_column("tags", pa.array([[f"t{i}"] * (i % 3) for i in at], pa.list_(pa.string())))
    return table.append_column("joined", pa.array(np.arange(first, first + n) * 86_400_000_000, pa.timestamp("us")))


def test_rejected_rows_keep_all_their_input_columns_and_their_row(tmp_path):
    """Guarantee 1: a rejected row of every kind (validation, model failure, non-finite output)
    keeps the columns the job did not read, read back from its file at ``source_row``; files with
    other columns (and another type for one) give one rejected schema, null where a file lacks a column."""
    from pipeline_fixtures import BAD_ROW_REASONS, bad_rows, tiny_config
    from rel_support import poison_model, poisoned_users, rejected_table

    os.makedirs(tmp_path / "in")
    a = poisoned_users(np.arange(0, 700, dtype=np.int64), [5, 650], seed=1)
    a = pa.concat_tables([a.slice(0, 300), bad_rows(10 ** 12), a.slice(300)])        # bad rows at 300..307
    a = with_extra_columns(a, 0, pa.int32())
    b = poisoned_users(np.arange(5000, 5500, dtype=np.int64), [499], seed=2)
    b = pa.concat_tables([bad_rows(2 * 10 ** 12), b])                                 # bad rows at 0..7
    b = with_extra_columns(b, 10_000, pa.int64(), tags=False)                        # age int64, no tags
    b = b.select(["age", "user_id", "dense", "sparse_ids", "joined", "country"])     # another column order
    b = b.append_column("plan", pa.array([f"p{i % 4}" for i in range(b.num_rows)]))  # a column of its own
    paths = {"a.parquet": str(tmp_path / "in" / "a.parquet"), "b.parquet": str(tmp_path / "in" / "b.parquet")}
    pq.write_table(a, paths["a.parquet"], row_group_size=200)
    pq.write_table(b, paths["b.parquet"], row_group_size=200)
    out = str(tmp_path / "out")
    manifest = run_export(preflight(tiny_config(str(tmp_path / "in" / "*.parquet"), poison_model(), out, num_shards=4,
                                      max_reject_fraction=0.05)))
    assert manifest["rows_read"] == a.num_rows + b.num_rows == manifest["rows_written"] + manifest["rows_rejected"]
    expected = {reason: 2 for reason in BAD_ROW_REASONS.values()}
    expected["model_error:InvalidArgumentError"] = 3
    assert manifest["rejected_by_reason"] == expected
    assert_accounted(out, manifest)
    rejected = rejected_table(out, manifest)
    assert rejected.column_names == ["user_id", "dense", "sparse_ids", "country", "age", "tags", "joined", "plan",
                                     "reason", "source_file", "source_row", "error"]
    assert rejected.schema.field("age").type == pa.int32()                  # the first file's type
    sources = {path: pq.read_table(path) for path in paths.values()}
    rows = rejected.to_pylist()
    for row in rows:
        want = sources[row["source_file"]].slice(row["source_row"], 1).to_pylist()[0]
        for name in rejected.column_names[:8]:
            # the input row's value (repr: NaN equals NaN), null where its file has no such column
            assert repr(row[name]) == repr(want.get(name)), (row["reason"], name, row[name], want.get(name))
        if row["reason"].startswith("model_error:"):
            assert "poisoned id in the batch" in row["error"]
        else:
            assert row["error"] is None                                     # nothing failed restoring
    places = sorted((os.path.basename(r["source_file"]), r["source_row"]) for r in rows)
    assert places == sorted([("a.parquet", i) for i in [5, 300, 301, 302, 303, 304, 305, 306, 307, 658]]
                            + [("b.parquet", i) for i in [0, 1, 2, 3, 4, 5, 6, 7, 507]])
    ROWS_CHECKED.append(f"rejected rows with their input columns: {len(rows)} rows compared with their source row")
