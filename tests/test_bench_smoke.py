"""The benchmark harness at tiny sizes, so it cannot rot: correct pieces and a complete JSON result.

No timing thresholds here: speed is judged by the ratios benchmarks/run.py reports.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks import data
from benchmarks.scaling import marginal_rate, run_child

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _decode_tfrecord_dir(pattern):
    """{key: (embedding float32, record length)} of every DataRecord in the files, via thriftpy2."""
    from twml.feature_ids import feature_id
    from twml.io.tfrecord import read_tfrecords
    from twml.schema import data_thrift, deserialize

    key_fid, emb_fid = feature_id("meta.user_id"), feature_id("output")
    out = {}
    for path in sorted(glob.glob(pattern)):
        for raw in read_tfrecords(path):
            record = deserialize(data_thrift.DataRecord, raw)
            assert set(record.discreteFeatures) == {key_fid} and set(record.tensors) == {emb_fid}
            tensor = record.tensors[emb_fid].rawTypedTensor
            key = record.discreteFeatures[key_fid]
            assert key not in out, f"user {key} written twice"
            out[key] = (np.frombuffer(tensor.content, "<f4"), len(raw), list(tensor.shape))
    return out


def test_segments_make_every_size_a_prefix():
    counts = data._segments([3000, 6000, 1000], rows_per_file=1500)
    assert sum(counts) == 6000 and max(counts) <= 1500
    ends = set(np.cumsum(counts).tolist())
    assert {1000, 3000, 6000} <= ends
    with pytest.raises(ValueError, match="must be > 0"):
        data._segments([0, 10], 5)


def test_prepare_inputs_nests_the_runs(tmp_path):
    patterns = data.prepare_inputs(str(tmp_path), [1000, 2500], "small", rows_per_file=600)
    small = pq.read_table(glob.glob(patterns[1000]))
    big = pq.read_table(sorted(glob.glob(patterns[2500])))
    assert small.num_rows == 1000 and big.num_rows == 2500
    # The small run's rows are exactly the first rows of the big run.
    first = pq.read_table(sorted(glob.glob(patterns[2500]))[:len(glob.glob(patterns[1000]))])
    assert sorted(first.column("user_id").to_pylist()) == sorted(small.column("user_id").to_pylist())
    assert len(set(big.column("user_id").to_pylist())) == 2500
    shape = data.model_kwargs("small")
    lengths = pc.list_value_length(big.column("dense")).to_numpy()
    assert (lengths == shape["dense_dim"]).all()


def test_padded_ids_truncates_and_pads():
    lists = pa.array([[5, 6, 7], [], [1, 2, 3, 4, 9], [8]], pa.list_(pa.int64()))
    np.testing.assert_array_equal(data.padded_ids(lists, 4),
                                  [[5, 6, 7, 0], [0, 0, 0, 0], [1, 2, 3, 4], [8, 0, 0, 0]])
    np.testing.assert_array_equal(data.padded_ids(lists.slice(2, 2), 2), [[1, 2], [8, 0]])


def test_marginal_rate():
    assert marginal_rate(1000, 3.0, 2000, 5.0) == 500.0
    assert marginal_rate(1000, 3.0, 2000, 2.5) is None  # noise made the bigger run faster


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("bench"))
    patterns = data.prepare_inputs(work, [1500, 3000], "small")
    return work, patterns, data.prepare_model(work, "small")


def test_naive_job_writes_the_models_embeddings_in_the_exports_record_bytes(small_setup):
    import tensorflow as tf

    from twml.encode import encode_data_records
    from twml.feature_ids import feature_id

    work, patterns, model = small_setup
    shape = data.model_kwargs("small")
    run = run_child("naive", ["--input", patterns[3000], "--model", model, "--output",
                              os.path.join(work, "naive", "part"), "--batch-size", "512",
                              "--sparse-length", str(shape["sparse_length"]), "--num-shards", "3",
                              "--runner-option=--direct_running_mode=in_memory",
                              "--runner-option=--direct_num_workers=1"], os.path.join(work, "naive.log"))
    assert run.result["rows_written"] == 3000 and run.result["seconds"] > 0 and run.peak_rss_mb > 50
    files = sorted(glob.glob(os.path.join(work, "naive", "part-*.tfrecord")))
    assert [os.path.basename(f) for f in files] == [f"part-0000{i}-of-00003.tfrecord" for i in range(3)]
    written = _decode_tfrecord_dir(os.path.join(work, "naive", "part-*.tfrecord"))
    users = pq.read_table(sorted(glob.glob(patterns[3000])))
    keys = users.column("user_id").to_numpy()
    assert sorted(written) == sorted(keys.tolist())
    dense, sparse = data.load_arrays(patterns[3000], shape["dense_dim"], shape["sparse_length"])
    call = tf.saved_model.load(model).signatures["serving_default"]
    want = call(dense=tf.constant(dense), sparse_ids=tf.constant(sparse))["embedding"].numpy()
    got = np.stack([written[k][0] for k in keys.tolist()])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Same bytes per record as the export's batch encoder (docs/FORMAT.md section 3).
    encoded = encode_data_records(keys[:5], feature_id("meta.user_id"), [(feature_id("output"), got[:5])])
    from twml.io.tfrecord import read_tfrecords
    all_raw = {bytes(r) for f in files for r in read_tfrecords(f)}
    assert all(encoded[i] in all_raw for i in range(5))


@pytest.mark.parametrize("intra", [0, 1])
def test_limit_child_times_both_sizes(small_setup, intra):
    from transforms.embed import concurrent_model_calls

    work, patterns, model = small_setup
    shape = data.model_kwargs("small")
    run = run_child("limit", ["--model", model, "--input", patterns[3000], "--rows", "1500", "--rows", "3000",
                              "--batch-size", "256", "--dense-dim", str(shape["dense_dim"]),
                              "--sparse-length", str(shape["sparse_length"]), "--repeats", "1",
                              "--intra-op-threads", str(intra)],
                    os.path.join(work, f"limit-{intra}.log"))
    assert set(run.result["runs"]) == {"1500", "3000"}
    for windows in run.result["runs"].values():
        assert len(windows) == 1 and all(w["wall_s"] > 0 and w["cpu_s"] > 0 for w in windows)
    assert run.result["batch_size"] == 256
    # 0: one loop on TF's default pools; 1: one single-threaded loop per core, as the export runs.
    assert run.result["loops"] == concurrent_model_calls(intra) == (1 if intra == 0 else len(os.sched_getaffinity(0)))
    if intra:
        assert run.result["tf_intra_op_threads"] == intra


def test_encode_benchmark_small():
    from benchmarks.encode_bench import run_encode_benchmark

    result = run_encode_benchmark(3000, batch=512, dim=8, sample=300, rounds=2)
    assert result["same_bytes"] and result["framed_same_bytes"]
    assert result["rounds"] == 2 and result["thriftpy2_sample_rows"] == 300
    assert result["encode_rows_per_s"] > 0 and result["encode_vs_thriftpy2"] > 0


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_write_step_times_partition_and_write_alone(fmt):
    """The tool runs (numbers at this size are noise): one marginal figure a round, summarized."""
    from benchmarks.write_step import measure

    result = measure(shards=4, batch_size=256, dim=8, fmt_name=fmt, batches=3, rounds=2)
    figure = result["core_us_per_row"]
    assert (result["format"], len(figure["values"])) == (fmt, 2)
    assert figure["low"] <= figure["median"] <= figure["high"]


def test_child_failure_shows_the_log(tmp_path):
    from benchmarks.scaling import ChildFailed

    with pytest.raises(ChildFailed, match="(?s)exited with 2.*required: --model"):
        run_child("limit", ["--input", "x"], str(tmp_path / "bad.log"))


def test_estimates_are_medians_with_spreads_and_pairs_are_marginal():
    from benchmarks import estimate

    summary = estimate.summarize([100.0, 110.0, None, 90.0])
    assert summary["rows_per_s"] == 100.0 and summary["n"] == 3
    assert summary["range"] == pytest.approx(0.2) and (summary["min"], summary["max"]) == (90.0, 110.0)
    assert summary["iqr"] == pytest.approx(0.1)  # interquartile range: half the range of three
    # Three estimates bracket the median only 75% of the time: the interval is their range.
    assert summary["interval"] == {"low": 90.0, "high": 110.0, "coverage": 0.75}
    assert summary["spread"] == pytest.approx(0.2)
    # The spread is the median's interval, which narrows as estimates accumulate; the iqr, one
    # estimate's scatter, does not.
    noisy = [100.0 + 20.0 * ((7 * i) % 11 - 5) / 5 for i in range(44)]  # 80..120, evenly
    few, many = estimate.summarize(noisy[:6]), estimate.summarize(noisy)
    assert few["spread"] == pytest.approx(few["range"]) and few["interval"]["coverage"] == pytest.approx(0.96875, abs=1e-4)
    assert many["spread"] <= few["spread"] / 2 and many["interval"]["coverage"] >= 0.95
    assert many["iqr"] == pytest.approx(few["iqr"], abs=0.1)
    # One stray estimate among five widens the interval to the whole range: five cannot rule it out.
    stray = estimate.summarize([100.0, 101.0, 99.0, 100.5, 70.0])
    assert stray["rows_per_s"] == 100.0 and stray["iqr"] == pytest.approx(0.015)
    assert stray["spread"] == stray["range"] == pytest.approx(0.31)
    ratio = estimate.summarize_ratio([0.91, 0.93, None, 0.92])
    assert ratio["ratio"] == 0.92 and ratio["n"] == 3 and ratio["spread"] == pytest.approx(0.0217, abs=1e-3)
    assert estimate.summarize([None])["rows_per_s"] is None
    small = [{"wall_s": 3.0, "cpu_s": 5.0}, {"wall_s": 3.0, "cpu_s": 5.0}]
    big = [{"wall_s": 5.0, "cpu_s": 9.0}, {"wall_s": 2.5, "cpu_s": 9.0}]
    assert estimate.pair_rates(1000, small, big) == [500.0, None]
    assert estimate.pair_cpu_us_per_row(1000, small, big) == 4000.0
    runs = {200: [{"wall_s": 1.5}, {"wall_s": 1.0}], 100: [{"wall_s": 0.5}, {"wall_s": 0.5}]}
    assert estimate.pair_rates(*estimate.loop_pairs(runs)) == [100.0, 200.0]
    with pytest.raises(ValueError, match="N and 2N"):
        estimate.loop_pairs({100: [], 300: []})


def test_validity_checks_name_what_is_wrong():
    from benchmarks import estimate

    reasons = []
    estimate.check_spread("pipeline", estimate.summarize([100.0, 160.0, 100.0]), reasons)
    estimate.check_spread("naive", estimate.summarize([100.0, None]), reasons)
    estimate.check_spread("floor", estimate.summarize([100.0, 101.0]), reasons)
    estimate.check_spread("datarecord_pipeline", estimate.summarize([100.0]), reasons)
    estimate.check_order("the job", 1_840_260, "the model alone (limit)", 335_000, reasons)
    estimate.check_order("the job", 240_000, "its floor", 250_000, reasons)
    # A ratio over 1 is impossible only when its whole interval says so, not its median.
    estimate.check_ratio_order("the job", "its floor", estimate.summarize_ratio([0.9, 1.2, 1.1, 1.0, 1.15]), reasons)
    estimate.check_ratio_order("the job", "its floor", estimate.summarize_ratio([1.2, 1.3, 1.25]), reasons)
    estimate.check_foreign("limit", estimate.foreign_share([{"foreign_cpu_share": 0.4}, {"foreign_cpu_share": 0.3}]),
                           reasons)
    estimate.check_foreign("floor", estimate.foreign_share([{"foreign_cpu_share": 0.01}]), reasons)
    estimate.check_foreign("encode", estimate.foreign_share([{"foreign_cpu_share": None}]), reasons)
    assert len(reasons) == 6, reasons
    assert reasons[0].startswith("pipeline: spread 60% over 3 estimates")
    assert "[100.0, 160.0] with 75% confidence" in reasons[0]
    assert reasons[1].startswith("naive: 1 of 2 pairs had a 2N run no slower")
    assert reasons[2].startswith("datarecord_pipeline: a single estimate has no spread")
    assert "faster than the model alone (limit)" in reasons[3] and "1,840,260" in reasons[3]
    assert reasons[4] == ("the job is faster than its floor, which bounds it: their ratio lies in [1.2, 1.3] "
                          "with 75% confidence")
    assert reasons[5].startswith("limit: other processes used 35% of the CPUs")


def test_timed_window_sees_own_cpu_and_others_share():
    from benchmarks.window import TimedWindow

    with TimedWindow() as window:
        sum(i * i for i in range(300_000))
    result = window.result()
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and result["cores"] >= 1
    assert result["foreign_cpu_share"] is None or 0 <= result["foreign_cpu_share"] <= 1


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_a_childs_own_peak_rss_does_not_include_its_parents():
    """ru_maxrss of a child counts the parent's resident set at the fork; VmHWM does not."""
    held = np.ones(300 * 2**20, np.uint8)  # 300 MiB resident in this (the parent) process
    code = ("import json, resource; from benchmarks.window import own_peak_rss_mb; "
            "print(json.dumps([own_peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))")
    own, maxrss = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                                            text=True, check=True).stdout)
    assert held.sum() == 300 * 2**20
    assert own < 200 <= 300 <= maxrss


