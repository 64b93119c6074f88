"""FirstUseCheck (twml.native_check): one check, at first use, whatever the threads."""
import threading

import pytest

from twml.native_check import FirstUseCheck


def _asked_from_threads(check: FirstUseCheck, threads: int = 8) -> list:
    start = threading.Barrier(threads)
    verdicts = []

    def ask():
        start.wait()
        verdicts.append(check.passed())

    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return verdicts


def test_a_passing_check_runs_once_and_drops_nothing():
    runs, drops = [], []
    check = FirstUseCheck("m", lambda: runs.append(1), "using numpy", lambda: drops.append(1))
    assert _asked_from_threads(check) == [True] * 8
    assert check.passed() and len(runs) == 1 and not drops


def test_a_failing_check_warns_once_drops_the_kernels_once_and_stays_failed():
    runs, drops = [], []

    def check_fn():
        runs.append(1)
        return "results differ"

    check = FirstUseCheck("m", check_fn, "using numpy", lambda: drops.append(1))
    with pytest.warns(RuntimeWarning, match=r"m: native kernel unusable \(results differ\); using numpy"):
        assert _asked_from_threads(check) == [False] * 8
    assert not check.passed() and len(runs) == 1 and len(drops) == 1
    again = check.fresh()
    with pytest.warns(RuntimeWarning):
        assert not again.passed()
    assert len(runs) == 2
