"""The benchmark harness (benchmarks/README.md): the export vs the model's limit vs the naive job.

    python benchmarks/run.py --rows N [--naive-rows M] [--json FILE] [--model reference|demo|small]
                             [--repeats R] [--workdir DIR] [--set section.key=value ...]

Generates the reference model and 2N users of its shape once (in a temp dir), then measures, each
in a fresh child process: the bare model in a plain loop (``limit``: the faster of TF's default
threads and the export's thread setting, see ``benchmarks/limit.py``), the real job
(``pipeline.job.run_export``), and the naive job (``benchmarks/naive.py``), each at N and 2N rows
(the naive job at M and 2M), plus the batch encoder against thriftpy2 (``benchmarks/
encode_bench.py``). Throughputs are marginal, rows / (time(2N) - time(N)), so start-up and other
fixed costs cancel and the ratios compare per-row cost with per-row cost. Prints one JSON object
(and writes it to FILE); see benchmarks/README.md for the fields.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

from benchmarks.scaling import ChildRun  # noqa: E402

__all__ = ["run_benchmarks", "main"]

DEFAULT_ROWS = 200_000
DEFAULT_REPEATS = 3
MODELS = ("reference", "demo", "small")  # benchmarks.data.MODELS, without importing Beam for --help


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return float(f"{a / b:.4g}") if a and b else None


def _round(x: Optional[float], digits: int = 1) -> Optional[float]:
    return round(x, digits) if x is not None else None


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {}
    for dist in ("embedding-export", "apache-beam", "tensorflow-cpu", "tensorflow", "pyarrow", "numpy",
                 "thriftpy2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _encode_benchmark(rows: int, log: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """``benchmarks/encode_bench.py``'s result, or None when that module is not there."""
    try:
        from benchmarks.encode_bench import run_encode_benchmark
    except ModuleNotFoundError as err:
        if err.name != "benchmarks.encode_bench":
            raise
        log("benchmarks/encode_bench.py not found: encode_rows_per_s and encode_vs_thriftpy2 are null")
        return None
    return run_encode_benchmark(rows)


