"""Rejected rows get back the input columns the job did not read (transforms.rejected_columns)."""
import datetime
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.rejected import ADDED_COLUMNS, rejected_layout, union_schema, unread_columns
from transforms.rejected_columns import read_batches, restore_columns

READ = pa.schema([("user_id", pa.int64()), ("dense", pa.list_(pa.float32()))])
ADDED = [f.name for f in ADDED_COLUMNS]


def write(path, table, row_group_size=4):
    pq.write_table(table, str(path), row_group_size=row_group_size)
    meta = pq.ParquetFile(str(path)).metadata
    return str(path), tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))


def base(keys):
    keys = list(keys)
    return {"user_id": pa.array(keys, pa.int64()),
            "dense": pa.array([[float(k), 1.0] for k in keys], pa.list_(pa.float32()))}


def file_a(tmp_path, n=10):
    """user_id, dense, age int32 (some null), tags list<string>, joined timestamp; row groups of 4."""
    cols = base(range(100, 100 + n))
    cols["age"] = pa.array([None if i % 4 == 3 else 20 + i for i in range(n)], pa.int32())
    cols["tags"] = pa.array([[f"t{i}"] * (i % 3) for i in range(n)], pa.list_(pa.string()))
    cols["joined"] = pa.array([datetime.datetime(2024, 1, 1 + i) for i in range(n)], pa.timestamp("us"))
    return write(tmp_path / "a.parquet", pa.table(cols))


def file_b(tmp_path, n=6):
    """Another column order, age int64, no tags or joined, a plan column of its own."""
    cols = base(range(200, 200 + n))
    table = pa.table({"age": pa.array([40 + i for i in range(n)], pa.int64()), **cols,
                      "plan": pa.array([f"p{i}" for i in range(n)])})
    return write(tmp_path / "b.parquet", table)


def rejected(rows, read=READ):
    """Rejected rows as they reach the restore step, from [(path, row, key)]: dense, reason, error dummies."""
    n = len(rows)
    return pa.table({"user_id": pa.array([k for _, _, k in rows], pa.int64()),
                     "dense": pa.array([[float(k or 0), 1.0] for _, _, k in rows], pa.list_(pa.float32())),
                     "reason": pa.array(["some_reason"] * n), "source_file": pa.array([p for p, _, _ in rows]),
                     "source_row": pa.array([r for _, r, _ in rows], pa.int64()),
                     "error": pa.array([None] * (n - 1) + ["model says no"], pa.string())})


def unread_of(*paths):
    union, _ = union_schema([(p, pq.read_schema(p)) for p in paths])
    return unread_columns(READ, union)


def test_layout_is_the_union_of_the_input_columns_in_order_then_the_added_columns(tmp_path):
    a, _ = file_a(tmp_path)
    b, _ = file_b(tmp_path)
    union, conflicts = union_schema([(a, pq.read_schema(a)), (b, pq.read_schema(b))])
    assert union.names == ["user_id", "dense", "age", "tags", "joined", "plan"]
    assert union.field("age").type == pa.int32()                          # the first file's type wins
    assert conflicts == {"age": [(b, pa.int64())]}
    assert rejected_layout(READ, union).names == ["user_id", "dense", "age", "tags", "joined", "plan"] + ADDED
    assert unread_columns(READ, union).names == ["age", "tags", "joined", "plan"]
    # an input column named like an added column is not restored; DataRecord input: the columns read
    clash = union.append(pa.field("error", pa.string()))
    assert rejected_layout(READ, clash).names == rejected_layout(READ, union).names
    assert rejected_layout(READ, None).names == ["user_id", "dense"] + ADDED
    assert unread_columns(READ, None).names == []


