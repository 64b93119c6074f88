"""Estimators for rates measured on a shared machine, and the checks that decide whether to trust them.

A rate here is always the median of several independent estimates, reported with

- its **spread**: the width of the median's confidence interval over the median. The interval is
  distribution-free (order statistics of the estimates, ``median_interval``): the narrowest
  [x_(k), x_(n+1-k)] that holds the true median with at least ``CONFIDENCE``; with fewer than
  six estimates no such interval exists and it is their whole range (five: 94%; three: 75%).
  This is how far the published figure could be off, and it narrows as estimates accumulate,
  so a noisy machine can still earn a figure by measuring longer, and a few estimates that
  happen to agree cannot;
- its **iqr**, the interquartile range over the median (how far apart the middle half of the
  estimates lie: how noisy one estimate is, which no number of estimates shrinks), and its
  **range**, (max - min) / median, so a reader sees how far one run disagrees with another.

How the estimates are made:

- every rate is a marginal rate: one estimate per *pair* of runs, N rows then 2N rows back to
  back, N / (t(2N) - t(N)). For a job (the export, the naive job) the pair cancels start-up
  (interpreter, imports, model load, finalisation); for a loop (the model limit, the floor),
  its filling and draining (the first batch read while the model waits, the last calls while
  a core idles), which cost the floor a few percent of a whole-run rate that the job's pairs
  did not pay; and both runs of a pair see nearly the same machine;
- a ratio of a job to its floor: one estimate per *round*, the job's pair rate over the rate of
  the floor runs taken just before it, so that a slow minute of the machine (a shared VM's
  speed drifts by 10-20% from minute to minute, idle or not) slows both sides of an estimate.

``invalid_reasons`` lists why a result must not be published: a spread over ``MAX_SPREAD`` (or a
single estimate, which has none), a pair whose 2N run was not slower than its N run, other
processes using more than ``MAX_FOREIGN_SHARE`` of the CPUs during the runs, or an ordering that
cannot be true (the job faster than the model alone, the floor faster than the model alone, the
naive job faster than the job; the job faster than its floor by the whole interval of their ratio).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["MAX_SPREAD", "CONFIDENCE", "MAX_FOREIGN_SHARE", "PLAUSIBLE_SLACK", "summarize", "summarize_ratio",
           "median_interval", "iqr_of", "loop_pairs", "pair_rates", "pair_cpu_us_per_row",
           "foreign_share", "check_spread", "check_order", "check_ratio_order", "check_foreign"]

MAX_SPREAD = 0.15
"""Largest spread (the median's interval, (high - low) / median) of a rate that is still published."""
CONFIDENCE = 0.95
"""The confidence the median's interval is built for (reached from six estimates on)."""
MAX_FOREIGN_SHARE = 0.10
"""Largest median share of the machine's CPUs that other processes may use during a measurement."""
PLAUSIBLE_SLACK = 0.05
"""A rate may exceed the one bounding it by this much (the two medians' own noise) before it is
called impossible."""


def iqr_of(values: Sequence[float]) -> float:
    """Interquartile range / median of ``values`` (quartiles by the inclusive method: for three
    values, half their range); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(values)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float, float]:
    """(low, high, coverage): the distribution-free confidence interval of the median of ``values``.

    The k-th smallest and k-th largest of n independent estimates bracket the true median unless
    fewer than k of them fall on one side of it, so the interval's coverage is
    1 - 2 P(Binomial(n, 1/2) < k); k is the largest that still reaches ``confidence``. Below six
    estimates not even k = 1 does (five: 1 - 2/32 = 94%), and the interval is the whole range
    with the coverage it has.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2 ** n

    k = 1
    while k + 1 <= n - k and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def _summary(estimates: Sequence[Optional[float]], name: str, digits: int) -> Dict[str, Any]:
    good = [e for e in estimates if e is not None and e > 0]
    listed = [None if e is None else round(e, digits) for e in estimates]
    if not good:
        return {name: None, "spread": None, "interval": None, "iqr": None, "range": None, "min": None, "max": None,
                "n": 0, "estimates": listed}
    mid = statistics.median(good)
    low, high, coverage = median_interval(good)
    return {name: round(mid, digits), "spread": round((high - low) / mid, 4),
            "interval": {"low": round(low, digits), "high": round(high, digits), "coverage": round(coverage, 4)},
            "iqr": round(iqr_of(good), 4), "range": round((max(good) - min(good)) / mid, 4),
            "min": round(min(good), digits), "max": round(max(good), digits), "n": len(good), "estimates": listed}


def summarize(estimates: Sequence[Optional[float]]) -> Dict[str, Any]:
    """{"rows_per_s": median, "spread", "interval" {"low", "high", "coverage"}, "iqr", "range", "min",
    "max", "n", "estimates"} of the valid (> 0) estimates; all but n and estimates None when there
    are none."""
    return _summary(estimates, "rows_per_s", 1)


def summarize_ratio(estimates: Sequence[Optional[float]]) -> Dict[str, Any]:
    """``summarize`` for ratio estimates: {"ratio": median, "spread", "range", ...}."""
    return _summary(estimates, "ratio", 4)


def loop_pairs(runs: Dict[int, List[Dict[str, Any]]]) -> Tuple[int, List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(N, the N runs, the 2N runs) of a loop's timed runs ({N: [window, ...], 2N: [...]}, each
    repeat running N then 2N), for ``pair_rates`` and ``pair_cpu_us_per_row``."""
    rows = min(runs)
    if sorted(runs) != [rows, 2 * rows]:
        raise ValueError(f"a loop's runs must be at N and 2N rows, got {sorted(runs)}")
    return rows, runs[rows], runs[2 * rows]


def pair_rates(rows: int, small: Sequence[Dict[str, Any]], big: Sequence[Dict[str, Any]]) -> List[Optional[float]]:
    """Marginal rate of each (N run, 2N run) pair, in run order; None where 2N was not slower."""
    out: List[Optional[float]] = []
    for a, b in zip(small, big):
        extra = b["wall_s"] - a["wall_s"]
        out.append(rows / extra if extra > 0 else None)
    return out


def pair_cpu_us_per_row(rows: int, small: Sequence[Dict[str, Any]], big: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Median marginal CPU microseconds per row over the pairs: (cpu(2N) - cpu(N)) / N."""
    values = [1e6 * (b["cpu_s"] - a["cpu_s"]) / rows for a, b in zip(small, big)]
    return round(statistics.median(values), 3) if values else None


def foreign_share(windows: Sequence[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Median and max share of the CPUs other processes used over the windows (None if unknown)."""
    shares = [w["foreign_cpu_share"] for w in windows if w.get("foreign_cpu_share") is not None]
    if not shares:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(shares), 4), "max": round(max(shares), 4)}


def check_spread(name: str, summary: Dict[str, Any], reasons: List[str]) -> None:
    if summary["n"] == 0:
        reasons.append(f"{name}: no valid estimate")
    elif len(summary["estimates"]) < 2:
        reasons.append(f"{name}: a single estimate has no spread to judge it by (use --repeats 2 or more)")
    elif summary["n"] < len(summary["estimates"]):
        reasons.append(f"{name}: {len(summary['estimates']) - summary['n']} of {len(summary['estimates'])} "
                       "pairs had a 2N run no slower than the N run")
    if summary["spread"] is not None and summary["spread"] > MAX_SPREAD:
        interval = summary["interval"]
        reasons.append(f"{name}: spread {summary['spread']:.0%} over {summary['n']} estimates "
                       f"(more than {MAX_SPREAD:.0%}: the median lies in [{interval['low']:,}, {interval['high']:,}] "
                       f"with {interval['coverage']:.0%} confidence; one estimate's iqr {summary['iqr']:.0%})")


def check_order(fast_name: str, fast: Optional[float], bound_name: str, bound: Optional[float],
                reasons: List[str]) -> None:
    """``fast`` must not exceed ``bound`` (by more than PLAUSIBLE_SLACK)."""
    if fast and bound and fast > bound * (1 + PLAUSIBLE_SLACK):
        reasons.append(f"{fast_name} ({fast:,.0f} rows/s) is faster than {bound_name} ({bound:,.0f} rows/s), "
                       "which bounds it")


def check_ratio_order(fast_name: str, bound_name: str, ratio: Dict[str, Any], reasons: List[str]) -> None:
    """A ratio ``fast / bound`` measured round by round must not lie above 1 (by more than
    PLAUSIBLE_SLACK) over its whole interval: its median alone may, by noise."""
    interval = ratio.get("interval")
    if interval and interval["low"] > 1 + PLAUSIBLE_SLACK:
        reasons.append(f"{fast_name} is faster than {bound_name}, which bounds it: their ratio lies in "
                       f"[{interval['low']}, {interval['high']}] with {interval['coverage']:.0%} confidence")


def check_foreign(name: str, share: Dict[str, Optional[float]], reasons: List[str]) -> None:
    median = share.get("median")
    if median is not None and median > MAX_FOREIGN_SHARE:
        reasons.append(f"{name}: other processes used {median:.0%} of the CPUs during its runs "
                       f"(median; max {share['max']:.0%}; more than {MAX_FOREIGN_SHARE:.0%})")