def test_datarecords_of_table_hold_the_users():
    from twml.decode import decode_data_record
    from twml.feature_ids import feature_id

    from pipeline.demo.users import user_table

    table = user_table(np.array([7, -3, 12], np.int64), seed=1, dense_dim=4, max_sparse=3)
    records = data.datarecords_of_table(table, 4)
    names = data.dense_feature_names(4)
    for raw, key, dense, ids in zip(records, table.column("user_id").to_pylist(), table.column("dense").to_pylist(),
                                    table.column("sparse_ids").to_pylist()):
        record = decode_data_record(raw)
        assert record.discreteFeatures == {feature_id(data.DATARECORD_KEY): key}
        assert record.continuousFeatures == {feature_id(n): pytest.approx(v) for n, v in zip(names, dense)}
        assert sorted(record.sparseBinaryFeatures[feature_id(data.DATARECORD_INTERESTS)]) == sorted(
            str(i) for i in ids)
        assert not record.tensors and not record.binaryFeatures


@pytest.mark.parametrize("fmt", ["parquet", "datarecord"])
def test_floor_child_reads_every_row_the_export_reads(small_setup, fmt):
    import yaml

    work, patterns, model = small_setup
    inputs = {1500: patterns[1500], 3000: patterns[3000]}
    if fmt == "datarecord":
        inputs = data.prepare_datarecord_inputs(work, inputs, "small")
        raw = data.datarecord_export_config(inputs[3000], model, os.path.join(work, "out", "floor"), "small", 256, 2)
    else:
        raw = data.export_config(inputs[3000], model, os.path.join(work, "out", "floor"), "small", 256, 2)
    config = os.path.join(work, f"floor-{fmt}.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(raw, f)
    run = run_child("floor", ["--config", config, *[f"--input={r}={p}" for r, p in inputs.items()],
                              "--repeats", "2"], os.path.join(work, f"floor-{fmt}.log"))
    assert run.result["format"] == fmt and run.result["batch_size"] == 256
    assert {k: len(v) for k, v in run.result["runs"].items()} == {"1500": 2, "3000": 2}
    assert all(w["wall_s"] > 0 and w["cpu_s"] > 0 for ws in run.result["runs"].values() for w in ws)


def test_cpu_accounting_splits_the_job_and_its_floor_by_thread_and_step(small_setup):
    """The tool runs (numbers at this size are noise): every figure present for every round,
    the job's steps all timed, and the DoFn methods it wrapped given back afterwards."""
    import yaml

    from benchmarks import cpu_accounting
    from transforms.write import _WritePartsFn

    work, patterns, model = small_setup
    config = os.path.join(work, "accounting.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(data.export_config(patterns[3000], model, os.path.join(work, "out", "accounting"),
                                          "small", 256, 2), f)
    run = run_child("cpu_accounting", ["--config", config, f"--input=1500={patterns[1500]}",
                                       f"--input=3000={patterns[3000]}", "--repeats", "2"],
                    os.path.join(work, "accounting.log"))
    result = run.result
    assert (result["rows"], result["repeats"]) == (1500, 2)
    for path in ("job", "floor", "job_minus_floor"):
        assert list(result[path]["threads"]) == list(cpu_accounting.THREAD_KINDS)
        for group in ("wall", "cpu", "threads"):
            assert all(len(s["values"]) == 2 and s["low"] <= s["median"] <= s["high"]
                       for s in result[path][group].values())
    parquet_steps = {step for module, _, _, step in cpu_accounting.JOB_STEPS if "datarecord" not in module}
    assert set(result["job"]["steps"]) == parquet_steps and result["floor"]["steps"] == {}
    with open(os.path.join(work, "accounting.log")) as log:
        assert "thread: main" in log.read()  # the table went to stdout
    with cpu_accounting.StepClock():
        assert _WritePartsFn.process.__name__ == "timed"
    assert _WritePartsFn.process.__name__ == "process"