def _repeat(run_once: Callable[[int], ChildRun], sizes: Sequence[int], repeats: int) -> Dict[int, List[ChildRun]]:
    """``repeats`` rounds of one run per size, sizes alternating so that drift hits all sizes alike."""
    runs: Dict[int, List[ChildRun]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            runs[size].append(run_once(size))
    return runs


def _limit(model_path: str, pattern: str, rows: int, batch_size: int, shape: Dict[str, Any],
           intra_op_threads: int, log_path: str) -> Dict[str, Any]:
    """One limit child (``benchmarks/limit.py``): {"seconds": {r: s}, "rows_per_s", "loops", ...}.

    The loop has nothing to start (model loaded, batches in memory, a warm-up call before
    timing), so its rate is rows / seconds, the faster of the two sizes: the same per-row cost
    the marginal rates of the jobs estimate, without the noise of a difference of two timings.
    """
    from benchmarks.scaling import run_child

    run = run_child("limit", ["--model", model_path, "--input", pattern, "--rows", str(rows),
                              "--rows", str(2 * rows), "--batch-size", str(batch_size),
                              "--dense-dim", str(shape["dense_dim"]), "--sparse-length", str(shape["sparse_length"]),
                              "--repeats", "3", "--intra-op-threads", str(intra_op_threads)], log_path)
    seconds = {int(k): v for k, v in run.result["seconds"].items()}
    return {**run.result, "seconds": seconds, "rows_per_s": max(r / t for r, t in seconds.items())}


def run_benchmarks(rows: int, naive_rows: int, workdir: str, model: str = "reference",
                   overrides: Sequence[str] = (), repeats: int = DEFAULT_REPEATS,
                   log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure everything at ``rows`` (naive job at ``naive_rows``) in ``workdir``; the result dict.

    Each child run (pipeline and naive, at each size) happens ``repeats`` times and the fastest
    counts: on a shared machine the slower runs are the ones something else got in the way of.
    """
    from benchmarks import data
    from benchmarks.scaling import machine_info, marginal_rate, run_child, run_export_child
    from pipeline.config import apply_overrides, parse_config

    started = time.perf_counter()
    sizes = sorted({rows, 2 * rows, naive_rows, 2 * naive_rows})
    log(f"generating {max(sizes):,} users and the {model} model in {workdir}")
    patterns = data.prepare_inputs(workdir, sizes, model)
    model_path = data.prepare_model(workdir, model)
    shape = data.model_kwargs(model)

    def config(size: int) -> Dict[str, Any]:
        raw = data.export_config(patterns[size], model_path, os.path.join(workdir, "out", f"pipeline-{size}"),
                                 model)
        return apply_overrides(raw, overrides)

    effective = parse_config(config(rows), "benchmark config (after --set)")
    batch_size, num_shards = effective.model.batch_size, effective.partition.num_shards
    intra = effective.model.intra_op_threads

    # The limit is the faster of the model as a plain loop with TF's default threads and the
    # model as the export runs it (the config's intra-op threads, that many loops side by side).
    log(f"limit: the bare model on preloaded batches of {batch_size}, {rows:,} and {2 * rows:,} rows")
    limits = {"tf_default": _limit(model_path, patterns[2 * rows], rows, batch_size, shape, 0,
                                   os.path.join(workdir, "limit.log"))}
    if intra > 0:
        limits["job_threads"] = _limit(model_path, patterns[2 * rows], rows, batch_size, shape, intra,
                                       os.path.join(workdir, "limit-job-threads.log"))
    for name, found in limits.items():
        log(f"  {name}: {found['loops']} loop(s) of {found['tf_intra_op_threads']} intra-op threads: "
            f"{found['rows_per_s'] or 0:,.0f} rows/s")
    limit_mode = max(limits, key=lambda name: limits[name]["rows_per_s"] or 0)
    limit_s = limits[limit_mode]["seconds"]

    def export_once(size: int) -> ChildRun:
        log(f"pipeline: run_export on {size:,} rows")
        # Not timed: a run over an earlier run's output would spend its time deleting it.
        shutil.rmtree(os.path.join(workdir, "out", f"pipeline-{size}"), ignore_errors=True)
        run = run_export_child(config(size), workdir, f"pipeline-{size}")
        if run.result["rows_written"] != size:
            raise RuntimeError(f"the pipeline wrote {run.result['rows_written']} of {size} rows "
                               f"({run.result['rows_rejected']} rejected); see {run.log}")
        log(f"  {run.result['seconds']:.2f} s, peak RSS {run.peak_rss_mb:,.0f} MiB")
        return run

    def naive_once(size: int) -> ChildRun:
        log(f"naive: the obvious Beam job on {size:,} rows")
        out_dir = os.path.join(workdir, "out", f"naive-{size}")
        shutil.rmtree(out_dir, ignore_errors=True)
        run = run_child("naive", [
            "--input", patterns[size], "--model", model_path, "--output", os.path.join(out_dir, "part"),
            "--batch-size", str(batch_size), "--sparse-length", str(shape["sparse_length"]),
            "--num-shards", str(num_shards), "--runner", effective.runner.name,
            *[f"--runner-option={opt}" for opt in effective.runner.options]],
            os.path.join(workdir, f"naive-{size}.log"))
        if run.result["rows_written"] != size:
            raise RuntimeError(f"the naive job embedded {run.result['rows_written']} of {size} rows; "
                               f"see {run.log}")
        log(f"  {run.result['seconds']:.2f} s, peak RSS {run.peak_rss_mb:,.0f} MiB")
        return run

    pipeline = _repeat(export_once, (rows, 2 * rows), repeats)
    naive = _repeat(naive_once, (naive_rows, 2 * naive_rows), repeats)
    pipeline_s = {size: min(r.result["seconds"] for r in runs) for size, runs in pipeline.items()}
    naive_s = {size: min(r.result["seconds"] for r in runs) for size, runs in naive.items()}
    pipeline_rss = {size: max(r.peak_rss_mb for r in runs) for size, runs in pipeline.items()}

    log(f"encode: batch encoder vs thriftpy2 on {rows:,} records")
    encode = _encode_benchmark(rows, log)

    limit_rate = limits[limit_mode]["rows_per_s"]
    pipeline_rate = marginal_rate(rows, pipeline_s[rows], 2 * rows, pipeline_s[2 * rows])
    naive_rate = marginal_rate(naive_rows, naive_s[naive_rows], 2 * naive_rows, naive_s[2 * naive_rows])
    encode = encode or {}
    return {
        "rows": rows,
        "naive_rows": naive_rows,
        "limit_rows_per_s": _round(limit_rate),
        "pipeline_rows_per_s": _round(pipeline_rate),
        "naive_rows_per_s": _round(naive_rate),
        "pipeline_vs_limit": _ratio(pipeline_rate, limit_rate),
        "pipeline_vs_naive": _ratio(pipeline_rate, naive_rate),
        "encode_rows_per_s": _round(encode.get("encode_rows_per_s")),
        "encode_vs_thriftpy2": _round(encode.get("encode_vs_thriftpy2"), 2),
        "peak_rss_mb": _round(max(pipeline_rss.values())),
        "peak_rss_mb_by_rows": {str(size): _round(mb) for size, mb in pipeline_rss.items()},
        "naive_peak_rss_mb": _round(max(r.peak_rss_mb for runs in naive.values() for r in runs)),
        "limit_mode": limit_mode,
        "limit_modes": {name: {"rows_per_s": _round(found["rows_per_s"]), "loops": found["loops"],
                               "tf_intra_op_threads": found["tf_intra_op_threads"]}
                        for name, found in limits.items()},
        "repeats": repeats,
        "seconds": {
            "limit": {str(size): round(t, 6) for size, t in sorted(limit_s.items())},
            "limit_modes": {name: {str(size): round(t, 6) for size, t in sorted(found["seconds"].items())}
                            for name, found in limits.items()},
            "pipeline": {str(size): round(t, 3) for size, t in pipeline_s.items()},
            "naive": {str(size): round(t, 3) for size, t in naive_s.items()},
            "pipeline_all": {str(size): [round(r.result["seconds"], 3) for r in runs]
                             for size, runs in pipeline.items()},
            "naive_all": {str(size): [round(r.result["seconds"], 3) for r in runs]
                          for size, runs in naive.items()},
            "pipeline_process": {str(size): [round(r.wall_s, 3) for r in runs] for size, runs in pipeline.items()},
        },
        "batch_size": batch_size,
        "num_shards": num_shards,
        "intra_op_threads": intra,
        "output_bytes": pipeline[2 * rows][-1].result["output_bytes"],
        "runner": {"name": effective.runner.name, "options": list(effective.runner.options)},
        "overrides": list(overrides),
        "model": {"kind": model, **shape, "hidden": list(shape["hidden"])},
        "encode": encode or None,
        "machine": machine_info(),
        "versions": _versions(),
        "harness_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="N: the runs are at N and 2N rows")
    parser.add_argument("--naive-rows", type=int,
                        help="M: the naive job runs at M and 2M rows (default N; smaller saves time, "
                             "and marginal rates still compare)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="runs of the pipeline and the naive job at each size; the fastest counts "
                             f"(default {DEFAULT_REPEATS})")
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--model", choices=MODELS, default="reference",
                        help="the model and data of its shape (default: the reference model of benchmarks/README.md)")
    parser.add_argument("--small", dest="model", action="store_const", const="small",
                        help="= --model small: a tiny model (for smoke tests)")
    parser.add_argument("--workdir", help="keep data, model, logs and outputs here (default: a temp dir, removed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the export config, e.g. model.batch_size=8192 (repeatable)")
    args = parser.parse_args(argv)
    naive_rows = args.naive_rows if args.naive_rows is not None else args.rows
    if args.rows <= 0 or naive_rows <= 0 or args.repeats <= 0:
        parser.error("--rows, --naive-rows and --repeats must be > 0")

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    from benchmarks.data import print_result, work_directory
    with work_directory(args.workdir, "embedding-export-bench-") as workdir:
        result = run_benchmarks(args.rows, naive_rows, workdir, args.model, args.overrides, args.repeats, log)
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    from benchmarks.run import main as _main
    sys.exit(_main())
