"""The embed step: one signature call per batch on a real SavedModel, non-finite rows rejected, metrics."""
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline_fixtures import DENSE_DIM, IDS_LEN, model_outputs, padded_ids, tiny_model, user_table
from transforms.embed import NON_FINITE_EMBEDDING, EmbedBatches, SavedModelHandler, finite_rows
from transforms.specs import KIND_FIXED, KIND_PADDED, InputSpec, OutputSpec
from transforms.rejected import REASON_COLUMN, SOURCE_COLUMN, SOURCE_ROW_COLUMN, tag_source
from transforms.tf_runtime import CPU_ALLOCATOR_ENV
from transforms.validate import METRICS_NAMESPACE
from twml.feature_ids import feature_id

FN_API = "FnApiRunner"  # TestPipeline ignores --runner in argv
INPUTS = (InputSpec("dense", "dense", "float32", KIND_FIXED, DENSE_DIM),
          InputSpec("sparse_ids", "sparse_ids", "int64", KIND_PADDED, IDS_LEN, 0))
OUTPUTS = (OutputSpec("embedding", "output", feature_id("output"), "float32", (6,)),
           OutputSpec("score", "user.score", feature_id("user.score"), "float32", ()))


def handler():
    return SavedModelHandler(tiny_model(), "serving_default", INPUTS, OUTPUTS)


def zero_row(key):
    return pa.table({"user_id": pa.array([key], pa.int64()),
                     "dense": pa.array([[0.0] * DENSE_DIM], pa.list_(pa.float32())),
                     "sparse_ids": pa.array([[]], pa.list_(pa.int64())),
                     "country": pa.array(["zero"])})


def test_handler_runs_one_signature_call_like_tf_directly():
    h = handler()
    model = h.load_model()
    assert model.num_bytes == (DENSE_DIM * 6 + 50 * 6) * 4
    table = user_table(np.arange(40), 5)
    dense = np.array(table.column("dense").to_pylist(), np.float32)
    ids = padded_ids(table.column("sparse_ids").to_pylist())
    got = h.run_batch({"dense": dense, "sparse_ids": ids}, model)
    want = model_outputs(tiny_model(), dense, ids)
    assert set(got) == {"embedding", "score"}
    np.testing.assert_array_equal(got["embedding"], want["embedding"])
    assert h.get_num_bytes({"dense": dense, "sparse_ids": ids}) == dense.nbytes + ids.nbytes
    assert h.get_metrics_namespace() == METRICS_NAMESPACE


def test_finite_rows():
    assert finite_rows(np.array([[1.0, 2.0], [np.nan, 0.0], [np.inf, 1.0]], np.float32)).tolist() == [True, False, False]
    assert finite_rows(np.array([1, 2], np.int64)).tolist() == [True, True]
    assert finite_rows(np.ones((3, 2, 2), np.float64)).tolist() == [True, True, True]
    assert finite_rows(np.array([[-np.inf], [0.0]], np.float16)).tolist() == [False, True]
    assert finite_rows(np.zeros((0, 4), np.float32)).tolist() == []


