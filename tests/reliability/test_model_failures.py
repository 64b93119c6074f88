"""Guarantee 2: a model that raises on a batch costs only the rows it fails on.

The batch is bisected (transforms.isolate) until the failing rows stand alone; only they are
rejected, with the exception text. Above output.max_reject_fraction the job fails naming the
counts and the commonest reasons, and writes no _SUCCESS. Pipeline tests use a real SavedModel
that raises InvalidArgumentError on any batch holding a poisoned id.
"""
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import bad_rows, model_outputs, padded_ids, tiny_config
from rel_support import FIGURES, POISON_ID, assert_accounted, poison_model, poisoned_users, rejected_table
from transforms.errors import ExportError
from transforms.isolate import ModelFailureIsolation, TooManyFailures, isolate_failures
from transforms.rejected import ERROR_COLUMN, SOURCE_TAG, tag_source, with_error_column
from twml.decode import decode_embeddings
from twml.feature_ids import feature_id

pytestmark = pytest.mark.timeout(180)

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
ROWS_CHECKED = FIGURES.setdefault("rows checked end to end (model failures)", [])


def fake_model(bad_rows, seen_calls):
    """run(start, stop) over rows 0..n-1: output row i is i*2, raising if a bad row is in range."""
    bad = set(bad_rows)

    def run(start, stop):
        seen_calls.append((start, stop))
        hit = sorted(bad.intersection(range(start, stop)))
        if hit:
            raise ValueError(f"bad rows {hit}")
        return {"y": np.arange(start, stop) * 2.0, "z": np.ones((stop - start, 3))}
    return run


# -- the pure algorithm --------------------------------------------------------------------------

def bisection_bound(n, k):
    """Most calls bisection can make: the whole batch, then both halves of every range that holds
    a failing row, at most min(k, 2^d) of them at depth d (about 2k*log2(n/k) + 4k)."""
    depth = math.ceil(math.log2(n)) if n > 1 else 0
    return 1 + 2 * sum(min(k, 2 ** d) for d in range(depth))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), max_size=12))))
def test_bisection_isolates_exactly_the_failing_rows(case):
    n, bad = case
    calls = []
    result = isolate_failures(fake_model(bad, calls), n)
    assert [f.row for f in result.failures] == sorted(bad)
    assert all(f.kind == "ValueError" and "bad rows" in f.error for f in result.failures)
    good = [i for i in range(n) if i not in bad]
    assert result.rows.tolist() == good                               # every other row, in order
    if good:
        np.testing.assert_array_equal(result.outputs["y"], np.array(good) * 2.0)
        assert result.outputs["z"].shape == (len(good), 3)
    else:
        assert result.outputs == {}                                    # no row ran
    assert result.calls == len(calls) <= bisection_bound(n, len(bad))


def test_bisection_cost_against_whole_batch_rejection():
    # One poisoned row in a batch of 4096: RunInference would lose 4096 rows; here 1, in 25 calls.
    calls = []
    result = isolate_failures(fake_model([1234], calls), 4096)
    assert [f.row for f in result.failures] == [1234] and len(result.rows) == 4095
    assert result.calls == 25          # 2 calls per level, 12 levels, plus the whole batch


def test_first_error_skips_the_whole_batch_call_and_single_rows_fail_directly():
    calls = []
    result = isolate_failures(fake_model([0], calls), 1, first_error=ValueError("bad rows [0]"))
    assert calls == [] and [f.row for f in result.failures] == [0] and len(result.rows) == 0
    result = isolate_failures(fake_model([3], calls), 8, first_error=ValueError("whole batch"))
    assert (0, 8) not in calls and [f.row for f in result.failures] == [3]


def test_a_failure_that_does_not_reproduce_rejects_nothing():
    flaky = {"left": 1}

    def run(start, stop):
        if flaky["left"]:
            flaky["left"] -= 1
            raise RuntimeError("transient")
        return {"y": np.zeros(stop - start)}

    result = isolate_failures(run, 10)
    assert result.failures == [] and result.rows.tolist() == list(range(10))


def test_budget_stops_bisection_early():
    calls = []
    with pytest.raises(TooManyFailures, match=r"4 rows failed alone, more than the budget of 3") as err:
        isolate_failures(fake_model(range(1000), calls), 1000, max_failures=3)
    assert len(err.value.failures) == 4 and len(calls) < 30


def test_a_model_returning_the_wrong_row_count_is_an_error_not_a_bad_row():
    with pytest.raises(ValueError, match="has 1 rows for a batch of 2"):
        isolate_failures(lambda a, b: {"y": np.zeros(1)}, 2)


def test_isolation_builds_rejected_rows_with_columns_reason_and_error():
    table = tag_source(pa.table({"user_id": pa.array([10, 11, 12, 13], pa.int64()),
                                 "x": pa.array([1.0, -1.0, 2.0, -2.0])}), "in/a.parquet", 20)
    feeds = {"x": np.array([1.0, -1.0, 2.0, -2.0])}

    def run(part):
        if (part["x"] < 0).any():
            raise ArithmeticError("negative input")
        return {"y": part["x"] * 10}

    iso = ModelFailureIsolation(max_failed_rows=5, model="m")
    outputs, kept_feeds, kept, rejected = iso.split(run, feeds, table, ArithmeticError("negative input"))
    assert kept.column("user_id").to_pylist() == [10, 12] and SOURCE_TAG in kept.column_names
    np.testing.assert_array_equal(outputs["y"], [10.0, 20.0])
    np.testing.assert_array_equal(kept_feeds["x"], [1.0, 2.0])
    assert rejected.column_names == ["user_id", "x", "reason", "source_file", "source_row", ERROR_COLUMN]
    assert rejected.to_pylist() == [
        {"user_id": 11, "x": -1.0, "reason": "model_error:ArithmeticError", "source_file": "in/a.parquet",
         "source_row": 21, "error": "ArithmeticError: negative input"},
        {"user_id": 13, "x": -2.0, "reason": "model_error:ArithmeticError", "source_file": "in/a.parquet",
         "source_row": 23, "error": "ArithmeticError: negative input"}]
    assert iso.failed_rows == 2
    with pytest.raises(ExportError, match=r"m failed on 6 rows \(each run alone after splitting its batch\), "
                                          r"more than the 5 rows .* commonest errors: 2 x ArithmeticError"):
        for _ in range(3):
            iso.split(run, feeds, table, ArithmeticError("negative input"))
    assert with_error_column(pa.table({"a": [1]})).column(ERROR_COLUMN).null_count == 1


