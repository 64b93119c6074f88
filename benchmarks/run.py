"""The benchmark harness (benchmarks/README.md): the export against its floor, the model's limit
and the naive job.

    python benchmarks/run.py --rows N [--naive-rows M] [--datarecord-rows D] [--json FILE]
                             [--model reference|demo|small] [--repeats R] [--workdir DIR]
                             [--set section.key=value ...]

Generates the reference model and 2N users of its shape once (in a temp dir; the DataRecord form
of 2D of them too), then measures, each in a fresh child process: the bare model in a plain loop
(``limit``, see ``benchmarks/limit.py``), the floor (reading the same input + feeds + model, no
Beam, the job's threading: ``benchmarks/floor.py``), the real job (``pipeline.job.run_export``),
the DataRecord-input job and its floor, and the naive job (``benchmarks/naive.py``), each at N and
2N rows, plus the batch encoder against thriftpy2 (``benchmarks/encode_bench.py``). Every rate
is the median of R estimates with its spread (``benchmarks.estimate``): N / (t(2N) - t(N)) of
each pair of runs, loops and jobs alike; a job's ratio to its floor is the median over R rounds
of (the round's pair rate / the floor's pair rate), each size's floor run next to the job's. Prints
one JSON object
(and writes it to FILE); exits with EXIT_INVALID when the result is not to be trusted
(``invalid_reasons``). See benchmarks/README.md for the fields.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

from benchmarks import estimate  # noqa: E402
from benchmarks.scaling import ChildRun  # noqa: E402

__all__ = ["run_benchmarks", "main"]

DEFAULT_ROWS = 200_000
DEFAULT_REPEATS = 9
EXIT_INVALID = 3
"""Exit status of a run whose result is invalid (``invalid_reasons``); the JSON is still written."""
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


ENCODE_ROUND_RECORDS = 20_000
"""thriftpy2's records in one round of the encoder benchmark (about 150 ms of it)."""


