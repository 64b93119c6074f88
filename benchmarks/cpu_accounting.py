"""Where the CPU goes: the job's and its floor's core-microseconds a row, by thread and by step.

    python -m benchmarks.cpu_accounting --config RUN.yaml --input N=PATTERN --input 2N=PATTERN \
        [--repeats R] [--result FILE]

``pipeline_vs_floor`` (``benchmarks.run``) says how far the job is from its floor; this says where
the difference lies. Both run in this one process, on warm paths (each has run once untimed): a
round is the floor at N rows, the job at N, the floor at 2N, the job at 2N, the order of
``benchmarks.run``. For every run it records:

- the CPU time of each of the process's threads (``/proc/self/task``), by kind:
  - ``main``: the thread that runs the floor's loop (reading, feed arrays) or the job's bundles
    (every DoFn of the main stage: the in-process runner with one worker runs them here);
  - ``model calls``: the threads that call the model (``embed-model``, ``floor-model``): the
    Python side of each call;
  - ``tf``: TensorFlow's own threads (``tf_*``), where the model's kernels run;
  - ``other``: the rest, e.g. Arrow's decoding pool and Beam's helpers;
  - ``unattributed``: what the process used beyond these (threads that ended within 0.1 s of a
    snapshot, and the sampler itself, which reads the threads' times every 0.1 s);
- the job's CPU time in each step's own code (``JOB_STEPS``): the thread CPU time spent inside
  the DoFn's ``process`` (and ``finish_bundle``), each element's downstream steps excluded.

Every figure is marginal, (2N run - N run) / N in core-us a row, so set-up and warm-up cancel; a
table and the JSON give the median over the rounds with the median's interval
(``benchmarks.estimate.median_interval``), for the job, the floor and their difference per round.

Limits. Linux only (``/proc``). The in-process runner only (``runner.name: FnApiRunner``, one
worker): other runners run the steps in other processes. Thread CPU comes in clock ticks (10 ms):
at N = 200,000 a thread's figure is good to about 0.05 us a row. The step timing wraps the DoFn
methods of this process (benchmark instrumentation, not part of the job), two ``thread_time``
calls an element: well under 0.01 us a row.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

from benchmarks.estimate import median_interval  # noqa: E402  (after the path fix above)
from benchmarks.floor import FLOOR_MODEL_THREAD_NAME, FloorLoop, rows_and_pattern  # noqa: E402
from benchmarks.window import CLOCK_TICKS  # noqa: E402
from transforms.embed import MODEL_THREAD_NAME  # noqa: E402

__all__ = ["JOB_STEPS", "THREAD_KINDS", "TF_THREAD_PREFIX", "thread_cpu_seconds", "StepClock", "Paths",
           "floor_and_job", "run_rounds", "rounds_arguments", "summary", "account", "main"]

JOB_STEPS: Tuple[Tuple[str, str, Tuple[str, ...], str], ...] = (
    # (module, DoFn class, methods timed, step)
    ("transforms.inputs.parquet", "_ReadRowGroupFn", ("process",), "read"),
    ("transforms.inputs.datarecord", "_ReadDataRecordFileFn", ("process",), "read"),
    ("transforms.validate", "_ValidateAndBatchFn", ("process",), "validate"),
    ("transforms.embed", "_EmbedFn", ("process", "finish_bundle"), "embed (main thread)"),
    ("transforms.partition", "_PartitionFn", ("process",), "partition"),
    ("transforms.write", "_WritePartsFn", ("process", "finish_bundle"), "write parts"),
    ("transforms.write", "_AssembleShardFn", ("process",), "assemble shards"),
    ("transforms.finalize", "_FinalizeFn", ("process",), "publish"),
)
THREAD_KINDS = ("main", "model calls", "tf", "other", "unattributed")
TF_THREAD_PREFIX = "tf_"
"""TensorFlow names its own threads (where the model's kernels run) with this prefix: ``tf_Compute``."""
# The order of the figures in the result and the table: wall, CPU, thread kinds, steps in pipeline order.
_ORDER = {name: i for i, name in enumerate(("s", "process", *THREAD_KINDS, *dict.fromkeys(s for *_, s in JOB_STEPS)))}
MODEL_CALL_THREADS = (MODEL_THREAD_NAME, FLOOR_MODEL_THREAD_NAME)



def thread_cpu_seconds() -> Dict[int, Tuple[str, float]]:
    """{thread id: (its name, CPU seconds so far)} of this process's live threads: the Python
    name where the thread is Python's, else the kernel's (``comm``, e.g. ``tf_Compute``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(tid)] = (names.get(int(tid), comm), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def thread_kind(tid: int, name: str) -> str:
    if tid == threading.main_thread().native_id:
        return "main"
    if name.startswith(MODEL_CALL_THREADS):
        return "model calls"
    if name.startswith(TF_THREAD_PREFIX):
        return "tf"
    return "other"


def cpu_by_kind(before: Dict[int, Tuple[str, float]], after: Dict[int, Tuple[str, float]],
                process_cpu: float) -> Dict[str, float]:
    """CPU seconds between two ``thread_cpu_seconds`` snapshots by ``THREAD_KINDS``; ``unattributed``
    is what the process used (``process_cpu``) beyond the threads in the snapshots."""
    kinds = dict.fromkeys(THREAD_KINDS, 0.0)
    for tid, (name, cpu) in after.items():
        kinds[thread_kind(tid, name)] += cpu - before.get(tid, (name, 0.0))[1]
    kinds["unattributed"] = max(0.0, process_cpu - sum(kinds.values()))
    return kinds


class StepClock:
    """Thread CPU seconds spent inside the job's DoFn methods (``JOB_STEPS``), by step, while
    installed (``with StepClock() as clock: ...``; ``clock.take()`` returns and resets them).

    A generator method is timed while it computes, not while it is suspended at a ``yield``
    (the runner then runs the element's downstream steps).
    """

    def __init__(self, steps: Sequence[Tuple[str, str, Tuple[str, ...], str]] = JOB_STEPS):
        self._steps = steps
        self._seconds: Dict[str, float] = collections.Counter()
        self._lock = threading.Lock()
        self._saved: List[Tuple[type, str, Callable]] = []

    def _add(self, step: str, seconds: float) -> None:
        with self._lock:
            self._seconds[step] += seconds

    def _timed_iter(self, results: Iterable, step: str) -> Iterator:
        results = iter(results)
        while True:
            start = time.thread_time()
            try:
                item = next(results)
            except StopIteration:
                self._add(step, time.thread_time() - start)
                return
            self._add(step, time.thread_time() - start)
            yield item

    def _wrap(self, method: Callable, step: str) -> Callable:
        clock = self

        def timed(dofn, *args, **kwargs):
            start = time.thread_time()
            results = method(dofn, *args, **kwargs)
            clock._add(step, time.thread_time() - start)
            return None if results is None else clock._timed_iter(results, step)
        return timed

    def __enter__(self) -> "StepClock":
        for module, name, methods, step in self._steps:
            cls = getattr(importlib.import_module(module), name)
            for method in methods:
                original = cls.__dict__[method]
                self._saved.append((cls, method, original))
                setattr(cls, method, self._wrap(original, step))
        return self

    def __exit__(self, *exc) -> None:
        for cls, method, original in reversed(self._saved):
            setattr(cls, method, original)
        self._saved = []

    def take(self) -> Dict[str, float]:
        with self._lock:
            seconds, self._seconds = dict(self._seconds), collections.Counter()
        return seconds


class _ThreadSampler:
    """Thread CPU snapshots every ``period`` seconds while running, so a thread that ends during
    the run (a model-call pool is shut down with its bundle) still counts, up to its last
    ``period``."""

    def __init__(self, period: float = 0.1):
        self._period = period
        self._latest: Dict[int, Tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-accounting", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self._latest.update(thread_cpu_seconds())

    def __enter__(self) -> "_ThreadSampler":
        self.first = thread_cpu_seconds()  # the run's starting point
        self._latest = dict(self.first)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._latest.update(thread_cpu_seconds())

    @property
    def latest(self) -> Dict[int, Tuple[str, float]]:
        return {tid: seen for tid, seen in self._latest.items() if seen[0] != "cpu-accounting"}


def _measured(run: Callable[[], object], clock: Optional[StepClock] = None) -> Dict[str, Dict[str, float]]:
    """Run ``run()`` and return {"wall": {"s": ...}, "cpu": {"process": ...}, "threads": {kind: s},
    "steps": {step: s}}."""
    if clock is not None:
        clock.take()
    with _ThreadSampler() as sampler:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": {"s": wall}, "cpu": {"process": cpu}, "threads": cpu_by_kind(sampler.first, sampler.latest, cpu),
            "steps": clock.take() if clock is not None else {}}


def _marginal_summaries(small: List[Dict], big: List[Dict], rows: int) -> Dict[str, Dict[str, Dict]]:
    """{group: {name: summary}} of the per-round marginal core-us a row of each figure."""
    out: Dict[str, Dict[str, Dict]] = {group: {} for group in ("wall", "cpu", "threads", "steps")}
    for group in out:
        names = sorted({n for run in small + big for n in run[group]}, key=lambda n: (_ORDER.get(n, len(_ORDER)), n))
        for name in names:
            values = [1e6 * (b[group].get(name, 0.0) - a[group].get(name, 0.0)) / rows for a, b in zip(small, big)]
            out[group][name] = summary(values)
    return out


def summary(values: List[float]) -> Dict:
    """The median of per-round figures with its interval (``benchmarks.estimate.median_interval``)."""
    low, high, coverage = median_interval(values)
    return {"median": round(statistics.median(values), 3), "low": round(low, 3), "high": round(high, 3),
            "coverage": round(coverage, 3), "values": [round(v, 3) for v in values]}


class Paths(NamedTuple):
    """The floor and the job of one run config, to run in this process at N and 2N rows."""
    rows: int                          # N
    floor: Callable[[int], None]       # run the floor at a size
    job: Callable[[int], None]         # run the job at a size
    floor_settings: Dict


def floor_and_job(config_path: str, inputs: Dict[int, str]) -> Paths:
    """The floor and the job of ``config_path`` on the N and 2N ``inputs``, in this process (the
    in-process runner, so that the job's steps run here)."""
    from pipeline.config import load_config
    from pipeline.job import run_export
    from pipeline.plan import preflight
    from transforms.tf_runtime import import_tensorflow

    rows = min(inputs)
    if sorted(inputs) != [rows, 2 * rows]:
        raise ValueError(f"--input takes N and 2N rows, got {sorted(inputs)}")
    config = load_config(config_path)
    if config.runner.name != "FnApiRunner":
        raise ValueError(f"runner.name {config.runner.name!r}: the steps are timed in this process, "
                         "which needs the in-process FnApiRunner")
    import_tensorflow()
    floor = FloorLoop(config_path)

    def export(size: int) -> None:
        run = config.model_copy(update={"input": config.input.model_copy(update={"path": inputs[size]})})
        manifest = run_export(preflight(run, overwrite=True))
        if manifest["rows_read"] != size:
            raise ValueError(f"{inputs[size]}: the job read {manifest['rows_read']} rows, expected {size}")

    return Paths(rows, lambda size: floor.run(inputs[size]), export, floor.settings)


def run_rounds(paths: Paths, repeats: int, measure: Callable[[str, int, Callable[[], None]], Dict]
               ) -> Dict[str, Dict[int, List[Dict]]]:
    """Each path once untimed at N (the first run of a path in a process is the slowest), the heap
    frozen as ``embedding-export run`` freezes it, then ``repeats`` rounds of the floor at N, the
    job at N, the floor at 2N, the job at 2N (the order of ``benchmarks.run``); each run is
    ``measure(path, size, run)``. Returns {path: {size: [measurement per round]}}."""
    from pipeline.job import freeze_heap

    rows, floor, job = paths.rows, paths.floor, paths.job
    floor(rows)
    job(rows)
    freeze_heap()  # as `embedding-export run` does in its own process
    runs: Dict[str, Dict[int, List[Dict]]] = {"floor": {rows: [], 2 * rows: []}, "job": {rows: [], 2 * rows: []}}
    for _ in range(repeats):
        for size in (rows, 2 * rows):
            runs["floor"][size].append(measure("floor", size, lambda: floor(size)))
            runs["job"][size].append(measure("job", size, lambda: job(size)))
    return runs


def account(config_path: str, inputs: Dict[int, str], repeats: int = 5) -> Dict:
    """Time the floor and the job of ``config_path`` on the N and 2N ``inputs``, ``repeats``
    rounds; the per-thread and per-step marginal CPU a row of each, and of their difference."""
    paths = floor_and_job(config_path, inputs)
    rows = paths.rows
    with StepClock() as clock:
        runs = run_rounds(paths, repeats, lambda path, size, run: _measured(run, clock if path == "job" else None))
    result: Dict = {"rows": rows, "repeats": repeats, "config": config_path, "floor_settings": paths.floor_settings}
    for path in ("floor", "job"):
        result[path] = _marginal_summaries(runs[path][rows], runs[path][2 * rows], rows)
    # The difference per round: job run minus floor run at each size, then the marginal.
    difference = {size: [{group: {name: job[group].get(name, 0.0) - flo[group].get(name, 0.0)
                                   for name in set(job[group]) | set(flo[group]) if group != "steps"}
                          for group in job}
                         for flo, job in zip(runs["floor"][size], runs["job"][size])]
                  for size in (rows, 2 * rows)}
    result["job_minus_floor"] = _marginal_summaries(difference[rows], difference[2 * rows], rows)
    return result


def table(result: Dict) -> str:
    """The result as text: one line a figure, the job, the floor and their difference."""
    def cell(summary: Optional[Dict]) -> str:
        if summary is None:
            return f"{'':>22s}"
        return f"{summary['median']:7.2f} [{summary['low']:6.2f}, {summary['high']:6.2f}]"

    lines = [f"core-us a row, marginal between {result['rows']:,} and {2 * result['rows']:,} rows; median "
             f"[interval] over {result['repeats']} rounds",
             f"{'':24s} {'job':>22s} {'floor':>22s} {'job - floor':>22s}"]
    rows = [("wall (us a row)", "wall", "s"), ("CPU, whole process", "cpu", "process")]
    rows += [(f"thread: {kind}", "threads", kind) for kind in THREAD_KINDS]
    for label, group, name in rows:
        lines.append(f"{label:24s} {cell(result['job'][group].get(name))} {cell(result['floor'][group].get(name))} "
                     f"{cell(result['job_minus_floor'][group].get(name))}")
    for step, summary in result["job"].get("steps", {}).items():
        lines.append(f"{'step: ' + step:24s} {cell(summary)}")
    return "\n".join(lines)


def rounds_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the arguments of ``floor_and_job`` and ``run_rounds``: --config, --input (N
    and 2N), --repeats."""
    parser.add_argument("--config", required=True, help="the export's run config (YAML), runner FnApiRunner")
    parser.add_argument("--input", action="append", required=True, metavar="ROWS=PATTERN", type=rows_and_pattern,
                        help="an input of ROWS rows: give N and 2N")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = rounds_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--result", help="also write the JSON result here")
    args = parser.parse_args(argv)
    result = account(args.config, dict(args.input), args.repeats)
    print(table(result))
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