# -- the job, with a real SavedModel that raises --------------------------------------------------

@pytest.fixture(scope="module")
def poisoned_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("poison")
    keys = np.arange(5000, 6500, dtype=np.int64)
    poisoned = [0, 130, 131, 700, 1499]           # batches of 128: rows 130 and 131 share one
    pq.write_table(poisoned_users(keys, poisoned, seed=3), str(root / "u.parquet"), row_group_size=500)
    return root, keys, poisoned


def test_only_the_poisoned_rows_are_rejected(poisoned_input, tmp_path):
    root, keys, poisoned = poisoned_input
    out = str(tmp_path / "out")
    manifest = run_export(preflight(tiny_config(str(root / "*.parquet"), poison_model(), out, num_shards=4)))
    assert manifest["rows_read"] == len(keys)
    assert manifest["rows_rejected"] == len(poisoned)
    assert manifest["rejected_by_reason"] == {"model_error:InvalidArgumentError": len(poisoned)}
    records = assert_accounted(out, manifest)
    rejected = rejected_table(out, manifest)
    assert sorted(rejected.column("user_id").to_pylist()) == sorted(keys[poisoned].tolist())
    assert all("poisoned id in the batch" in text for text in rejected.column("error").to_pylist())
    assert all(ids[0] == POISON_ID for ids in rejected.column("sparse_ids").to_pylist())
    # Every other user is exported, with the embedding TF computes for it alone.
    table = pq.read_table(str(root / "u.parquet"))
    good = [i for i in range(len(keys)) if i not in poisoned]
    dense = np.array(table.column("dense").to_pylist(), np.float32)[good]
    ids = padded_ids([table.column("sparse_ids").to_pylist()[i] for i in good])
    want = dict(zip(keys[good].tolist(), model_outputs(poison_model(), dense, ids)["embedding"]))
    got = {}
    for recs in records.values():
        k, emb = decode_embeddings(recs, KEY_ID, EMB_ID)
        got.update(zip(k.tolist(), emb))
    assert sorted(got) == sorted(want)
    for key, vector in got.items():
        np.testing.assert_allclose(vector, want[key], rtol=1e-5, atol=1e-6)
    ROWS_CHECKED.append(f"poisoned input: {len(got)} exported rows compared with TF, {len(poisoned)} rejected")


def test_two_runs_with_a_failing_model_give_identical_shards(poisoned_input, tmp_path):
    root, _, _ = poisoned_input
    manifests = [run_export(preflight(tiny_config(str(root / "*.parquet"), poison_model(), str(tmp_path / f"o{i}"),
                                        num_shards=4))) for i in range(2)]
    for entry in manifests[0]["shards"]:
        a, b = (open(os.path.join(str(tmp_path / f"o{i}"), entry["file"]), "rb").read() for i in range(2))
        assert a == b


def test_over_the_reject_fraction_the_job_fails_with_counts_and_reasons(poisoned_input, tmp_path):
    # 5 model failures (within the early-stop budget of 7) plus 8 invalid rows: 13 > 0.5% of 1508.
    root, keys, poisoned = poisoned_input
    os.makedirs(tmp_path / "in")
    table = pq.read_table(str(root / "u.parquet"))
    pq.write_table(pa.concat_tables([table, bad_rows(10 ** 12)]), str(tmp_path / "in" / "u.parquet"))
    out = tmp_path / "out"
    cfg = tiny_config(str(tmp_path / "in" / "*.parquet"), poison_model(), str(out), num_shards=4,
                      max_reject_fraction=0.005)
    with pytest.raises(ExportError, match=r"13 of 1508 rows rejected \(0.86%\), more than output.max_reject_fraction "
                                          r"0.005; commonest reasons: model_error:InvalidArgumentError: 5, "
                                          r"non_finite:dense: 1, .*, and 4 more reasons; the rejected rows are in .*_rejected"):
        run_export(preflight(cfg))
    assert not (out / "_SUCCESS").exists() and not (out / "_MANIFEST.json").exists()
    assert not [n for n in os.listdir(out) if n.startswith("part-")]
    (run_dir,) = os.listdir(out / "_rejected")                   # the rejected rows, for inspection
    assert pq.read_table(str(out / "_rejected" / run_dir)).num_rows == 13


def test_a_model_that_always_fails_stops_the_job_early(poisoned_input, tmp_path):
    root, keys, _ = poisoned_input
    out = tmp_path / "out"
    cfg = tiny_config(str(root / "*.parquet"), poison_model(always=True), str(out), num_shards=4)
    with pytest.raises(ExportError, match=r"failed on 16 rows \(each run alone after splitting its batch\), more "
                                          r"than the 15 rows that output.max_reject_fraction allows .* stopped early; "
                                          r"commonest errors: 16 x InvalidArgumentError.*this model always fails"):
        run_export(preflight(cfg))
    assert not out.exists() or not [n for n in os.listdir(out) if not n.startswith("_temporary")]
