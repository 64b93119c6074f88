"""Speed of the batch encoder and of TFRecord framing against thriftpy2, same bytes.

    python benchmarks/encode_bench.py [--rows 1000000] [--batch 4096] [--dim 128] [--sample 50000]

prints one JSON object. ``run_encode_benchmark(rows)`` is what ``benchmarks/run.py`` imports.

- ``encode_rows_per_s``: ``encode_data_records`` on exported records (int64 key + ``dim``-float32
  embedding) in batches of ``batch``, rows / total encode time.
- ``thriftpy2_rows_per_s``: one thriftpy2 DataRecord per record, serialized with thriftpy2's C
  binary protocol, timed on ``sample`` records (the per-record cost does not depend on how
  many there are); the bytes are checked to equal the encoder's (``same_bytes``), and
  ``encode_tfrecords``' to equal ``frame_tfrecords(encode_data_records(...))``'s (``framed_same_bytes``).
- ``encode_vs_thriftpy2`` (target >= 30).
- ``frame_overhead`` (target < 0.5): what TFRecord framing adds to encoding, as the writer does
  it: (time of ``encode_tfrecords`` - time of ``encode_data_records``) / time of
  ``encode_data_records``, on the same batches. ``frame_separate_overhead``: time of
  ``frame_tfrecords`` on the encoded batches / encode time (framing as a second pass).
- ``crc_backend``: which crc32c implementation framing used (``twml.io.crc32c_batch.BACKEND``).
- ``crc_us_per_row`` / ``crc_batch_us_per_row`` / ``crc_floor_us_per_row``: one
  ``google_crc32c`` call per record, ``crc32c_rows`` over the batch (one native call), and one
  ``google_crc32c`` call over the whole batch buffer (the hashing alone, no per-call cost).

Input batches are generated once (a few distinct ones, cycled) so memory stays small at 1M rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import google_crc32c  # noqa: E402
import numpy as np  # noqa: E402

from twml.encode import encode_data_records  # noqa: E402
from twml.feature_ids import feature_id  # noqa: E402
from twml.io import crc32c_batch  # noqa: E402
from twml.io.tfrecord import encode_tfrecords, frame_tfrecords  # noqa: E402
from twml.schema import data_thrift, serialize, tensor_thrift  # noqa: E402

__all__ = ["run_encode_benchmark"]

KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
_DISTINCT_BATCHES = 4


def _inputs(batch: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 1 << 62, size=batch, dtype=np.int64),
             rng.normal(size=(batch, dim)).astype(np.float32)) for _ in range(_DISTINCT_BATCHES)]


def _thriftpy2_records(keys: np.ndarray, embeddings: np.ndarray):
    """The obvious way: a DataRecord object per user, serialized with the C binary protocol."""
    shape = [embeddings.shape[1]]
    for key, row in zip(keys.tolist(), embeddings):
        raw = tensor_thrift.RawTypedTensor(dataType=0, content=row.astype("<f4").tobytes(), shape=shape)
        record = data_thrift.DataRecord(discreteFeatures={KEY_ID: key},
                                        tensors={EMB_ID: tensor_thrift.GeneralTensor(rawTypedTensor=raw)})
        yield serialize(record)


def _sample(inputs, sample: int):
    keys = np.concatenate([k for k, _ in inputs])
    emb = np.concatenate([e for _, e in inputs])
    reps = -(-sample // len(keys))
    return np.tile(keys, reps)[:sample], np.tile(emb, (reps, 1))[:sample]


def run_encode_benchmark(rows: int, batch: int = 4096, dim: int = 128, sample: int = 50_000) -> Dict:
    """Encode ``rows`` records in batches; time thriftpy2 on ``min(rows, sample)``; see module doc.

    The thriftpy2 sample is cut into one slice per encoder batch and run right after it, so
    both sides of every ratio see the same load on a shared machine.
    """
    inputs = _inputs(batch, dim)
    keys0, emb0 = inputs[0]
    encode_data_records(keys0, KEY_ID, [(EMB_ID, emb0)])   # warm caches (feature ids, allocator)
    encode_tfrecords(keys0, KEY_ID, [(EMB_ID, emb0)])      # and load the crc kernels
    sample = min(rows, sample)
    sample_keys, sample_emb = _sample(inputs, sample)
    batches = -(-rows // batch)
    per_batch = -(-sample // batches)

    encode_s = fused_s = frame_s = crc_s = crc_batch_s = floor_s = thrift_s = 0.0
    done = sampled = 0
    record_bytes = None
    baseline_head = []
    for index in range(batches):
        keys, emb = inputs[index % _DISTINCT_BATCHES]
        n = min(batch, rows - done)
        if n < batch:
            keys, emb = keys[:n], emb[:n]
        # Whichever of the two encoders runs second finds the inputs in cache: alternate.
        for which in ((0, 1) if index % 2 else (1, 0)):
            t0 = time.perf_counter()
            if which == 0:
                encoded = encode_data_records(keys, KEY_ID, [(EMB_ID, emb)])
                encode_s += time.perf_counter() - t0
            else:
                encode_tfrecords(keys, KEY_ID, [(EMB_ID, emb)])
                fused_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        frame_tfrecords(encoded)
        t1 = time.perf_counter()
        rows_view = encoded.buffer.reshape(n, -1)
        list(map(google_crc32c.value, rows_view))
        t2 = time.perf_counter()
        crc32c_batch.crc32c_rows(rows_view)
        t3 = time.perf_counter()
        google_crc32c.value(encoded.buffer)
        t4 = time.perf_counter()
        chunk = slice(sampled, min(sample, sampled + per_batch))
        baseline = list(_thriftpy2_records(sample_keys[chunk], sample_emb[chunk]))
        t5 = time.perf_counter()
        if index == 0:
            baseline_head = baseline
        frame_s += t1 - t0
        crc_s += t2 - t1
        crc_batch_s += t3 - t2
        floor_s += t4 - t3
        thrift_s += t5 - t4
        record_bytes = encoded.fixed_length()
        done += n
        sampled = chunk.stop
    check = len(baseline_head)
    same_bytes = baseline_head == encode_data_records(sample_keys[:check], KEY_ID,
                                                      [(EMB_ID, sample_emb[:check])]).to_list()
    keys0, emb0 = keys0[:check], emb0[:check]
    framed_same_bytes = bool(np.array_equal(
        encode_tfrecords(keys0, KEY_ID, [(EMB_ID, emb0)]),
        frame_tfrecords(encode_data_records(keys0, KEY_ID, [(EMB_ID, emb0)]))))

    encode_rate = rows / encode_s
    thrift_rate = sampled / thrift_s
    return {
        "rows": rows,
        "batch_size": batch,
        "embedding_dim": dim,
        "record_bytes": record_bytes,
        "encode_rows_per_s": encode_rate,
        "encode_us_per_row": 1e6 * encode_s / rows,
        "thriftpy2_rows_per_s": thrift_rate,
        "thriftpy2_us_per_row": 1e6 * thrift_s / sampled,
        "thriftpy2_sample_rows": sampled,
        "encode_vs_thriftpy2": encode_rate / thrift_rate,
        "same_bytes": same_bytes,
        "framed_same_bytes": framed_same_bytes,
        "encode_tfrecords_us_per_row": 1e6 * fused_s / rows,
        "frame_overhead": (fused_s - encode_s) / encode_s,
        "frame_rows_per_s": rows / frame_s,
        "frame_us_per_row": 1e6 * frame_s / rows,
        "frame_separate_overhead": frame_s / encode_s,
        "crc_backend": crc32c_batch.BACKEND,
        "crc_us_per_row": 1e6 * crc_s / rows,
        "crc_batch_us_per_row": 1e6 * crc_batch_s / rows,
        "crc_floor_us_per_row": 1e6 * floor_s / rows,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--sample", type=int, default=50_000)
    args = parser.parse_args(argv)
    result = run_encode_benchmark(args.rows, args.batch, args.dim, args.sample)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
