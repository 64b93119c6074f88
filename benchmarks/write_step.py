"""The export's partition and write steps alone: core-us a row, no model, no runner.

    python -m benchmarks.write_step [--shards 16] [--batch-size 4096] [--dim 128]
                                    [--format tfrecord] [--batches 49] [--rounds 5] [--result FILE]

Runs the two DoFns as the job runs them in one bundle (``transforms.partition._PartitionFn``
then ``transforms.write._WritePartsFn``, into part files in a scratch directory) on 8 random
batches of the given shape, taken in turn: ``--batches`` of them, then twice as many, each run
ending with the bundle (the parts closed). Every round gives the marginal thread CPU time, (2B
run - B run) / B rows, in core-us a row; the JSON holds each round's figure and their median
with its interval (``benchmarks.cpu_accounting.summary``).

What it is for: comparing two versions of these steps, run in each checkout in turn. Inside the
job (``benchmarks.cpu_accounting``) the same steps are timed too, but on a shared 2-vCPU VM a
job's figures move by microseconds a row from run to run, and a change of a tenth of one
cannot be seen there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

import numpy as np  # noqa: E402

from benchmarks.cpu_accounting import summary  # noqa: E402
from transforms.elements import EmbeddedBatch  # noqa: E402
from transforms.formats import make_format  # noqa: E402
from transforms.partition import _PartitionFn  # noqa: E402
from transforms.specs import OutputLayout, OutputSpec, PartitionSpec  # noqa: E402
from transforms.write import DEFAULT_BUFFER_BYTES, DEFAULT_MAX_OPEN_PARTS, _WritePartsFn  # noqa: E402
from twml.feature_ids import feature_id  # noqa: E402

__all__ = ["measure", "main"]

DISTINCT_BATCHES = 8  # taken in turn: more than the caches hold, as the job's batches are


def _batches(batch_size: int, dim: int) -> List[EmbeddedBatch]:
    rng = np.random.default_rng(0)
    return [EmbeddedBatch(rng.integers(0, 1 << 62, size=batch_size, dtype=np.int64),
                          [rng.normal(size=(batch_size, dim)).astype(np.float32)])
            for _ in range(DISTINCT_BATCHES)]


def _run(batches: List[EmbeddedBatch], count: int, shards: int, fmt_name: str, dim: int, root: str) -> float:
    """Thread CPU seconds of partitioning and writing ``count`` batches in one bundle."""
    shutil.rmtree(root, ignore_errors=True)
    layout = OutputLayout(root, "write-step", fmt_name, "none", shards, feature_id("meta.user_id"),
                          records_per_block=100)
    outputs = (OutputSpec("embedding", "output", feature_id("output"), "float32", (dim,)),)
    partition = _PartitionFn(PartitionSpec(shards))
    write = _WritePartsFn(make_format(layout, outputs), DEFAULT_BUFFER_BYTES, DEFAULT_MAX_OPEN_PARTS)
    write.start_bundle()
    start = time.thread_time()
    for i in range(count):
        for element in partition.process(batches[i % len(batches)]):
            for _ in write.process(element):
                pass
    for _ in write.finish_bundle():
        pass
    return time.thread_time() - start


def measure(shards: int = 16, batch_size: int = 4096, dim: int = 128, fmt_name: str = "tfrecord",
            batches: int = 49, rounds: int = 5) -> Dict:
    """The marginal core-us a row of the two steps, one figure a round, and their median."""
    data = _batches(batch_size, dim)
    with tempfile.TemporaryDirectory(prefix="write-step-") as scratch:
        root = str(Path(scratch) / "out")
        _run(data, 10, shards, fmt_name, dim, root)  # warm-up: numba kernels, first files
        values = []
        for _ in range(rounds):
            small = _run(data, batches, shards, fmt_name, dim, root)
            big = _run(data, 2 * batches, shards, fmt_name, dim, root)
            values.append(1e6 * (big - small) / (batches * batch_size))
    return {"shards": shards, "batch_size": batch_size, "dim": dim, "format": fmt_name, "batches": batches,
            "core_us_per_row": summary(values)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128, help="embedding width (float32)")
    parser.add_argument("--format", default="tfrecord", choices=["tfrecord", "block", "parquet"])
    parser.add_argument("--batches", type=int, default=49, help="B: the runs are B and 2B batches")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--result", help="also write the JSON result here")
    args = parser.parse_args(argv)
    result = measure(args.shards, args.batch_size, args.dim, args.format, args.batches, args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.result:
        Path(args.result).write_text(text + "\n")


if __name__ == "__main__":
    main()
