"""The export's errors: one class per way a run can fail, defined here and raised everywhere.

``PreflightError`` is raised before anything runs (the config, the model signature or the input
does not fit); ``ExportError`` once the run is under way or over (a step cannot go on, the
accounting does not add up, too many rows were rejected, an export directory cannot be read
back). Each message names the key, file, column or row and what is wrong.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

__all__ = ["ExportError", "PreflightError", "PreflightProblems"]


class ExportError(RuntimeError):
    """The export cannot be completed or read back (a step failed, the accounting does not add up,
    too many rejected rows, lost files, an unreadable manifest)."""


class PreflightError(ValueError):
    """The job cannot run as configured; the message names the file, column or key and the problem.

    ``problems`` lists each problem found (preflight reports every one it can find at once)."""

    def __init__(self, message: str, problems: Optional[Sequence[str]] = None):
        super().__init__(message)
        self.problems: List[str] = list(problems) if problems else [message]

    @classmethod
    def of(cls, problems: Sequence[str]) -> "PreflightError":
        """One error for several problems: the problem itself when there is one, else a list."""
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems), problems)


class PreflightProblems:
    """Collects the PreflightErrors of independent checks, so all are reported together."""

    def __init__(self):
        self.found: List[str] = []

    def run(self, check, *args, **kwargs):
        """``check(*args, **kwargs)``, or None after noting its problems."""
        try:
            return check(*args, **kwargs)
        except PreflightError as err:
            self.found.extend(err.problems)
            return None

    def raise_any(self) -> None:
        if self.found:
            raise PreflightError.of(self.found)