FIELDS = ["valid", "invalid_reasons", "rows", "naive_rows", "floor_rows_per_s", "pipeline_vs_floor",
          "pipeline_vs_floor_spread", "pipeline_vs_floor_cpu", "limit_rows_per_s", "pipeline_rows_per_s",
          "naive_rows_per_s", "pipeline_vs_limit", "pipeline_vs_naive", "encode_rows_per_s", "encode_vs_thriftpy2",
          "peak_rss_mb", "spreads", "rates", "cpu_us_per_row", "foreign_cpu_share", "load_average", "datarecord",
          "batch_size", "num_shards", "seconds", "machine", "versions", "model"]


def test_harness_end_to_end_small(tmp_path):
    from benchmarks.run import EXIT_INVALID

    out_json = tmp_path / "bench.json"
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--rows", "2000",
                           "--datarecord-rows", "1000", "--small", "--json", str(out_json), "--workdir", str(work),
                           "--set", "model.batch_size=256", "--set", "partition.num_shards=4",
                           "--repeats", "1"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=800)
    assert out_json.exists(), proc.stderr[-4000:]
    printed = json.loads(proc.stdout)
    result = json.loads(out_json.read_text())
    assert printed == result
    # A result the harness cannot trust is printed but marked, with its reasons, and fails the run.
    if result["valid"]:
        assert proc.returncode == 0 and result["invalid_reasons"] == [], proc.stderr[-4000:]
    else:
        assert proc.returncode == EXIT_INVALID and result["invalid_reasons"], proc.stderr[-4000:]
        assert "INVALID" in proc.stderr
    for field in FIELDS:
        assert field in result, field
    assert result["rows"] == 2000 and result["naive_rows"] == 2000
    assert result["batch_size"] == 256 and result["num_shards"] == 4 and result["repeats"] == 1
    assert result["model"]["kind"] == "small"
    # The limit is the faster of the two ways to run the bare model (benchmarks/limit.py).
    assert result["intra_op_threads"] == data.INTRA_OP_THREADS
    assert set(result["limit_modes"]) == {"tf_default", "job_threads"}
    assert result["limit_mode"] == max(result["limit_modes"],
                                       key=lambda m: result["limit_modes"][m]["rows_per_s"] or 0)
    assert 50 < result["peak_rss_mb"] < 8000
    # Every rate is the median of its estimates, published with its spread.
    for name in ("limit_tf_default", "limit_job_threads", "floor", "pipeline", "naive", "datarecord_floor",
                 "datarecord_pipeline", "encode", "thriftpy2"):
        summary = result["rates"][name]
        assert result["spreads"][name] == summary["spread"]
        good = [e for e in summary["estimates"] if e is not None]
        assert summary["n"] == len(good)
        if good:
            assert summary["min"] <= summary["rows_per_s"] <= summary["max"]
            assert summary["range"] == pytest.approx((summary["max"] - summary["min"]) / summary["rows_per_s"],
                                                     abs=1e-3)
            assert 0 <= summary["spread"] <= summary["range"] + 1e-9
    # Loops and jobs alike: one marginal-rate estimate per (N, 2N) pair (1 repeat here).
    assert len(result["rates"]["floor"]["estimates"]) == 1 and len(result["rates"]["pipeline"]["estimates"]) == 1
    floor_seconds = result["seconds"]["floor"]
    if result["floor_rows_per_s"]:  # seconds are rounded to ms (below): the rate within 1 ms of theirs
        t1, t2, est = floor_seconds["2000"][0], floor_seconds["4000"][0], result["floor_rows_per_s"]
        assert 2000 / (t2 - t1 + 0.0011) <= est, (t1, t2, est)
        assert t2 - t1 <= 0.0011 or est <= 2000 / (t2 - t1 - 0.0011), (t1, t2, est)
    assert result["limit_rows_per_s"] == result["rates"][f"limit_{result['limit_mode']}"]["rows_per_s"]
    assert result["floor_rows_per_s"] == result["rates"]["floor"]["rows_per_s"]
    for name in ("pipeline", "naive"):
        seconds = result["seconds"][name]
        assert set(seconds) == {"2000", "4000"} and all(len(v) == 1 for v in seconds.values())
        rate = result["rates"][name]
        for (t1, t2), est in zip(zip(seconds["2000"], seconds["4000"]), rate["estimates"]):
            # Seconds are rounded to ms: the true difference lies within 1 ms of theirs.
            if est is None:
                assert t2 - t1 <= 0.001, (t1, t2)
            else:
                assert 2000 / (t2 - t1 + 0.0011) <= est, (t1, t2, est)
                assert t2 - t1 <= 0.0011 or est <= 2000 / (t2 - t1 - 0.0011), (t1, t2, est)
    # The ratio to the floor is estimated per round: the pair's rate over its round's floor rate
    # (one round here, so the one estimate is exactly that).
    ratio = result["ratios"]["pipeline_vs_floor"]
    assert result["pipeline_vs_floor"] == ratio["ratio"] and result["spreads"]["pipeline_vs_floor"] == ratio["spread"]
    if result["pipeline_rows_per_s"] and result["floor_rows_per_s"]:  # the ratio is rounded to 4 decimals
        assert result["pipeline_vs_floor"] == pytest.approx(
            result["pipeline_rows_per_s"] / result["floor_rows_per_s"], rel=1e-3, abs=1e-4)
    for name, share in result["foreign_cpu_share"].items():
        assert share["median"] is None or 0 <= share["median"] <= share["max"] <= 1, name
    assert isinstance(result["cpu_us_per_row"]["floor"], float)  # marginal: noise at this size, but there
    dr = result["datarecord"]
    assert dr["rows"] == 1000 and dr["record_bytes"] > 100
    assert result["encode_rows_per_s"] > 0 and result["encode_vs_thriftpy2"] > 0
    assert result["encode_vs_thriftpy2"] == pytest.approx(result["ratios"]["encode_vs_thriftpy2"]["ratio"], abs=0.01)

    # The naive job and the real job wrote the same users with the same embeddings.
    pipeline_out = _decode_tfrecord_dir(str(work / "out" / "pipeline-4000" / "part-*.tfrecord"))
    naive_out = _decode_tfrecord_dir(str(work / "out" / "naive-4000" / "part-*.tfrecord"))
    assert len(pipeline_out) == 4000 and sorted(pipeline_out) == sorted(naive_out)
    for key, (embedding, length, shape) in pipeline_out.items():
        naive_embedding, naive_length, naive_shape = naive_out[key]
        assert length == naive_length and shape == naive_shape == [16]
        np.testing.assert_allclose(embedding, naive_embedding, rtol=1e-5, atol=1e-6)
    # The DataRecord-input export wrote the same users (keys) as the Parquet export of their rows.
    dr_out = _decode_tfrecord_dir(str(work / "out" / "datarecord-2000" / "part-*.tfrecord"))
    assert sorted(dr_out) == sorted(pq.read_table(glob.glob(str(work / "data" / "rows-2000" / "*.parquet")))
                                    .column("user_id").to_pylist())


