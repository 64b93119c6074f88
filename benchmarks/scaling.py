"""The real export job in a child process: its time and peak RSS, and how both scale with rows.

    python benchmarks/scaling.py --rows N [--steps 1,2,4] [--verify] [--model reference|demo|small] [--json FILE]
                                 [--workdir DIR [--reuse-data]] [--set section.key=value ...]

runs ``pipeline.job.run_export`` on N x each step generated rows (default N, 2N and 4N; one
fresh process each, so the peak RSS of each run is its own) and prints rows/s, marginal rows/s
between the steps, peak RSS per run, its growth and the change of rows/s from the first size to
the last, and with ``--verify`` whether the largest export verifies. ``run_child`` /
``run_export_child`` are also what ``benchmarks/run.py`` uses.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

__all__ = ["ChildFailed", "ChildRun", "run_child", "run_export_child", "scaling_study", "main"]


class ChildFailed(RuntimeError):
    """A benchmark child process exited non-zero; the message holds the end of its log."""


@dataclass
class ChildRun:
    """One finished child process.

    Args:
      result: the JSON object the child wrote to its ``--result`` file.
      peak_rss_mb: the peak resident set of the child, MiB: the VmHWM it reported
        (``own_peak_rss_mb``) when it did, else ``wait4``'s figure (which also counts processes
        it waited for, and the parent's size at the fork: see ``own_peak_rss_mb``).
      wall_s: wall time of the whole process, start-up included.
      log: the file holding the child's stdout and stderr.
    """
    result: Dict[str, Any]
    peak_rss_mb: float
    wall_s: float
    log: str


def _maxrss_mb(ru_maxrss: int) -> float:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def _tail(path: str, lines: int = 40) -> str:
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def run_child(module: str, args: Sequence[str], log_path: str) -> ChildRun:
    """Run ``python -m benchmarks.<module> ARGS --result FILE`` and collect its result and peak RSS.

    The peak RSS is the child's own VmHWM when its result carries ``own_peak_rss_mb``, else
    wait4()'s on that one process (Linux folds in the peak of processes the child itself waited
    for, e.g. multi-process runner workers, and the parent's resident set at the fork).
    """
    result_path = log_path + ".result.json"
    if os.path.exists(result_path):
        os.remove(result_path)
    # The last run's output (hundreds of MB) is still being written back to disk: finish that
    # before this run starts, not during it.
    os.sync()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, "--result", result_path]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise ChildFailed(f"{' '.join(cmd[1:4])} ... exited with {proc.returncode}; end of {log_path}:\n"
                          f"{_tail(log_path)}")
    try:
        result = json.loads(Path(result_path).read_text())
    except (OSError, ValueError) as err:
        raise ChildFailed(f"{module} child wrote no readable result ({err}); end of {log_path}:\n"
                          f"{_tail(log_path)}") from None
    own = result.get("own_peak_rss_mb") if isinstance(result, dict) else None
    return ChildRun(result, own if own else _maxrss_mb(usage.ru_maxrss), wall, log_path)


def run_export_child(raw_config: Dict[str, Any], workdir: str, label: str) -> ChildRun:
    """Run the real job (``pipeline.job.run_export``) on ``raw_config`` in a fresh child process.

    The child's result: ``seconds`` (run_export's wall time), rows_read / rows_written /
    rows_rejected, num_shards, output_bytes. Raises ChildFailed when the job fails or when it did
    not write every row it read.
    """
    import yaml

    config_path = os.path.join(workdir, f"{label}.yaml")
    Path(config_path).write_text(yaml.safe_dump(raw_config, sort_keys=False))
    run = run_child("scaling", ["--export-config", config_path], os.path.join(workdir, f"{label}.log"))
    r = run.result
    if r["rows_read"] != r["rows_written"] + r["rows_rejected"]:
        raise ChildFailed(f"{label}: rows_read {r['rows_read']} != written {r['rows_written']} + "
                          f"rejected {r['rows_rejected']}")
    return run


def _export_once(config_path: str) -> Dict[str, Any]:
    """Child side of run_export_child: one export, timed around run_export alone."""
    from benchmarks.window import TimedWindow, own_peak_rss_mb
    from pipeline.config import load_config
    from pipeline.job import freeze_heap, run_export
    from pipeline.plan import preflight

    config = load_config(config_path)
    # Import what the job imports before the timing: TF's import alone took 1 to 4 s from run to
    # run, a fixed cost that the pair cancels only on average and whose swings swamped it.
    import apache_beam.runners.portability.fn_api_runner  # noqa: F401
    from transforms.tf_runtime import import_tensorflow
    import_tensorflow()
    with TimedWindow() as window:
        plan = preflight(config, overwrite=True)
        freeze_heap()  # as `embedding-export run` does in its own process
        manifest = run_export(plan)
    seconds = window.wall_s
    shards = manifest.get("shards") or []
    return {
        "seconds": seconds,
        "window": window.result(),
        "rows_read": int(manifest["rows_read"]),
        "rows_written": int(manifest["rows_written"]),
        "rows_rejected": int(manifest["rows_rejected"]),
        "num_shards": len(shards),
        "output_bytes": sum(int(s.get("bytes", 0)) for s in shards),
        "own_peak_rss_mb": own_peak_rss_mb(),
        "wait4_style_peak_rss_mb": _maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }


def marginal_rate(rows_a: int, seconds_a: float, rows_b: int, seconds_b: float) -> Optional[float]:
    """(rows_b - rows_a) / (seconds_b - seconds_a): the cost of the extra rows alone; None if not > 0."""
    extra = seconds_b - seconds_a
    return (rows_b - rows_a) / extra if extra > 0 else None


def machine_info() -> Dict[str, Any]:
    """What the numbers were measured on."""
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import psutil
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def scaling_study(rows: int, model: str, workdir: str, overrides: Sequence[str] = (),
                  steps: Sequence[int] = (1, 2, 4), repeats: int = 1, log=print, verify: bool = False,
                  reuse_data: bool = False) -> Dict[str, Any]:
    """Run the real job at rows x each step; rows/s, marginal rows/s and peak RSS at each size.

    With ``repeats`` > 1 each size runs that many times: the fastest time and the largest peak
    count. With ``verify`` the last (largest) export is checked by ``pipeline.tools.verify.verify_export``
    (every shard, record and count) and ``verified`` says whether it held. With ``reuse_data`` the
    inputs already in ``workdir`` are used when they hold every size (``data.prepare_inputs``).
    """
    from benchmarks import data
    from pipeline.config import apply_overrides, parse_config

    sizes = [rows * s for s in steps]
    log(f"generating {max(sizes):,} rows and the {model} model in {workdir}")
    patterns = data.prepare_inputs(workdir, sizes, model, reuse=reuse_data)
    model_path = data.prepare_model(workdir, model)
    points: List[Dict[str, Any]] = []
    for size in sizes:
        out_dir = os.path.join(workdir, "out", f"pipeline-{size}")
        raw = apply_overrides(data.export_config(patterns[size], model_path, out_dir, model), overrides)
        parse_config(raw, "benchmark config")  # fail here, not in the child, on a bad --set
        runs = []
        for _ in range(repeats):
            shutil.rmtree(out_dir, ignore_errors=True)  # not timed: deleting an earlier run's output
            runs.append(run_export_child(raw, workdir, f"scaling-{size}"))
        seconds = min(run.result["seconds"] for run in runs)
        peak = max(run.peak_rss_mb for run in runs)
        best = min(runs, key=lambda run: run.result["seconds"])
        window = best.result.get("window") or {}
        points.append({"rows": size, "seconds": round(seconds, 3), "rows_per_s": round(size / seconds, 1),
                       "peak_rss_mb": round(peak, 1),
                       "cpu_us_per_row": round(1e6 * window["cpu_s"] / size, 3) if window else None,
                       "foreign_cpu_share": window.get("foreign_cpu_share")})
        log(f"  {size:>10,} rows: {seconds:8.2f} s  {size / seconds:10,.0f} rows/s  peak RSS {peak:,.0f} MiB")
    for prev, point in zip(points, points[1:]):
        rate = marginal_rate(prev["rows"], prev["seconds"], point["rows"], point["seconds"])
        point["marginal_rows_per_s"] = round(rate, 1) if rate else None
    first, last = points[0]["peak_rss_mb"], points[-1]["peak_rss_mb"]
    result = {"rows": rows, "model": model, "repeats": repeats, "steps": list(steps), "points": points,
              "peak_rss_mb": max(p["peak_rss_mb"] for p in points),
              "rss_growth": round(last / first - 1.0, 4) if first else None,
              "rate_change": round(points[-1]["rows_per_s"] / points[0]["rows_per_s"] - 1.0, 4),
              "machine": machine_info()}
    if verify:
        from pipeline.tools.verify import verify_export

        out_dir = os.path.join(workdir, "out", f"pipeline-{sizes[-1]}")
        log(f"verifying the {sizes[-1]:,}-row export")
        report = verify_export(out_dir, processes=os.cpu_count() or 1)
        result["verified"] = {"rows": sizes[-1], "ok": report.ok, "records": report.records,
                              "problems": [str(p) for p in report.problems]}
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="N: runs at N, 2N and 4N rows")
    parser.add_argument("--model", choices=("reference", "demo", "small"), default="reference",
                        help="the benchmark model (default: the reference model of benchmarks/README.md)")
    parser.add_argument("--small", dest="model", action="store_const", const="small", help="= --model small")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest counts")
    parser.add_argument("--steps", default="1,2,4",
                        help="the sizes as multiples of N, comma-separated (default 1,2,4; e.g. 1,50 for N and 50N)")
    parser.add_argument("--verify", action="store_true", help="check the largest export with verify_export")
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--workdir", help="keep data, model and outputs here (default: a temp dir, removed)")
    parser.add_argument("--reuse-data", action="store_true",
                        help="use the --workdir's generated inputs when they hold every size (10^7 rows take minutes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the export config, e.g. model.batch_size=8192")
    parser.add_argument("--export-config", help=argparse.SUPPRESS)  # child mode: one export
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_config:
        Path(args.result).write_text(json.dumps(_export_once(args.export_config)))
        return 0
    if args.rows <= 0 or args.repeats <= 0:
        parser.error("--rows and --repeats must be > 0")
    try:
        steps = [int(x) for x in args.steps.split(",")]
    except ValueError:
        parser.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    if not steps or min(steps) <= 0 or steps != sorted(set(steps)):
        parser.error(f"--steps must be increasing positive integers, got {args.steps!r}")
    from benchmarks.data import print_result, work_directory
    with work_directory(args.workdir, "embedding-export-scaling-") as workdir:
        result = scaling_study(args.rows, args.model, workdir, args.overrides, steps=steps, repeats=args.repeats,
                               log=lambda msg: print(msg, file=sys.stderr), verify=args.verify,
                               reuse_data=args.reuse_data)
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    # Import by package name so that everything defined here is importable (and picklable by
    # reference) as benchmarks.scaling, not __main__.
    from benchmarks.scaling import main as _main
    sys.exit(_main())
