"""Where the CPU goes, by native function: perf's samples of the job and its floor, in core-us a row.

    python -m benchmarks.native_profile --config RUN.yaml --input N=PATTERN --input 2N=PATTERN \
        [--repeats R] [--by kind|dso|symbol] [--thread KIND] [--top K] [--frequency HZ] [--result FILE]

``benchmarks.cpu_accounting`` says which thread and which step the job's extra CPU is in; this
says which native function. It runs the same rounds in one process (``cpu_accounting.run_rounds``:
warm paths, the floor and the job at N and 2N rows) under ``perf record -e cpu-clock``, which
samples every thread, and kernel code too where ``perf_event_paranoid`` allows (as root, say).
The child notes when each run starts and ends on CLOCK_MONOTONIC, which perf is told to use, and
each sample is counted in the run it falls in, by thread kind, DSO and symbol:

- ``main``: the process's first thread, which runs the floor's loop and the job's bundles;
- ``tf``: TensorFlow's threads (``tf_*``), where the model's kernels run;
- ``other``: the rest (the model-call threads, Arrow's pool, Beam's helpers).

Every figure is marginal, (2N run - N run) / N, a sample being 1 / frequency seconds of CPU: the
median over the rounds in core-us a row, for the job, the floor and the job minus the floor.

Reading it. Python 3.11's frames have no names for perf: Python code shows as libpython's
``_PyEval_EvalFrameDefault`` and friends, so this names the native work (numpy's loops, ``memmove``,
the kernel's page-cache copy) and ``benchmarks.cpu_accounting`` the Python steps. Code compiled at
run time (numba's kernels, oneDNN's) is ``perf-PID.map [unknown]``. At 2,000 Hz and N = 200,000 a
sample is 0.0025 core-us a row, and one round's figure is good to a few hundredths.

Limits. Linux with ``perf`` on the PATH; the in-process runner only (as cpu_accounting).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

from benchmarks.cpu_accounting import (TF_THREAD_PREFIX, floor_and_job, rounds_arguments, run_rounds,  # noqa: E402
                                       summary)

__all__ = ["Sample", "Span", "BY", "parse_samples", "count_samples", "marginal", "table", "main"]

PERF_FIELDS = "comm,pid,tid,time,ip,sym,dso"
"""The fields asked of ``perf script``, in the order ``parse_samples`` reads them."""
# "python 18374/18374 13852.110403:  ffffffff821eb5f6 copy_mc_enhanced_fast_string ([kernel.kallsyms])"
_SAMPLE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s+(?P<time>\d+\.\d+):\s+[0-9a-f]+\s+"
                     r"(?P<symbol>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


class Sample(NamedTuple):
    kind: str      # "main", "tf" or "other"
    time: float    # CLOCK_MONOTONIC seconds
    dso: str       # file name only
    symbol: str


class Span(NamedTuple):
    path: str      # "floor" or "job"
    size: int      # rows
    round: int
    start: float   # CLOCK_MONOTONIC seconds
    end: float


BY = {"kind": lambda s: (s.kind,), "dso": lambda s: (s.kind, s.dso), "symbol": lambda s: (s.kind, s.dso, s.symbol)}
"""What a figure is for: a thread kind, a kind and DSO, or a kind, DSO and symbol."""


def _thread_kind(comm: str, pid: str, tid: str) -> str:
    if pid == tid:
        return "main"
    return "tf" if comm.startswith(TF_THREAD_PREFIX) else "other"


def parse_samples(lines: Iterable[str]) -> Iterator[Sample]:
    """The samples in ``perf script -F comm,pid,tid,time,ip,sym,dso`` output (other lines skipped)."""
    for line in lines:
        found = _SAMPLE.match(line)
        if found:
            yield Sample(_thread_kind(found["comm"], found["pid"], found["tid"]), float(found["time"]),
                         found["dso"].rsplit("/", 1)[-1], _OFFSET.sub("", found["symbol"]))


def count_samples(samples: Iterable[Sample], spans: Sequence[Span], by: str = "symbol"
                  ) -> Dict[Span, collections.Counter]:
    """{run: Counter({figure key: samples})} of the samples inside each run; the rest (start-up,
    warm-up, the gaps between runs) are left out."""
    key = BY[by]
    ordered = sorted(spans, key=lambda s: s.start)
    counts: Dict[Span, collections.Counter] = {span: collections.Counter() for span in ordered}
    starts = [span.start for span in ordered]
    for sample in samples:
        i = bisect.bisect_right(starts, sample.time) - 1
        if i >= 0 and sample.time <= ordered[i].end:
            counts[ordered[i]][key(sample)] += 1
    return counts


def marginal(counts: Dict[Span, collections.Counter], frequency: float) -> Dict:
    """{"rows": N, "rounds": R, "job" / "floor" / "job_minus_floor": {figure key: summary}}: per
    round (2N run - N run) / N in core-us a row, summarised as the median with its interval."""
    sizes = sorted({span.size for span in counts})
    if len(sizes) != 2 or sizes[1] != 2 * sizes[0]:
        raise ValueError(f"runs of N and 2N rows expected, got sizes {sizes}")
    rows = sizes[0]
    rounds = sorted({span.round for span in counts})
    by_run = {(span.path, span.size, span.round): found for span, found in counts.items()}
    keys = sorted({k for found in counts.values() for k in found})
    per_round = {path: {k: [] for k in keys} for path in ("job", "floor", "job_minus_floor")}
    for r in rounds:
        for k in keys:
            value = {path: (by_run[(path, 2 * rows, r)][k] - by_run[(path, rows, r)][k]) * 1e6 / frequency / rows
                     for path in ("job", "floor")}
            per_round["job"][k].append(value["job"])
            per_round["floor"][k].append(value["floor"])
            per_round["job_minus_floor"][k].append(value["job"] - value["floor"])
    result: Dict = {"rows": rows, "rounds": len(rounds)}
    for path, figures in per_round.items():
        result[path] = {k: summary(v) for k, v in figures.items()}
    return result


def table(result: Dict, top: int = 40, thread: Optional[str] = None) -> str:
    """The figures whose job-minus-floor median is largest in size, one a line."""
    def cell(summary: Dict) -> str:
        return f"{summary['median']:7.3f} [{summary['low']:6.3f}, {summary['high']:6.3f}]"

    keys = [k for k in result["job"] if thread is None or k[0] == thread]
    keys.sort(key=lambda k: -abs(result["job_minus_floor"][k]["median"]))
    totals = {path: sum(result[path][k]["median"] for k in keys) for path in ("job", "floor")}
    lines = [f"core-us a row, marginal between {result['rows']:,} and {2 * result['rows']:,} rows; "
             f"median [interval] over {result['rounds']} rounds"
             + (f"; thread kind {thread}" if thread else ""),
             f"sum of the medians: job {totals['job']:.3f}, floor {totals['floor']:.3f}",
             f"{'job':>24s} {'floor':>24s} {'job - floor':>24s}"]
    for k in keys[:top]:
        lines.append(f"{cell(result['job'][k])} {cell(result['floor'][k])} {cell(result['job_minus_floor'][k])}  "
                     + " | ".join(k))
    return "\n".join(lines)


def _run_child(args: argparse.Namespace) -> int:
    """Under perf: the rounds of ``cpu_accounting.run_rounds``, each run's span written to ``--spans``."""
    spans: List[Span] = []

    def measure(path: str, size: int, run) -> Dict:
        start = time.clock_gettime(time.CLOCK_MONOTONIC)
        run()
        end = time.clock_gettime(time.CLOCK_MONOTONIC)
        spans.append(Span(path, size, sum(1 for s in spans if (s.path, s.size) == (path, size)), start, end))
        return {}

    run_rounds(floor_and_job(args.config, dict(args.input)), args.repeats, measure)
    Path(args.spans).write_text(json.dumps([span._asdict() for span in spans]))
    return 0


