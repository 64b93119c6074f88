"""Optional dependencies: what needs them, and the one line that says how to get them.

Workers install only what the job needs (``install_requires``). What only a person at a
terminal uses is the ``tools`` extra: ``rich`` (live progress, tables; plain text without it)
and ``matplotlib`` (``inspect --plot``, which stops with ``MissingExtra`` without it).
"""
from __future__ import annotations

import importlib

__all__ = ["TOOLS_INSTALL", "MissingExtra", "available", "require"]

TOOLS_INSTALL = "pip install 'embedding-export[tools]'"


class MissingExtra(RuntimeError):
    """A feature asked for needs a package of an extra that is not installed."""


def available(module: str) -> bool:
    """Whether ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, feature: str) -> None:
    """Raise ``MissingExtra`` ("FEATURE needs MODULE: pip install ...") unless ``module`` imports."""
    if not available(module):
        raise MissingExtra(f"{feature} needs {module}: {TOOLS_INSTALL}")
