"""Row validation, batching and Arrow -> numpy conversion of the model inputs."""
import numpy as np
import pyarrow as pa
import pytest
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline_fixtures import BAD_ROW_REASONS, DENSE_DIM, IDS_LEN, bad_rows, padded_ids, user_table
from transforms.arrow_columns import column_to_input, pad_or_truncate, table_to_feeds
from transforms.specs import KIND_FIXED, KIND_PADDED, KIND_SCALAR, InputSpec, PartitionSpec
from transforms.rejected import (REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_ROW_TAG, SOURCE_TAG,
                                 tag_rows)
from transforms.validate import ValidateAndBatch, ValidationRules, row_problems

FN_API = "FnApiRunner"  # TestPipeline ignores --runner in argv
INPUTS = (InputSpec("dense", "dense", "float32", KIND_FIXED, DENSE_DIM),
          InputSpec("sparse_ids", "sparse_ids", "int64", KIND_PADDED, IDS_LEN, 0))
SCHEMA = pa.schema([("user_id", pa.int64()), ("dense", pa.list_(pa.float32())),
                    ("sparse_ids", pa.list_(pa.int64()))])


def rules(partition=PartitionSpec(4), schema=SCHEMA, inputs=INPUTS):
    return ValidationRules("user_id", inputs, partition, schema)


def test_each_bad_row_gets_its_reason_and_good_rows_pass():
    table = pa.concat_tables([user_table(np.arange(5), 0), bad_rows(100)]).select(SCHEMA.names)
    checks = rules().checks()
    codes = row_problems(table, checks)
    reasons = [None if c == 0 else checks[c - 1][0] for c in codes]
    assert reasons[:5] == [None] * 5
    # zero_row is a valid input (its embedding is what fails, later, in the embed step)
    expected = [r if name != "zero_row" else None for name, r in BAD_ROW_REASONS.items()]
    assert reasons[5:] == expected


def test_partition_id_and_narrowing_checks():
    table = pa.table({"user_id": pa.array([1, 2, 3, 4], pa.int64()),
                      "pid": pa.array([0, 3, None, -1], pa.int32()),
                      "x": pa.array([1, 2**40, 3, 4], pa.int64())})
    schema = table.schema
    r = ValidationRules("user_id", (InputSpec("x", "x", "int32", KIND_SCALAR),), PartitionSpec(3, "pid"), schema)
    checks = r.checks()
    codes = row_problems(table, checks)
    assert [None if c == 0 else checks[c - 1][0] for c in codes] == [
        None, "bad_partition_id", "null_partition_id", "bad_partition_id"]
    codes = row_problems(table.set_column(1, "pid", pa.array([0, 1, 2, 0], pa.int32())), checks)
    assert [None if c == 0 else checks[c - 1][0] for c in codes] == [None, "out_of_range:x", None, None]


def test_pad_or_truncate_matches_a_python_loop():
    rng = np.random.default_rng(3)
    lists = [list(rng.integers(1, 100, size=rng.integers(0, 9))) for _ in range(200)]
    lengths = np.array([len(x) for x in lists])
    flat = np.concatenate([np.array(x, np.int64) for x in lists])
    out, truncated = pad_or_truncate(flat, lengths, 5, -7, np.dtype(np.int64))
    np.testing.assert_array_equal(out, padded_ids(lists, 5, -7))
    assert truncated == int((lengths > 5).sum())


@pytest.mark.parametrize("list_type", [pa.list_(pa.int64()), pa.large_list(pa.int64())])
def test_column_to_input_on_sliced_list_arrays(list_type):
    lists = [[1, 2, 3], [], [4], [5, 6, 7, 8, 9], [10, 11]]
    column = pa.array(lists, list_type).slice(1, 4)  # slices keep a nonzero offset into the values
    spec = InputSpec("ids", "ids", "int32", KIND_PADDED, 3, 0)
    out, truncated = column_to_input(column, spec)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, padded_ids(lists[1:], 3, 0))
    assert truncated == 1


def test_column_to_input_fixed_and_fixed_size_list_and_scalar():
    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    plain = pa.array(values.tolist(), pa.list_(pa.float64()))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3)
    spec = InputSpec("d", "d", "float32", KIND_FIXED, 3)
    for column in (plain, fixed, pa.chunked_array([plain.slice(0, 1), plain.slice(1)])):
        out, _ = column_to_input(column, spec)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, values.astype(np.float32))
    out, _ = column_to_input(pa.array([1, 2, 3], pa.int32()), InputSpec("s", "s", "float32", KIND_SCALAR))
    np.testing.assert_array_equal(out, np.array([1, 2, 3], np.float32))


