"""SavedModels ending in the writer layers run where our code is absent, with any batch size.

Models are exported once per module: a tf.Module with a variable and all three writers (one
signature each, batch and row dims unknown), a Keras functional model saved with
tf.saved_model.save, and the same model through Keras's own ``model.export``. ONE fresh
Python process (isolated mode, cwd outside the repo, our packages blocked from import) loads
them with tf.saved_model.load, runs every signature on batches of 0, 1 and 5 rows and writes
the bytes back; they must equal the in-process layers and the numpy encoder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from twml.encode import (encode_batch_prediction_response, encode_continuous_records,
                         encode_data_records, encode_tensor_record)
from twml.feature_ids import feature_id
from twml.layers import BatchPredictionTensorWriter, BatchPredictionWriter, DataRecordTensorWriter

BATCHES = (0, 1, 5)
TENSOR_KEYS = ["output", "tags", "flags", 42]
CONTINUOUS_KEYS = ["score.a", "score.b", "score.c", "score.d"]
PY_FUNCTION_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "NumpyFunction"}

# Runs in the fresh process: only TensorFlow and numpy, our packages cannot be imported.
CHILD = r'''
import importlib.abc, json, sys
class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("twml", "transforms", "pipeline"):
            raise ImportError("the serving process must not import " + name)
sys.meta_path.insert(0, BlockProject())
import numpy as np
import tensorflow as tf
models_dir, inputs_path, outputs_path = sys.argv[1:4]
inputs = np.load(inputs_path)
module = tf.saved_model.load(models_dir + "/module")
keras_saved = tf.saved_model.load(models_dir + "/keras")
keras_exported = tf.saved_model.load(models_dir + "/keras_export")
out = {}
for b in map(int, inputs["batches"]):
    x = tf.constant(inputs[f"x{b}"])
    tensor_args = {name: tf.constant(inputs[f"{name}{b}"]) for name in ("emb", "tags", "flags", "ids")}
    out[f"continuous{b}"] = module.signatures["serving_default"](x=x)["response"].numpy()
    out[f"tensors{b}"] = module.signatures["tensors"](**tensor_args)["response"].numpy()
    out[f"record{b}"] = module.signatures["record"](**tensor_args)["record"].numpy()
    out[f"keras{b}"] = keras_saved.signatures["serving_default"](x=x)["response"].numpy()
    out[f"keras_export{b}"] = keras_exported.serve(x).numpy()
np.savez(outputs_path, **out)
try:
    import twml
    twml_importable = True
except ImportError:
    twml_importable = False
print(json.dumps({"twml_importable": twml_importable, "project_modules": sorted(m for m in sys.modules
                                            if m.split(".")[0] in ("twml", "transforms", "pipeline")),
                  "cwd_on_path": any(p in ("", ".") for p in sys.path)}))
'''


class ServingModule(tf.Module):
    """A small model: x @ w as four scores, plus the two tensor writers over raw inputs."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
        self.continuous_writer = BatchPredictionWriter(CONTINUOUS_KEYS)
        self.tensor_writer = BatchPredictionTensorWriter(TENSOR_KEYS)
        self.record_writer = DataRecordTensorWriter(TENSOR_KEYS)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def continuous(self, x):
        return {"response": self.continuous_writer(tf.matmul(x, self.w))}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="emb"), tf.TensorSpec([None, 2], tf.string, name="tags"),
        tf.TensorSpec([None, None, 3], tf.bool, name="flags"), tf.TensorSpec([None], tf.int64, name="ids")])
    def tensors(self, emb, tags, flags, ids):
        return {"response": self.tensor_writer([emb, tags, flags, ids])}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="emb"), tf.TensorSpec([None, 2], tf.string, name="tags"),
        tf.TensorSpec([None, None, 3], tf.bool, name="flags"), tf.TensorSpec([None], tf.int64, name="ids")])
    def record(self, emb, tags, flags, ids):
        return {"record": self.record_writer([emb, tags, flags, ids])}


