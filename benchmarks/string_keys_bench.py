"""What string user keys cost the write path, against integer keys, on the same embeddings.

    python benchmarks/string_keys_bench.py [--batch 4096] [--dim 128] [--key-length 24] [--repeats 30]

prints one JSON object. Per batch of ``batch`` users with a ``dim``-float32 embedding:

- ``int_ms``: ``encode_tfrecords`` with int64 keys (fixed-length records: the encoder writes
  straight into the frames);
- ``string_ms``: ``string_key_ids`` of the keys plus ``encode_tfrecords`` with the keys as a
  stringFeatures entry (records of differing lengths), i.e. all a string key adds;
- ``hash_ms``: ``string_key_ids`` alone;
- ``string_vs_int``: the median of the per-repeat ratios string / int, with ``spread`` its
  10th and 90th percentiles. The two are timed alternately in one process, so the ratio
  compares like with like on a shared machine;
- ``same_bytes``: the string-key frames equal ``frame_tfrecords(encode_data_records(...))``.

Keys are ``user-`` plus digits, ``key_length`` characters on average, lengths varying by up to
8 either way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from twml.encode import encode_data_records  # noqa: E402
from twml.feature_ids import feature_id, string_key_ids  # noqa: E402
from twml.io.tfrecord import encode_tfrecords, frame_tfrecords  # noqa: E402


def run_string_keys_benchmark(batch: int = 4096, dim: int = 128, key_length: int = 24,
                              repeats: int = 30) -> Dict:
    """Time integer-key and string-key framed encoding of one batch, alternately."""
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(batch, dim)).astype(np.float32)
    int_keys = rng.integers(-(1 << 62), 1 << 62, size=batch, dtype=np.int64)
    lengths = np.clip(rng.integers(key_length - 8, key_length + 9, size=batch), 6, None)
    strings = np.array([f"user-{i:0{n - 5}d}".encode() for i, n in enumerate(lengths.tolist())], dtype=object)
    key_id, string_id, emb_id = feature_id("meta.user_id.id"), feature_id("meta.user_id"), feature_id("output")

    def with_int_keys():
        return encode_tfrecords(int_keys, key_id, [(emb_id, embedding)])

    def with_string_keys():
        ids = string_key_ids(strings)
        return encode_tfrecords(ids, key_id, [(emb_id, embedding)], [(string_id, strings)])

    with_int_keys(), with_string_keys()   # warm-up: numba kernels load, caches fill
    int_times, string_times, hash_times = [], [], []
    for _ in range(repeats):
        for fn, times in ((with_int_keys, int_times), (with_string_keys, string_times),
                          (lambda: string_key_ids(strings), hash_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    ratios = np.array(string_times) / np.array(int_times)
    ids = string_key_ids(strings)
    same = with_string_keys().tobytes() == frame_tfrecords(
        encode_data_records(ids, key_id, [(emb_id, embedding)], [(string_id, strings)])).tobytes()
    return {
        "batch": batch, "dim": dim, "key_length": key_length, "repeats": repeats,
        "int_ms": round(1e3 * float(np.median(int_times)), 3),
        "string_ms": round(1e3 * float(np.median(string_times)), 3),
        "hash_ms": round(1e3 * float(np.median(hash_times)), 3),
        "string_rows_per_s": round(batch / float(np.median(string_times))),
        "string_vs_int": round(float(np.median(ratios)), 2),
        "spread": [round(float(np.percentile(ratios, 10)), 2), round(float(np.percentile(ratios, 90)), 2)],
        "same_bytes": bool(same),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--key-length", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(run_string_keys_benchmark(args.batch, args.dim, args.key_length, args.repeats)))


if __name__ == "__main__":
    main()
