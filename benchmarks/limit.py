"""The physical limit: the bare model called in a plain loop on preloaded batches.

    python -m benchmarks.limit --model PATH --input PATTERN --rows N --rows 2N --batch-size B \
        --dense-dim D --sparse-length L [--intra-op-threads T] --result FILE

Reads the rows of PATTERN once (files in name order), cuts the first N and the first 2N rows into
batches of B (the export's batch size), and times ``signature(dense=..., sparse_ids=...)`` over
each set of batches. No Beam, no reading, no encoding, no writing: whatever the export does beyond
this is its overhead. Each set is timed ``--repeats`` times, the sizes alternating, each run in
a ``benchmarks.window.TimedWindow`` (wall, CPU, other processes' share of the machine).

Without ``--intra-op-threads`` (or with 0) this is one loop with TF's default thread pools (each
op spread over all cores). With T > 0 it is the model as the export runs it with
``model.intra_op_threads: T``: TF's intra-op pool set to T threads and cores // T loops side by
side, taking the batches in turn (``transforms.embed.concurrent_model_calls``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

__all__ = ["time_model_loop", "measure_limit", "main"]


def time_model_loop(call, batches: Sequence, loops: int = 1) -> float:
    """Seconds to call ``call(dense=, sparse_ids=)`` once per batch and fetch every result, from
    ``loops`` threads side by side (TF releases the GIL while it computes)."""
    def run(batch) -> None:
        dense, sparse = batch
        call(dense=dense, sparse_ids=sparse)["embedding"].numpy()

    start = time.perf_counter()
    if loops <= 1:
        for batch in batches:
            run(batch)
    else:
        with ThreadPoolExecutor(max_workers=loops) as pool:
            for _ in pool.map(run, batches):
                pass
    return time.perf_counter() - start


def measure_limit(model_path: str, pattern: str, row_counts: Sequence[int], batch_size: int,
                  dense_dim: int, sparse_length: int, signature: str = "serving_default",
                  repeats: int = 2, intra_op_threads: int = 0) -> Dict:
    """Time the bare model over the first r rows of ``pattern`` for each r in ``row_counts``.

    Returns {"runs": {r: [TimedWindow result of each repeat]}, "batch_size", "tf_intra_op_threads",
    "loops"}.
    """
    from benchmarks.data import batches, load_arrays
    from benchmarks.window import TimedWindow
    from transforms.embed import concurrent_model_calls
    from transforms.tf_runtime import import_tensorflow

    tf = import_tensorflow()  # with the job's allocator: the limit is the model as the job runs it

    loops = concurrent_model_calls(intra_op_threads)
    if intra_op_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    model = tf.saved_model.load(model_path)
    call = model.signatures[signature]
    dense, sparse = load_arrays(pattern, dense_dim, sparse_length)
    if max(row_counts) > len(dense):
        raise ValueError(f"{pattern} holds {len(dense)} rows, fewer than {max(row_counts)}")
    # One untimed pass at the smallest size (as the floor): a fresh process's first pass is slower.
    time_model_loop(call, batches(dense, sparse, min(row_counts), batch_size), loops)
    runs: Dict[int, List[Dict]] = {rows: [] for rows in row_counts}
    for _ in range(repeats):
        for rows in row_counts:
            work = batches(dense, sparse, rows, batch_size)
            with TimedWindow() as window:
                time_model_loop(call, work, loops)
            runs[rows].append(window.result())
    return {"runs": {str(r): found for r, found in runs.items()}, "batch_size": batch_size,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(), "loops": loops}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--input", required=True, help="Parquet file pattern")
    parser.add_argument("--rows", type=int, action="append", required=True, help="repeatable")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--dense-dim", type=int, required=True)
    parser.add_argument("--sparse-length", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="0: one loop, TF's default threads; T > 0: cores // T loops of T threads each")
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args(argv)
    result = measure_limit(args.model, args.input, args.rows, args.batch_size, args.dense_dim,
                           args.sparse_length, args.signature, args.repeats, args.intra_op_threads)
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from benchmarks.limit import main as _main
    sys.exit(_main())