def make_inputs(batch: int) -> dict:
    rng = np.random.default_rng(100 + batch)
    # Strings as fixed-width bytes (npz without pickle); no trailing NULs, which 'S' would drop.
    tags = np.array([bytes(rng.integers(1, 256, size=rng.integers(0, 5)).astype(np.uint8))
                     for _ in range(batch * 2)], dtype="S8").reshape(batch, 2)
    return {f"x{batch}": rng.normal(size=(batch, 8)).astype(np.float32),
            f"emb{batch}": rng.normal(size=(batch, 6)).astype(np.float32),
            f"tags{batch}": tags,
            f"flags{batch}": rng.integers(0, 2, size=(batch, 2, 3)).astype(bool),
            f"ids{batch}": rng.integers(-(1 << 62), 1 << 62, size=batch)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("savedmodels")
    module = ServingModule()
    tf.saved_model.save(module, str(root / "module"), signatures={
        "serving_default": module.continuous, "tensors": module.tensors, "record": module.record})

    x = keras.Input((8,), dtype="float32", name="x")
    model = keras.Model(x, BatchPredictionWriter(CONTINUOUS_KEYS)(keras.layers.Dense(4)(x)))
    serve = tf.function(lambda x: {"response": model(x)},
                        input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    tf.saved_model.save(model, str(root / "keras"), signatures=serve)
    model.export(str(root / "keras_export"), format="tf_saved_model", verbose=False)

    inputs = {"batches": np.array(BATCHES)}
    for b in BATCHES:
        inputs.update(make_inputs(b))
    np.savez(root / "inputs.npz", **inputs)

    workdir = tmp_path_factory.mktemp("fresh_process_cwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(root), str(root / "inputs.npz"), str(root / "outputs.npz")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"fresh process failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(root / "outputs.npz") as outputs:
        results = {k: outputs[k] for k in outputs.files}
    return {"root": root, "module": module, "model": model, "inputs": inputs, "outputs": results,
            "report": report}


def test_fresh_process_did_not_see_our_code(exported):
    assert exported["report"] == {"twml_importable": False, "project_modules": [], "cwd_on_path": False}


def test_saved_graphs_hold_no_python_functions(exported):
    for name in ("module", "keras", "keras_export"):
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((exported["root"] / name / "saved_model.pb").read_bytes())
        ops = set()
        for meta_graph in saved.meta_graphs:
            ops.update(node.op for node in meta_graph.graph_def.node)
            for function in meta_graph.graph_def.library.function:
                ops.update(node.op for node in function.node_def)
        assert ops and not ops & PY_FUNCTION_OPS, f"{name} uses {ops & PY_FUNCTION_OPS}"
        assert {"Bitcast", "ConcatV2"} <= ops


@pytest.mark.parametrize("batch", BATCHES)
def test_continuous_response_matches_in_process_and_encoder(exported, batch):
    inputs, outputs, module = exported["inputs"], exported["outputs"], exported["module"]
    x = inputs[f"x{batch}"]
    scores = tf.matmul(x, module.w).numpy()
    expected = encode_batch_prediction_response(
        encode_continuous_records([feature_id(k) for k in CONTINUOUS_KEYS], scores))
    assert outputs[f"continuous{batch}"].shape == (1, len(expected))
    assert outputs[f"continuous{batch}"].tobytes() == expected
    assert module.continuous(x)["response"].numpy().tobytes() == expected


@pytest.mark.parametrize("batch", BATCHES)
def test_tensor_writers_match_in_process_and_encoder(exported, batch):
    inputs, outputs, module = exported["inputs"], exported["outputs"], exported["module"]
    arrays = [inputs[f"{name}{batch}"] for name in ("emb", "tags", "flags", "ids")]
    ids = [feature_id("output"), feature_id("tags"), feature_id("flags"), 42]
    response = encode_batch_prediction_response(encode_data_records(None, None, list(zip(ids, arrays))))
    record = encode_tensor_record(list(zip(ids, arrays)))
    assert outputs[f"tensors{batch}"].tobytes() == response
    assert outputs[f"record{batch}"].tobytes() == record
    in_process = module.tensors(*[tf.constant(a) for a in arrays])["response"]
    assert in_process.numpy().tobytes() == response


@pytest.mark.parametrize("batch", BATCHES)
def test_keras_model_round_trip(exported, batch):
    x = exported["inputs"][f"x{batch}"]
    model = exported["model"]
    expected = model(tf.constant(x)).numpy().tobytes()
    scores = model.layers[1](tf.constant(x)).numpy()
    assert expected == encode_batch_prediction_response(
        encode_continuous_records([feature_id(k) for k in CONTINUOUS_KEYS], scores))
    assert exported["outputs"][f"keras{batch}"].tobytes() == expected
    assert exported["outputs"][f"keras_export{batch}"].tobytes() == expected