def profile(config: str, inputs: Sequence[Tuple[int, str]], repeats: int, frequency: int, by: str) -> Dict:
    """Run the rounds under ``perf record`` and return ``marginal`` of their samples."""
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not on the PATH (Debian: apt-get install linux-perf)")
    with tempfile.TemporaryDirectory(prefix="native-profile-") as tmp:
        data, spans_path = str(Path(tmp) / "perf.data"), str(Path(tmp) / "spans.json")
        child = [sys.executable, "-m", "benchmarks.native_profile", "--config", config,
                 *[f"--input={rows}={pattern}" for rows, pattern in inputs], "--repeats", str(repeats),
                 "--spans", spans_path]
        subprocess.run([perf, "record", "-q", "-k", "CLOCK_MONOTONIC", "-F", str(frequency), "-e", "cpu-clock",
                        "-o", data, "--", *child], cwd=str(REPO), check=True)
        spans = [Span(**span) for span in json.loads(Path(spans_path).read_text())]
        with subprocess.Popen([perf, "script", "-i", data, "-F", PERF_FIELDS], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, errors="replace") as script:
            counts = count_samples(parse_samples(script.stdout), spans, by)
    result = marginal(counts, frequency)
    result.update({"config": config, "frequency": frequency, "by": by})
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = rounds_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--frequency", type=int, default=2000, help="samples a second of CPU (default 2000)")
    parser.add_argument("--by", choices=sorted(BY), default="symbol", help="what a figure is for (default symbol)")
    parser.add_argument("--thread", choices=("main", "tf", "other"), help="show one thread kind only")
    parser.add_argument("--top", type=int, default=40, help="lines to show (default 40)")
    parser.add_argument("--result", help="also write the JSON result here")
    parser.add_argument("--spans", help=argparse.SUPPRESS)   # set on the child that perf runs
    args = parser.parse_args(argv)
    if args.spans:
        return _run_child(args)
    result = profile(args.config, args.input, args.repeats, args.frequency, args.by)
    print(table(result, args.top, args.thread))
    if args.result:
        figures = {path: [{"key": list(k), **v} for k, v in result[path].items()]
                   for path in ("job", "floor", "job_minus_floor")}
        Path(args.result).write_text(json.dumps({**result, **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