@pytest.mark.parametrize("budget", [64 << 20, 1])  # all columns at once, or one column per read
def test_restores_each_rows_columns_from_its_file_nulls_where_the_file_lacks_one(tmp_path, budget):
    a, groups_a = file_a(tmp_path)
    b, groups_b = file_b(tmp_path)
    assert groups_a == (4, 4, 2)
    unread = unread_of(a, b)
    # rows of both files interleaved, several per row group, out of order
    rows = [(a, 9, 109), (b, 4, 204), (a, 1, 101), (a, 7, 107), (b, 0, 200), (a, 3, 103)]
    table = restore_columns(rejected(rows), unread, "user_id", {a: groups_a, b: groups_b}, budget=budget)
    assert table.column_names == ["user_id", "dense", "reason", "source_file", "source_row", "error",
                                  "age", "tags", "joined", "plan"]
    sources = {a: pq.read_table(a), b: pq.read_table(b)}
    for got in table.to_pylist():
        want = sources[got["source_file"]].slice(got["source_row"], 1).to_pylist()[0]
        assert got["user_id"] == want["user_id"]
        for name in unread.names:
            assert got[name] == want.get(name), (got, name)              # None where the file lacks it
    assert table.column("age").type == pa.int32()                       # b's int64 ages cast to the first type
    assert table.column("error").to_pylist() == [None] * 5 + ["model says no"]   # nothing to note


def test_a_value_that_does_not_cast_is_null_and_noted(tmp_path):
    a, groups_a = file_a(tmp_path)
    cols = base(range(300, 303))
    cols["age"] = pa.array(["old", "young", "42"])
    c, groups_c = write(tmp_path / "c.parquet", pa.table(cols))
    unread = unread_of(a, c)
    table = restore_columns(rejected([(c, 0, 300), (a, 2, 102)]), unread, "user_id", {a: groups_a, c: groups_c})
    rows = table.to_pylist()
    assert rows[0]["age"] is None and rows[1]["age"] == 22
    assert rows[0]["error"].startswith("input columns not restored: column 'age' is string in ") and \
        "does not cast to int32" in rows[0]["error"]
    assert rows[1]["error"] == "model says no"


def test_a_changed_or_missing_file_keeps_the_row_with_the_columns_read_and_says_why(tmp_path):
    a, groups_a = file_a(tmp_path)
    b, groups_b = file_b(tmp_path)
    unread = unread_of(a, b)
    gone = str(tmp_path / "gone.parquet")
    write(gone, pa.table(base([7])))
    os.remove(gone)
    # a: rewritten with the same row groups, but row 5 now holds another key
    table = pq.read_table(a)
    keys = table.column("user_id").to_pylist()
    keys[5] = 999
    write(tmp_path / "a.parquet", table.set_column(0, "user_id", pa.array(keys, pa.int64())))
    # b: rewritten with other row groups
    write(tmp_path / "b.parquet", pq.read_table(b), row_group_size=2)
    rows = [(a, 5, 105), (a, 6, 106), (b, 1, 201), (gone, 0, 7), ("elsewhere.parquet", 0, 8)]
    out = restore_columns(rejected(rows), unread, "user_id", {a: groups_a, b: groups_b, gone: (1,)})
    assert out.num_rows == 5 and out.column("user_id").to_pylist() == [105, 106, 201, 7, 8]
    got = out.to_pylist()
    assert got[0]["age"] is None and got[0]["tags"] is None
    assert got[0]["error"] == (f"input columns not restored: row 5 of {a} now holds key 999, not 105 "
                               "(the file changed since it was read)")
    assert got[1]["age"] == 26 and got[1]["error"] is None               # the rows around it are still right
    assert got[2]["age"] is None and got[2]["error"] == (
        f"input columns not restored: {b} no longer holds the rows that were read (row groups of [4, 2] rows "
        "at launch, [2, 2, 2] now)")
    assert got[3]["error"].startswith(f"input columns not restored: {gone} cannot be read back: ")
    assert got[4]["error"] == ("model says no; input columns not restored: elsewhere.parquet is not one of the "
                               "input files")


def test_read_batches_keep_the_order_within_the_budget():
    sizes = {"a": 10, "b": 30, "c": 100, "d": 5, "e": 5}
    assert read_batches(list(sizes), sizes, 40) == [["a", "b"], ["c"], ["d", "e"]]
    assert read_batches(list(sizes), sizes, 1 << 20) == [list(sizes)]
    assert read_batches([], sizes, 40) == []
