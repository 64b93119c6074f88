"""Speed of the graph-op writer layers against the numpy batch encoder, same batch, same bytes.

    python benchmarks/layers_bench.py [--batch 4096] [--width 128] [--repeats 30]

prints one JSON object. The headline is ``tensor_writer_vs_numpy``: BatchPredictionTensorWriter
on a [batch, width] float32 batch (inside a warmed-up tf.function, output fetched to numpy)
divided by ``encode_batch_prediction_response(encode_data_records(...))`` on the same array;
the target is <= 3. ``continuous_writer_vs_numpy`` is the same for BatchPredictionWriter vs
``encode_continuous_records``. Times are medians of ``repeats`` runs in one process, so the
ratios compare like with like on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from twml.encode import (encode_batch_prediction_response, encode_continuous_records,  # noqa: E402
                         encode_data_records)
from twml.feature_ids import feature_id  # noqa: E402
from twml.layers import BatchPredictionTensorWriter, BatchPredictionWriter  # noqa: E402


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (traces a tf.function, fills caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_layers_benchmark(batch: int = 4096, width: int = 128, repeats: int = 30) -> Dict:
    """Time the writer layers and the numpy encoder on one random float32 [batch, width] batch."""
    values = np.random.default_rng(0).normal(size=(batch, width)).astype(np.float32)
    tensor = tf.constant(values)
    fid = feature_id("output")
    continuous_ids = [feature_id(f"score.{j}") for j in range(width)]

    tensor_writer = BatchPredictionTensorWriter(["output"])
    continuous_writer = BatchPredictionWriter([f"score.{j}" for j in range(width)])
    signature = [tf.TensorSpec([None, width], tf.float32)]
    tensor_fn = tf.function(lambda x: tensor_writer([x]), input_signature=signature)
    continuous_fn = tf.function(lambda x: continuous_writer(x), input_signature=signature)

    def layer_tensor() -> np.ndarray:
        return tensor_fn(tensor).numpy()

    def numpy_tensor() -> bytes:
        return encode_batch_prediction_response(encode_data_records(None, None, [(fid, values)]))

    def layer_continuous() -> np.ndarray:
        return continuous_fn(tensor).numpy()

    def numpy_continuous() -> bytes:
        return encode_batch_prediction_response(encode_continuous_records(continuous_ids, values))

    same = (layer_tensor().tobytes() == numpy_tensor()
            and layer_continuous().tobytes() == numpy_continuous())
    times = {name: _median_seconds(fn, repeats) for name, fn in (
        ("tensor_writer_s", layer_tensor), ("numpy_tensor_s", numpy_tensor),
        ("continuous_writer_s", layer_continuous), ("numpy_continuous_s", numpy_continuous))}
    return {
        "batch": batch, "width": width, "repeats": repeats, "same_bytes": same,
        "response_bytes": len(numpy_tensor()),
        **{k: round(v, 6) for k, v in times.items()},
        "tensor_writer_rows_per_s": round(batch / times["tensor_writer_s"]),
        "numpy_tensor_rows_per_s": round(batch / times["numpy_tensor_s"]),
        "tensor_writer_vs_numpy": round(times["tensor_writer_s"] / times["numpy_tensor_s"], 3),
        "continuous_writer_vs_numpy": round(times["continuous_writer_s"] / times["numpy_continuous_s"], 3),
        "tensorflow": tf.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(run_layers_benchmark(args.batch, args.width, args.repeats)))


if __name__ == "__main__":
    main()