def test_embed_batches_in_a_pipeline_with_metrics():
    t1 = tag_source(pa.concat_tables([user_table(np.arange(0, 30), 1).slice(0, 12), zero_row(999),
                                      user_table(np.arange(12, 30), 1).slice(0, 18)]), "a.parquet", 50)
    t2 = tag_source(user_table(np.arange(100, 110), 2), "b.parquet", 0)
    p = BeamTestPipeline(runner=FN_API, blocking=False)
    out = (p | beam.Create([t1, t2]) | EmbedBatches(handler(), "user_id"))
    rows = out.embedded | "Rows" >> beam.FlatMap(
        lambda b: [(int(k), e.tolist(), float(s)) for k, e, s in zip(b.keys, b.outputs[0], b.outputs[1])])
    rejected = out.rejected | "Rejected" >> beam.FlatMap(
        lambda t: zip(t.column("user_id").to_pylist(), t.column(REASON_COLUMN).to_pylist(),
                      t.column(SOURCE_COLUMN).to_pylist(), t.column(SOURCE_ROW_COLUMN).to_pylist()))
    expected = []
    for table in (t1, t2):
        keys = table.column("user_id").to_pylist()
        got = model_outputs(tiny_model(), np.array(table.column("dense").to_pylist(), np.float32),
                            padded_ids(table.column("sparse_ids").to_pylist()))
        for i, k in enumerate(keys):
            if k != 999:
                expected.append((k, got["embedding"][i].tolist(), float(got["score"][i])))
    assert_that(rows, equal_to(expected), label="embedded rows")
    assert_that(rejected, equal_to([(999, NON_FINITE_EMBEDDING, "a.parquet", 62)]), label="rejected")  # 50 + 12
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    dists = {m.key.metric.name: m.committed for m in metrics["distributions"]}
    assert counters["num_inferences"] == 41
    assert counters["rows_rejected"] == 1
    assert counters[f"rows_rejected.{NON_FINITE_EMBEDDING}"] == 1
    lists = t1.column("sparse_ids").to_pylist() + t2.column("sparse_ids").to_pylist()
    assert counters.get("ids_truncated.sparse_ids", 0) == sum(len(x) > IDS_LEN for x in lists)
    assert dists["inference_request_batch_size"].count == 2 and dists["inference_request_batch_size"].sum == 41
    assert dists["inference_batch_latency_micro_secs"].count == 2
    assert dists["load_model_latency_milli_secs"].count >= 1
    assert dists["model_byte_size"].max == (DENSE_DIM * 6 + 50 * 6) * 4


# Prints the CPU allocator TF runs on: only TF's BFC allocator reports memory stats.
_PRINT_ALLOCATOR = """
import tensorflow as tf
try:
    tf.config.experimental.get_memory_info("CPU:0")
    print("bfc")
except ValueError:
    print("default")
"""


def _allocator_in_a_fresh_process(code, env_value=None):
    """'bfc' or 'default': the allocator after ``code`` ran in a fresh process, with
    TF_CPU_ALLOCATOR_USE_BFC set to ``env_value`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != CPU_ALLOCATOR_ENV}
    if env_value is not None:
        env[CPU_ALLOCATOR_ENV] = env_value
    done = subprocess.run([sys.executable, "-c", code + _PRINT_ALLOCATOR], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


def _allocator_of_a_fresh_worker(model_path, env_value):
    """The allocator of a fresh process that loads the model through the handler, as a worker does."""
    return _allocator_in_a_fresh_process(f"""
import sys
sys.path[:0] = {sys.path!r}
import numpy as np
from test_transforms_embed import INPUTS, OUTPUTS
from transforms.embed import SavedModelHandler
h = SavedModelHandler({model_path!r}, "serving_default", INPUTS, OUTPUTS)
h.run_batch({{"dense": np.zeros((8, {DENSE_DIM}), np.float32), "sparse_ids": np.zeros((8, {IDS_LEN}), np.int64)}},
            h.load_model())
""", env_value)


def _allocator_of_plain_tensorflow():
    """TF's own choice in a fresh process (where TF turns oneDNN on, as on AVX-512 VNNI CPUs,
    oneDNN's allocator, which is a BFC one)."""
    return _allocator_in_a_fresh_process("import tensorflow as tf\ntf.constant([1.0]) + 1\n")


def test_tensorflows_import_notices_are_dropped_from_stderr_and_nothing_else(capfd):
    # TF writes them natively at import where oneDNN is on, whatever TF_CPP_MIN_LOG_LEVEL says.
    from transforms.tf_runtime import _IMPORT_NOTICES, _stderr_without
    with _stderr_without(_IMPORT_NOTICES):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"


def test_a_worker_runs_the_model_on_tfs_bfc_allocator_unless_its_environment_says_otherwise():
    # The default allocator cost two page faults a row on the reference model (transforms.tf_runtime).
    assert _allocator_of_a_fresh_worker(tiny_model(), None) == "bfc"
    assert _allocator_of_a_fresh_worker(tiny_model(), "false") == _allocator_of_plain_tensorflow()
