"""A native kernel's first-use check: run once, under a lock, and the verdict kept.

The modules with numba kernels (``twml.io.crc32c_batch``, ``twml.row_fill``,
``twml.decode_columns``) each keep a plain path and use their kernels only once the kernels have
matched it at first use. A numba or LLVM failure on some machine then costs speed and one
warning, never a wrong byte or the run.

    _NATIVE = FirstUseCheck("row_fill", _first_call_check, "using numpy", _drop_kernels)
    if _KERNEL is not None and _NATIVE.passed(): ...
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Optional

__all__ = ["FirstUseCheck"]


class FirstUseCheck:
    """Runs ``check`` at the first ``passed()`` call, once, however many threads ask.

    Args:
      module: named in the warning.
      check: returns why the kernels cannot be used (a compile error, a wrong result), or None.
      fallback: what is used instead, for the warning (e.g. "using numpy").
      drop: called once if the check fails, to switch the module to its plain path.
    """

    def __init__(self, module: str, check: Callable[[], Optional[str]], fallback: str,
                 drop: Callable[[], None]):
        self._module = module
        self._check = check
        self._fallback = fallback
        self._drop = drop
        self._lock = threading.Lock()
        self._verdict: Optional[bool] = None

    def fresh(self) -> "FirstUseCheck":
        """The same check, not yet run (to run it again, e.g. in a test)."""
        return FirstUseCheck(self._module, self._check, self._fallback, self._drop)

    def passed(self) -> bool:
        """Whether the kernels matched the plain path (checked at the first call only)."""
        if self._verdict is None:
            with self._lock:
                if self._verdict is None:
                    error = self._check()
                    if error is not None:
                        warnings.warn(f"{self._module}: native kernel unusable ({error}); {self._fallback}",
                                      RuntimeWarning, stacklevel=4)
                        self._drop()
                    self._verdict = error is None
        return self._verdict
