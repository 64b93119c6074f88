"""A timed window: wall time, this process's CPU time, and what the rest of the machine did meanwhile.

Every benchmark child times its measured section with ``TimedWindow``, so each figure comes with
the evidence needed to trust it or not:

- ``cpu_s``: CPU time of this process, all threads, and of the children it waited for
  (``getrusage``); on a loaded machine wall time stretches, CPU time much less, so per-row CPU
  figures are the load-robust companions of the rates;
- ``foreign_cpu_share``: the share of the machine's usable cores that *other* processes used
  during the window: (all cores' busy time from /proc/stat, steal included) minus this process's
  CPU time, over wall time x cores. A figure taken while something else ran is not this job's.
  None where /proc/stat is not there.
"""
from __future__ import annotations

import os
import resource
import time
from typing import Any, Dict, Optional

__all__ = ["CLOCK_TICKS", "TimedWindow", "machine_busy_seconds", "usable_cores", "load_average", "own_peak_rss_mb"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc counts CPU time in these a second


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_busy_seconds() -> Optional[float]:
    """CPU seconds all cores spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / CLOCK_TICKS


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def own_peak_rss_mb() -> Optional[float]:
    """This process's own peak resident set (VmHWM of /proc/self/status), MiB; None off Linux.

    Not ``getrusage``'s ``ru_maxrss``: Linux folds into it the resident set of the image the
    process replaced at exec, i.e. its parent's at the fork (``exec_mmap``), so every child of a
    large parent (the harness holding generated data) reports at least the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class TimedWindow:
    """``with TimedWindow() as w: ...`` then ``w.result()``: wall_s, cpu_s, foreign_cpu_share, cores."""

    def __enter__(self) -> "TimedWindow":
        self._busy0 = machine_busy_seconds()
        self._cpu0 = _own_cpu_seconds()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = _own_cpu_seconds() - self._cpu0
        busy1 = machine_busy_seconds()
        self.cores = usable_cores()
        self.foreign_cpu_share: Optional[float] = None
        if busy1 is not None and self._busy0 is not None and self.wall_s > 0:
            # /proc/stat counts every core of the machine; a process pinned to fewer still
            # competes with whatever runs on the others, so the share is of all of them.
            total = os.cpu_count() or self.cores
            foreign = max(0.0, (busy1 - self._busy0) - self.cpu_s)
            self.foreign_cpu_share = min(1.0, foreign / (self.wall_s * total))

    def result(self) -> Dict[str, Any]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "foreign_cpu_share": self.foreign_cpu_share,
                "cores": self.cores}
