"""A value that does not fit the model input costs its row, never the job.

A ``list<uint64>`` id of 2**64 - 1 (or 2**63) for an int64 input, and a float64 value beyond
float32's range for a float32 input, are rejected as ``out_of_range:<column>`` like every other
bad value, with their file and row; the other rows are exported.
"""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import DENSE_DIM, tiny_config, tiny_model
from rel_support import assert_accounted, rejected_table

pytestmark = pytest.mark.timeout(180)


def test_values_that_do_not_fit_the_input_dtype_are_rejected_as_out_of_range(tmp_path):
    rng = np.random.default_rng(5)
    n = 300
    dense = [list(map(float, row)) for row in rng.normal(size=(n, DENSE_DIM))]
    ids = [[int(v) for v in rng.integers(1, 10_000, size=3)] for _ in range(n)]
    ids[10] = [5, 2 ** 64 - 1]          # does not fit int64
    ids[20] = [2 ** 63]                 # the smallest that does not fit
    ids[30] = [2 ** 63 - 1]             # the largest that does: exported
    dense[40][3] = 1e39                 # beyond float32's range
    dense[50][0] = -3.5e38
    dense[60][1] = 1e6                  # within float32's range: exported
    dense[70][2] = float("inf")         # non-finite, as before
    table = pa.table({"user_id": pa.array(np.arange(1, n + 1), pa.int64()),
                      "dense": pa.array(dense, pa.list_(pa.float64())),
                      "sparse_ids": pa.array(ids, pa.list_(pa.uint64()))})
    (tmp_path / "in").mkdir()
    pq.write_table(table, str(tmp_path / "in" / "users.parquet"), row_group_size=128)
    out = tmp_path / "out"
    manifest = run_export(preflight(tiny_config(str(tmp_path / "in" / "*.parquet"), tiny_model(), str(out), num_shards=2,
                                      max_reject_fraction=0.1)))
    assert manifest["rejected_by_reason"] == {"out_of_range:dense": 2, "out_of_range:sparse_ids": 2,
                                              "non_finite:dense": 1}
    rejected = rejected_table(str(out), manifest).to_pydict()
    assert sorted(zip(rejected["source_row"], rejected["reason"])) == [
        (10, "out_of_range:sparse_ids"), (20, "out_of_range:sparse_ids"), (40, "out_of_range:dense"),
        (50, "out_of_range:dense"), (70, "non_finite:dense")]
    assert set(rejected["source_file"]) == {str(tmp_path / "in" / "users.parquet")}
    assert manifest["rows_written"] == n - 5
    records = assert_accounted(str(out), manifest)
    assert sum(len(r) for r in records.values()) == n - 5