def test_table_to_feeds_counts_truncations():
    table = user_table(np.arange(50), 1)
    feeds, truncated = table_to_feeds(table, INPUTS)
    assert feeds["dense"].shape == (50, DENSE_DIM) and feeds["sparse_ids"].shape == (50, IDS_LEN)
    lists = table.column("sparse_ids").to_pylist()
    np.testing.assert_array_equal(feeds["sparse_ids"], padded_ids(lists))
    assert truncated == {"sparse_ids": sum(len(x) > IDS_LEN for x in lists)}


def test_validate_and_batch_in_a_pipeline():
    # a.parquet's table is a row group starting at row 400 of its file; b.parquet's at row 0
    t1 = tag_rows(pa.concat_tables([user_table(np.arange(0, 25), 0), bad_rows(1000)]), 400)
    t2 = tag_rows(user_table(np.arange(25, 32), 1), 0)
    with BeamTestPipeline(runner=FN_API) as p:
        out = (p | beam.Create([("a.parquet", t1), ("b.parquet", t2)])
               | ValidateAndBatch(rules(), batch_size=10))
        sizes = out.batches | "Sizes" >> beam.Map(lambda t: (t.num_rows, t.column(SOURCE_TAG).cast(pa.string())[0].as_py()))
        keys = out.batches | "Keys" >> beam.FlatMap(lambda t: t.column("user_id").to_pylist())
        # good rows keep their index in the file: key k < 25 of a.parquet is row 400 + k, 1007 is row 432
        places = out.batches | "Places" >> beam.FlatMap(lambda t: zip(
            t.column("user_id").to_pylist(), t.column(SOURCE_ROW_TAG).to_pylist()))
        rejected = out.rejected | "Reasons" >> beam.FlatMap(
            lambda t: zip(t.column(REASON_COLUMN).to_pylist(), t.column(SOURCE_COLUMN).to_pylist(),
                          t.column(SOURCE_ROW_COLUMN).to_pylist()))
        columns = out.rejected | "Columns" >> beam.Map(lambda t: t.column_names)
        read = out.rows_read | beam.CombineGlobally(sum)
        # batches never span input tables: 26 good rows of a.parquet -> 10, 10, 6; 7 of b.parquet -> 7
        assert_that(sizes, equal_to([(10, "a.parquet"), (10, "a.parquet"), (6, "a.parquet"), (7, "b.parquet")]),
                    label="batch sizes")
        assert_that(keys, equal_to(list(range(32)) + [1007]), label="good keys")
        assert_that(places, equal_to([(k, 400 + k) for k in range(25)] + [(1007, 432)]
                                     + [(k, k - 25) for k in range(25, 32)]), label="good rows' places")
        assert_that(rejected, equal_to([(r, "a.parquet", 425 + i) for i, (n, r) in enumerate(BAD_ROW_REASONS.items())
                                        if n != "zero_row"]), label="rejected")
        assert_that(columns, equal_to([["user_id", "dense", "sparse_ids", REASON_COLUMN, SOURCE_COLUMN,
                                        SOURCE_ROW_COLUMN]]), label="rejected columns")
        assert_that(read, equal_to([25 + len(BAD_ROW_REASONS) + 7]), label="rows read")


def test_validation_refuses_a_table_without_row_indices():
    with pytest.raises(ValueError, match=r"a.parquet: the table read has no __source_row__ column"):
        with BeamTestPipeline(runner=FN_API) as p:
            _ = p | beam.Create([("a.parquet", user_table(np.arange(3), 0))]) | ValidateAndBatch(rules(), 10)


def test_tag_rows_from_a_first_row_or_indices():
    table = user_table(np.arange(4), 0)
    assert tag_rows(table, 7).column(SOURCE_ROW_TAG).to_pylist() == [7, 8, 9, 10]
    assert tag_rows(table, np.array([3, 5, 6, 9], np.int32)).column(SOURCE_ROW_TAG).type == pa.int64()
    with pytest.raises(ValueError, match="3 row indices for a table of 4 rows"):
        tag_rows(table, np.arange(3))


def test_rules_checks_are_deduplicated_for_a_column_feeding_two_inputs():
    inputs = INPUTS + (InputSpec("ids2", "sparse_ids", "int64", KIND_PADDED, 2, 0),)
    reasons = [r for r, _ in rules(inputs=inputs).checks()]
    assert len(reasons) == len(set(reasons))
