"""Speed of DataRecord input decoding: ``records_to_table`` (native kernel) against the one-by-one
decoder (``records_to_table_slow``: ``decode_data_record`` per record), same table.

    python benchmarks/datarecord_decode_bench.py [--batch 4096] [--rounds 5] [--seed 0]

prints one JSON object:

- records are reference-sized: a key, 256 continuous features (ids of ``user.f0`` ...
  ``user.f255``, in their name order on the wire, which is not id order), one sparse-binary
  feature holding 32 distinct strings of 3-12 letters, and a ``binaryFeatures`` set to skip;
- the source reads the key, one list<float64> column of the 256 features (default 0.0) and one
  list<int64> column of the set's hashed ids;
- ``fast_rows_per_s`` / ``slow_rows_per_s``: rows / time of one call on a batch of ``batch``
  records, the fastest of ``rounds`` calls each; the process is pinned to one core where the OS
  allows it; ``speedup`` is their ratio;
- ``same_table``: the two tables are equal (checked on the timed batch).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from transforms.inputs.datarecord import (CONTINUOUS, SPARSE_BINARY, DataRecordSource,  # noqa: E402
                                          FeatureColumn, records_to_table, records_to_table_slow)
from twml import decode_columns  # noqa: E402
from twml.feature_ids import feature_id  # noqa: E402
from twml.schema import data_thrift, serialize  # noqa: E402

DENSE = [f"user.f{i}" for i in range(256)]
KEY, INTERESTS = "meta.user_id", "user.interests"


def reference_source(batch: int) -> DataRecordSource:
    return DataRecordSource(
        container="tfrecord", key_column="user_id", key_feature_id=feature_id(KEY), rows_per_table=batch,
        columns=(FeatureColumn("dense", CONTINUOUS, tuple(feature_id(n) for n in DENSE), default=0.0),
                 FeatureColumn("ids", SPARSE_BINARY, (feature_id(INTERESTS),))))


def reference_records(batch: int, seed: int = 0):
    """``batch`` serialized reference-sized DataRecords."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    dense_ids = [feature_id(n) for n in DENSE]
    records = []
    for key in range(batch):
        words = set()
        while len(words) < 32:
            words.add(letters[rng.integers(0, 26, size=int(rng.integers(3, 13)))].tobytes().decode())
        records.append(serialize(data_thrift.DataRecord(
            binaryFeatures={feature_id("user.active")},
            continuousFeatures=dict(zip(dense_ids, rng.normal(size=256).tolist())),
            discreteFeatures={feature_id(KEY): key},
            sparseBinaryFeatures={feature_id(INTERESTS): words})))
    return records


def best_seconds(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(batch: int = 4096, rounds: int = 5, seed: int = 0) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    source, records = reference_source(batch), reference_records(batch, seed)
    fast, _ = records_to_table(records, source)      # compiles / loads the kernel
    slow, _ = records_to_table_slow(records, source)
    fast_s = best_seconds(lambda: records_to_table(records, source), rounds)
    slow_s = best_seconds(lambda: records_to_table_slow(records, source), rounds)
    return {"batch": batch, "rounds": rounds, "record_bytes": int(np.mean([len(r) for r in records])),
            "native": decode_columns.native_ready(), "fast_rows_per_s": round(batch / fast_s),
            "slow_rows_per_s": round(batch / slow_s), "speedup": round(slow_s / fast_s, 1),
            "same_table": fast.equals(slow)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.batch, args.rounds, args.seed), indent=1))


if __name__ == "__main__":
    main()
