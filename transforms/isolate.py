"""Find the rows a model fails on: split a failing batch in halves until the failures are single rows.

Beam's RunInference fails (or dead-letters) a whole batch when the model raises on it, so one
poisoned row costs ``batch_size`` users. Here a batch that raises is bisected: each half is run
again, a half that succeeds keeps its outputs, a half that raises is split again, and only a
single row that still raises is rejected (with the exception text). Bisection is deterministic,
so reruns give the same batches and the same bytes. With ``k`` failing rows in a batch of ``n`` it
costs at most about ``2k * log2(n / k) + 4k`` extra model calls, and a budget of failed rows stops it
early (a model that fails on every row should fail the job, not run ``2n`` calls per batch).

``isolate_failures`` is the pure algorithm over a ``run(start, stop)`` callable;
``ModelFailureIsolation`` applies it to one batch of the embed step (Arrow rows plus numpy feeds)
and builds the rejected-rows table.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from transforms.errors import ExportError
from transforms.rejected import ERROR_COLUMN, tagged_rejected_rows

__all__ = ["MODEL_ERROR", "MAX_ERROR_CHARS", "Failure", "TooManyFailures", "Isolated", "isolate_failures",
           "describe_error", "commonest_errors", "model_error_rows", "ModelFailureIsolation"]

MODEL_ERROR = "model_error"  # reason prefix: "model_error:<exception type>"
MAX_ERROR_CHARS = 2000       # TF errors carry whole graph traces; the head says what went wrong

Outputs = Dict[str, np.ndarray]


@dataclass(frozen=True)
class Failure:
    """A row the model raised on when run alone: its index, the exception type and text."""
    row: int
    kind: str
    error: str


def commonest_errors(failures: List[Failure], top: int = 3, chars: int = 300) -> str:
    """``N x error; ...`` for the commonest error texts."""
    common = Counter(f.error for f in failures).most_common(top)
    return "; ".join(f"{n} x {err[:chars]}" for err, n in common)


class TooManyFailures(RuntimeError):
    """More rows failed than the budget allows; ``failures`` holds those found so far."""

    def __init__(self, failures: List[Failure], budget: int):
        self.failures = failures
        self.budget = budget
        super().__init__(f"{len(failures)} rows failed alone, more than the budget of {budget}; commonest errors: "
                         + commonest_errors(failures))


@dataclass
class Isolated:
    """What bisecting a batch found.

    Args:
      rows: int64 indices of the rows the model ran on, ascending.
      outputs: the model outputs for ``rows``, in that order ({} when no row ran).
      failures: every row that failed alone, ascending.
      calls: model calls made (the first, failed, whole-batch call not counted).
    """
    rows: np.ndarray
    outputs: Outputs
    failures: List[Failure] = field(default_factory=list)
    calls: int = 0


def describe_error(err: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: message`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def isolate_failures(run: Callable[[int, int], Outputs], size: int, first_error: Optional[BaseException] = None,
                     max_failures: Optional[int] = None) -> Isolated:
    """Run rows ``[0, size)`` through ``run(start, stop)``, bisecting ranges that raise.

    Args:
      run: runs the model on rows ``start:stop`` and returns {output name: array with stop - start rows}.
      size: rows in the batch.
      first_error: the error of a whole-batch call already made (the batch is then split at once).
      max_failures: raise TooManyFailures as soon as more single rows than this have failed.
    Returns:
      an Isolated; ``rows`` and ``failures`` together cover every row exactly once.
    Raises:
      TooManyFailures: over ``max_failures``.
      ValueError: a call returned the wrong number of rows (a broken model, not a bad row).
    """
    pieces: List[Tuple[int, int, Outputs]] = []
    failures: List[Failure] = []
    calls = 0
    stack: List[Tuple[int, int, Optional[BaseException]]] = [(0, size, first_error)] if size else []
    while stack:
        start, stop, error = stack.pop()
        if error is None:
            calls += 1
            try:
                out = run(start, stop)
            except Exception as err:  # any error the model raises on these rows
                error = err
            else:
                for name, array in out.items():
                    if len(array) != stop - start:
                        raise ValueError(f"model output {name!r} has {len(array)} rows for a batch of "
                                         f"{stop - start}")
                pieces.append((start, stop, out))
                continue
        if stop - start == 1:
            failures.append(Failure(start, type(error).__name__, describe_error(error)))
            if max_failures is not None and len(failures) > max_failures:
                raise TooManyFailures(failures, max_failures)
            continue
        middle = (start + stop) // 2
        stack.append((middle, stop, None))   # popped second: rows stay in order
        stack.append((start, middle, None))
    rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b, _ in pieces]) if pieces \
        else np.zeros(0, dtype=np.int64)
    outputs: Outputs = {}
    if pieces:
        for name in pieces[0][2]:
            outputs[name] = np.concatenate([out[name] for _, _, out in pieces], axis=0)
    return Isolated(rows, outputs, failures, calls)


def model_error_rows(table: pa.Table, failures: List[Failure]) -> pa.Table:
    """The failed rows of a tagged batch (``transforms.rejected.tag_source``) as rejected rows:
    columns, reason (``model_error:<exception type>``), source_file, source_row, error (the
    exception text)."""
    rows = table.take(pa.array([f.row for f in failures], pa.int64()))
    rows = tagged_rejected_rows(rows, pa.array([f"{MODEL_ERROR}:{f.kind}" for f in failures], pa.string()))
    return rows.append_column(ERROR_COLUMN, pa.array([f.error for f in failures], pa.string()))


class ModelFailureIsolation:
    """The embed step's handling of a batch the model raised on, with a budget of failed rows.

    Args:
      max_failed_rows: rows the model may fail on in this DoFn instance before the job is
        certain to exceed ``output.max_reject_fraction`` (then ExportError is raised at once
        rather than bisecting every batch); None for no budget.
      model: the model's name for messages.
    """

    def __init__(self, max_failed_rows: Optional[int] = None, model: str = "the model"):
        self.max_failed_rows = max_failed_rows
        self.model = model
        self.failed_rows = 0

    def split(self, run: Callable[[Dict[str, np.ndarray]], Outputs], feeds: Dict[str, np.ndarray],
              table: pa.Table, error: BaseException) -> Tuple[Outputs, Dict[str, np.ndarray], pa.Table, Optional[pa.Table]]:
        """Bisect the batch ``table``/``feeds`` whose whole-batch ``run`` raised ``error``.

        Returns (outputs, feeds, table) of the rows the model ran on, and the rejected rows
        (None when the failure did not reproduce on any single row).
        Raises:
          ExportError: the budget of failed rows is spent: the export cannot succeed.
        """
        budget = None if self.max_failed_rows is None else max(self.max_failed_rows - self.failed_rows, 0)

        def run_rows(start: int, stop: int) -> Outputs:
            return run({name: array[start:stop] for name, array in feeds.items()})

        try:
            isolated = isolate_failures(run_rows, table.num_rows, first_error=error, max_failures=budget)
        except TooManyFailures as err:
            failed = self.failed_rows + len(err.failures)
            raise ExportError(
                f"{self.model} failed on {failed} rows (each run alone after splitting its batch), more "
                f"than the {self.max_failed_rows} rows that output.max_reject_fraction allows to be "
                f"rejected: the export cannot succeed, stopped early; commonest errors: "
                f"{commonest_errors(err.failures)}") from None
        self.failed_rows += len(isolated.failures)
        if not isolated.failures:
            return isolated.outputs, feeds, table, None
        rejected = model_error_rows(table, isolated.failures)
        keep = isolated.rows
        kept_feeds = {name: array[keep] for name, array in feeds.items()}
        return isolated.outputs, kept_feeds, table.take(pa.array(keep)), rejected