def test_scaling_study_small(tmp_path):
    from benchmarks.scaling import scaling_study

    result = scaling_study(600, "small", workdir=str(tmp_path), steps=(1, 2), log=lambda msg: None,
                           overrides=["partition.num_shards=2"], verify=True)
    assert [p["rows"] for p in result["points"]] == [600, 1200] and result["steps"] == [1, 2]
    assert result["verified"] == {"rows": 1200, "ok": True, "records": 1200, "problems": []}
    assert result["rate_change"] == pytest.approx(
        result["points"][1]["rows_per_s"] / result["points"][0]["rows_per_s"] - 1, abs=1e-3)
    for point in result["points"]:
        assert point["seconds"] > 0 and point["rows_per_s"] > 0 and 50 < point["peak_rss_mb"] < 8000
        assert point["cpu_us_per_row"] > 0
    assert "marginal_rows_per_s" in result["points"][1]
    assert result["peak_rss_mb"] == max(p["peak_rss_mb"] for p in result["points"])
    assert result["rss_growth"] == pytest.approx(
        result["points"][1]["peak_rss_mb"] / result["points"][0]["peak_rss_mb"] - 1, abs=1e-3)
    assert len(glob.glob(str(tmp_path / "out" / "pipeline-1200" / "part-*-of-00002.tfrecord"))) == 2
