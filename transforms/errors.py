"""The export's errors: one class per way a run can fail, defined here and raised everywhere.

``PreflightError`` is raised before anything runs (the config, the model signature or the input
does not fit); ``ExportError`` once the run is under way or over (a step cannot go on, the
accounting does not add up, too many rows were rejected, an export directory cannot be read
back). Each message names the key, file, column or row and what is wrong.
"""
from __future__ import annotations

__all__ = ["ExportError", "PreflightError"]


class ExportError(RuntimeError):
    """The export cannot be completed or read back (a step failed, the accounting does not add up,
    too many rejected rows, lost files, an unreadable manifest)."""


class PreflightError(ValueError):
    """The job cannot run as configured; the message names the file, column or key and the problem."""