def _encode_benchmark(rows: int, rounds: int, log: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """``benchmarks/encode_bench.py``'s result in ``rounds`` rounds, or None when that module is not there."""
    try:
        from benchmarks.encode_bench import run_encode_benchmark
    except ModuleNotFoundError as err:
        if err.name != "benchmarks.encode_bench":
            raise
        log("benchmarks/encode_bench.py not found: encode_rows_per_s and encode_vs_thriftpy2 are null")
        return None
    return run_encode_benchmark(rows, sample=ENCODE_ROUND_RECORDS * rounds, rounds=rounds)


def _repeat(run_once: Callable[[int], ChildRun], sizes: Sequence[int], repeats: int) -> Dict[int, List[ChildRun]]:
    """``repeats`` rounds of one run per size, sizes alternating so that drift hits all sizes alike."""
    runs: Dict[int, List[ChildRun]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            runs[size].append(run_once(size))
    return runs


def _loop_runs(run: ChildRun) -> Dict[str, Any]:
    """A loop child's result, with its runs by size ({rows: [window, ...]})."""
    return {**run.result, "runs": {int(k): v for k, v in run.result["runs"].items()}}


def _limit(model_path: str, pattern: str, rows: int, batch_size: int, shape: Dict[str, Any],
           intra_op_threads: int, repeats: int, log_path: str) -> Dict[str, Any]:
    """One limit child (``benchmarks/limit.py``): its result, its runs by size, and their rates.

    Each repeat times N then 2N rows: one marginal-rate estimate per repeat, as for the jobs.
    """
    from benchmarks.scaling import run_child

    run = run_child("limit", ["--model", model_path, "--input", pattern, "--rows", str(rows),
                              "--rows", str(2 * rows), "--batch-size", str(batch_size),
                              "--dense-dim", str(shape["dense_dim"]), "--sparse-length", str(shape["sparse_length"]),
                              "--repeats", str(repeats), "--intra-op-threads", str(intra_op_threads)], log_path)
    found = _loop_runs(run)
    return {**found, "rate": estimate.summarize(estimate.pair_rates(*estimate.loop_pairs(found["runs"])))}


def _floor(config: Dict[str, Any], inputs: Dict[int, str], repeats: int, workdir: str, label: str
           ) -> Dict[str, Any]:
    """One floor child (``benchmarks/floor.py``) over ``inputs`` ({rows: pattern}): its result and runs."""
    import yaml

    from benchmarks.scaling import run_child

    config_path = os.path.join(workdir, f"{label}.yaml")
    Path(config_path).write_text(yaml.safe_dump(config, sort_keys=False))
    run = run_child("floor", ["--config", config_path, *[f"--input={rows}={pattern}" for rows, pattern in
                                                          sorted(inputs.items())], "--repeats", str(repeats)],
                    os.path.join(workdir, f"{label}.log"))
    return _loop_runs(run)


def _against_floor(rows: int, repeats: int, floor_once: Callable[[int, int], Dict[str, Any]],
                   job_once: Callable[[int], ChildRun]) -> Tuple[Dict[str, Any], Dict[int, List[ChildRun]], List]:
    """``repeats`` rounds of: the floor at N rows, the job at N rows, the floor at 2N rows, the job
    at 2N rows (``floor_once(size, i)``: one floor child's result). Returns the floor (its runs of
    every round, its rate), the job's runs by size, and one estimate of job / floor per round: the
    round's job pair rate over its floor pair rate (None where a 2N run was not slower).

    Each size's floor run sits next to the job's run of that size, so a change of the machine's
    speed between the N and the 2N runs stretches both sides of the estimate alike: with the
    speed s1 at N and s2 at 2N, both pair times are (2 s2 - s1) times the work of N rows, and their
    ratio keeps only the rates. Timing the floor's pair before the job's left that drift in. What
    it cannot cancel is the jitter of the job's own fixed work (about 2 s of a 4 s run at 200,000
    rows: pipeline construction, the model's load, the stages after the last bundle).
    """
    floor_runs: Dict[int, List[Dict[str, Any]]] = {rows: [], 2 * rows: []}
    job_runs: Dict[int, List[ChildRun]] = {rows: [], 2 * rows: []}
    found: Dict[str, Any] = {}
    for i in range(repeats):
        for size in (rows, 2 * rows):
            found = floor_once(size, i)
            floor_runs[size].extend(found["runs"][size])
            job_runs[size].append(job_once(size))
    floor_rates = estimate.pair_rates(*estimate.loop_pairs(floor_runs))
    job_windows = {size: [run.result["window"] for run in runs] for size, runs in job_runs.items()}
    job_rates = estimate.pair_rates(rows, job_windows[rows], job_windows[2 * rows])
    ratios = [job / floor if job and floor else None for job, floor in zip(job_rates, floor_rates)]
    return {**found, "runs": floor_runs, "rate": estimate.summarize(floor_rates)}, job_runs, ratios


def _windows(runs: Dict[int, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    return [w for windows in runs.values() for w in windows]


def _job_summary(rows: int, runs: Dict[int, List[ChildRun]]) -> Dict[str, Any]:
    """Rates of a job's (N, 2N) pairs: the summary, CPU per row, other processes' share, seconds."""
    small = [r.result["window"] for r in runs[rows]]
    big = [r.result["window"] for r in runs[2 * rows]]
    return {"rate": estimate.summarize(estimate.pair_rates(rows, small, big)),
            "cpu_us_per_row": estimate.pair_cpu_us_per_row(rows, small, big),
            "foreign": estimate.foreign_share(small + big),
            "seconds": {str(size): [round(r.result["window"]["wall_s"], 3) for r in found]
                        for size, found in runs.items()},
            "process_seconds": {str(size): [round(r.wall_s, 3) for r in found] for size, found in runs.items()},
            "peak_rss_mb": {str(size): _round(max(r.peak_rss_mb for r in found)) for size, found in runs.items()}}


def run_benchmarks(rows: int, naive_rows: int, workdir: str, model: str = "reference",
                   overrides: Sequence[str] = (), repeats: int = DEFAULT_REPEATS,
                   log: Callable[[str], None] = print, datarecord_rows: Optional[int] = None) -> Dict[str, Any]:
    """Measure everything at ``rows`` (naive job at ``naive_rows``, DataRecord input at
    ``datarecord_rows``, default rows // 2, 0 to leave it out) in ``workdir``; the result dict,
    with ``valid`` and ``invalid_reasons`` (see ``benchmarks.estimate``)."""
    from benchmarks import data
    from benchmarks.scaling import machine_info, run_child, run_export_child
    from benchmarks.window import load_average
    from pipeline.config import apply_overrides, parse_config

    started = time.perf_counter()
    load_before = load_average()
    dr_rows = rows // 2 if datarecord_rows is None else datarecord_rows
    sizes = sorted({rows, 2 * rows, naive_rows, 2 * naive_rows} | ({dr_rows, 2 * dr_rows} if dr_rows else set()))
    log(f"generating {max(sizes):,} users and the {model} model in {workdir}")
    patterns = data.prepare_inputs(workdir, sizes, model)
    model_path = data.prepare_model(workdir, model)
    shape = data.model_kwargs(model)
    dr_patterns = {}
    if dr_rows:
        log(f"writing {2 * dr_rows:,} of the users as DataRecords")
        dr_patterns = data.prepare_datarecord_inputs(workdir, {s: patterns[s] for s in (dr_rows, 2 * dr_rows)},
                                                     model)

    def config(size: int, label: str = "pipeline") -> Dict[str, Any]:
        out = os.path.join(workdir, "out", f"{label}-{size}")
        if label == "datarecord":
            raw = data.datarecord_export_config(dr_patterns[size], model_path, out, model)
        else:
            raw = data.export_config(patterns[size], model_path, out, model)
        return apply_overrides(raw, overrides)

    effective = parse_config(config(rows), "benchmark config (after --set)")
    batch_size, num_shards = effective.model.batch_size, effective.partition.num_shards
    intra = effective.model.intra_op_threads

    # The limit is the faster of the model as a plain loop with TF's default threads and the
    # model as the export runs it (the config's intra-op threads, that many loops side by side).
    log(f"limit: the bare model on preloaded batches of {batch_size}, {rows:,} and {2 * rows:,} rows")
    limits = {"tf_default": _limit(model_path, patterns[2 * rows], rows, batch_size, shape, 0, repeats,
                                   os.path.join(workdir, "limit.log"))}
    if intra > 0:
        limits["job_threads"] = _limit(model_path, patterns[2 * rows], rows, batch_size, shape, intra, repeats,
                                       os.path.join(workdir, "limit-job-threads.log"))
    for name, found in limits.items():
        log(f"  {name}: {found['loops']} loop(s) of {found['tf_intra_op_threads']} intra-op threads: "
            f"{found['rate']['rows_per_s'] or 0:,.0f} rows/s (spread {found['rate']['spread']})")
    limit_mode = max(limits, key=lambda name: limits[name]["rate"]["rows_per_s"] or 0)
    limit = limits[limit_mode]

    def export_once(size: int, label: str = "pipeline") -> ChildRun:
        log(f"{label}: run_export on {size:,} rows")
        # Not timed: a run over an earlier run's output would spend its time deleting it.
        shutil.rmtree(os.path.join(workdir, "out", f"{label}-{size}"), ignore_errors=True)
        run = run_export_child(config(size, label), workdir, f"{label}-{size}")
        if run.result["rows_written"] != size:
            raise RuntimeError(f"the {label} export wrote {run.result['rows_written']} of {size} rows "
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

    def floor_once(input_kind: str, inputs: Dict[int, str]) -> Callable[[int, int], Dict[str, Any]]:
        """One floor child over ``inputs[size]`` for the ``input_kind`` ("pipeline": Parquet, or
        "datarecord") export, in round ``i``."""
        label = "floor" if input_kind == "pipeline" else f"{input_kind}-floor"

        def run(size: int, i: int) -> Dict[str, Any]:
            log(f"{label}: read + feeds + model, no Beam, {size:,} rows (round {i + 1})")
            found = _floor(config(size, input_kind), {size: inputs[size]}, 1, workdir, f"{label}-{size}-{i}")
            log(f"  {found['runs'][size][0]['wall_s']:.2f} s")
            return found
        return run

    # Each round times the floor and the job side by side at each size (``_against_floor``).
    floor, pipeline_runs, floor_ratios = _against_floor(
        rows, repeats, floor_once("pipeline", {rows: patterns[rows], 2 * rows: patterns[2 * rows]}), export_once)
    pipeline = _job_summary(rows, pipeline_runs)
    ratios = {"pipeline_vs_floor": estimate.summarize_ratio(floor_ratios)}
    datarecord = None
    if dr_rows:
        dr_floor, dr_runs, dr_ratios = _against_floor(
            dr_rows, repeats, floor_once("datarecord", {dr_rows: dr_patterns[dr_rows],
                                                        2 * dr_rows: dr_patterns[2 * dr_rows]}),
            lambda size: export_once(size, "datarecord"))
        dr_job = _job_summary(dr_rows, dr_runs)
        ratios["datarecord_pipeline_vs_floor"] = estimate.summarize_ratio(dr_ratios)
        datarecord = {
            "rows": dr_rows,
            "floor_rows_per_s": dr_floor["rate"]["rows_per_s"],
            "pipeline_rows_per_s": dr_job["rate"]["rows_per_s"],
            "pipeline_vs_floor": ratios["datarecord_pipeline_vs_floor"]["ratio"],
            "pipeline_vs_floor_spread": ratios["datarecord_pipeline_vs_floor"]["spread"],
            "pipeline_vs_floor_interval": ratios["datarecord_pipeline_vs_floor"]["interval"],
            "pipeline_vs_parquet_pipeline": _ratio(dr_job["rate"]["rows_per_s"], pipeline["rate"]["rows_per_s"]),
            "floor": dr_floor["rate"], "pipeline": dr_job["rate"],
            "cpu_us_per_row": {"floor": estimate.pair_cpu_us_per_row(*estimate.loop_pairs(dr_floor["runs"])),
                               "pipeline": dr_job["cpu_us_per_row"]},
            "foreign_cpu_share": {"floor": estimate.foreign_share(_windows(dr_floor["runs"])),
                                  "pipeline": dr_job["foreign"]},
            "seconds": {"pipeline": dr_job["seconds"]},
            "peak_rss_mb": dr_job["peak_rss_mb"],
            "record_bytes": round(sum(os.path.getsize(f) for f in glob.glob(dr_patterns[dr_rows]))
                                  / dr_rows, 1),
        }
    naive_runs = _repeat(naive_once, (naive_rows, 2 * naive_rows), repeats)
    naive = _job_summary(naive_rows, naive_runs)

    log(f"encode: batch encoder vs thriftpy2 on {rows:,} records")
    encode = _encode_benchmark(rows, repeats, log) or {}

    limit_rate, floor_rate = limit["rate"]["rows_per_s"], floor["rate"]["rows_per_s"]
    pipeline_rate, naive_rate = pipeline["rate"]["rows_per_s"], naive["rate"]["rows_per_s"]
    rates = {f"limit_{name}": found["rate"] for name, found in limits.items()}
    rates.update({"floor": floor["rate"], "pipeline": pipeline["rate"], "naive": naive["rate"]})
    if datarecord:
        rates.update({"datarecord_floor": datarecord["floor"], "datarecord_pipeline": datarecord["pipeline"]})
    for side in ("encode", "thriftpy2"):
        if encode.get(f"{side}_rounds"):
            rates[side] = estimate.summarize(encode[f"{side}_rounds"])
    if encode.get("ratio_rounds"):
        ratios["encode_vs_thriftpy2"] = estimate.summarize_ratio(encode["ratio_rounds"])
    foreign = {f"limit_{name}": estimate.foreign_share(_windows(found["runs"])) for name, found in limits.items()}
    foreign.update({"floor": estimate.foreign_share(_windows(floor["runs"])), "pipeline": pipeline["foreign"],
                    "naive": naive["foreign"]})
    if datarecord:
        foreign.update({"datarecord_" + k: v for k, v in datarecord["foreign_cpu_share"].items()})
    if encode.get("window"):
        foreign["encode"] = estimate.foreign_share([encode["window"]])
    cpu = {f"limit_{name}": estimate.pair_cpu_us_per_row(*estimate.loop_pairs(found["runs"]))
           for name, found in limits.items()}
    cpu.update({"floor": estimate.pair_cpu_us_per_row(*estimate.loop_pairs(floor["runs"])),
                "pipeline": pipeline["cpu_us_per_row"],
                "naive": naive["cpu_us_per_row"]})

    reasons: List[str] = []
    for name, summary in {**rates, **ratios}.items():
        estimate.check_spread(name, summary, reasons)
    for name, share in foreign.items():
        estimate.check_foreign(name, share, reasons)
    estimate.check_order("the job", pipeline_rate, "the model alone (limit)", limit_rate, reasons)
    estimate.check_ratio_order("the job", "its floor", ratios["pipeline_vs_floor"], reasons)
    estimate.check_order("the floor", floor_rate, "the model alone (limit)", limit_rate, reasons)
    estimate.check_order("the naive job", naive_rate, "the job", pipeline_rate, reasons)
    if datarecord:
        estimate.check_ratio_order("the DataRecord-input job", "its floor", ratios["datarecord_pipeline_vs_floor"],
                                   reasons)
        estimate.check_order("the DataRecord-input floor", datarecord["floor_rows_per_s"],
                             "the model alone (limit)", limit_rate, reasons)
    pipeline_rss = pipeline["peak_rss_mb"]
    return {
        "valid": not reasons,
        "invalid_reasons": reasons,
        "rows": rows,
        "naive_rows": naive_rows,
        "floor_rows_per_s": floor_rate,
        "pipeline_rows_per_s": pipeline_rate,
        "pipeline_vs_floor": ratios["pipeline_vs_floor"]["ratio"],
        "pipeline_vs_floor_spread": ratios["pipeline_vs_floor"]["spread"],
        "pipeline_vs_floor_interval": ratios["pipeline_vs_floor"]["interval"],
        "pipeline_vs_floor_cpu": _ratio(cpu["floor"], cpu["pipeline"]),
        "limit_rows_per_s": limit_rate,
        "pipeline_vs_limit": _ratio(pipeline_rate, limit_rate),
        "naive_rows_per_s": naive_rate,
        "pipeline_vs_naive": _ratio(pipeline_rate, naive_rate),
        "encode_rows_per_s": _round(encode.get("encode_rows_per_s")),
        "encode_vs_thriftpy2": _round(encode.get("encode_vs_thriftpy2"), 2),
        "peak_rss_mb": max(pipeline_rss.values()),
        "peak_rss_mb_by_rows": pipeline_rss,
        "naive_peak_rss_mb": max(naive["peak_rss_mb"].values()),
        "spreads": {name: summary["spread"] for name, summary in {**rates, **ratios}.items()},
        "rates": rates,
        "ratios": ratios,
        "cpu_us_per_row": cpu,
        "foreign_cpu_share": foreign,
        "load_average": {"before": load_before, "after": load_average()},
        "datarecord": datarecord,
        "limit_mode": limit_mode,
        "limit_modes": {name: {"rows_per_s": found["rate"]["rows_per_s"], "spread": found["rate"]["spread"],
                               "loops": found["loops"], "tf_intra_op_threads": found["tf_intra_op_threads"]}
                        for name, found in limits.items()},
        "floor": {"loops": floor["loops"], "queued": floor["queued"], "batch_size": floor["batch_size"]},
        "repeats": repeats,
        "seconds": {
            "limit_modes": {name: {str(size): [round(w["wall_s"], 4) for w in found["runs"][size]]
                                   for size in sorted(found["runs"])} for name, found in limits.items()},
            "floor": {str(size): [round(w["wall_s"], 4) for w in floor["runs"][size]] for size in sorted(floor["runs"])},
            "pipeline": pipeline["seconds"],
            "naive": naive["seconds"],
            "pipeline_process": pipeline["process_seconds"],
        },
        "batch_size": batch_size,
        "num_shards": num_shards,
        "intra_op_threads": intra,
        "output_bytes": pipeline_runs[2 * rows][-1].result["output_bytes"],
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
                        help="(N, 2N) pairs of each job, timed runs of each loop per size; every rate is the "
                             f"median of their estimates (default {DEFAULT_REPEATS})")
    parser.add_argument("--datarecord-rows", type=int,
                        help="D: the DataRecord-input export and its floor run at D and 2D rows (default N // 2; "
                             "0 leaves them out)")
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
    if args.datarecord_rows is not None and args.datarecord_rows < 0:
        parser.error("--datarecord-rows must be >= 0")

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    from benchmarks.data import print_result, work_directory
    with work_directory(args.workdir, "embedding-export-bench-") as workdir:
        result = run_benchmarks(args.rows, naive_rows, workdir, args.model, args.overrides, args.repeats, log,
                                args.datarecord_rows)
    print_result(result, args.json)
    if not result["valid"]:
        log("INVALID result, not to be published:")
        for reason in result["invalid_reasons"]:
            log(f"  - {reason}")
        return EXIT_INVALID
    return 0


if __name__ == "__main__":
    from benchmarks.run import main as _main
    sys.exit(_main())
