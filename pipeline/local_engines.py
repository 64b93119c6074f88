"""The engines a run finds on this machine: the Prism binary that Beam's DirectRunner prefers.

Beam 2.77's ``DirectRunner`` and ``PrismRunner`` run on Prism, a Go binary that Beam downloads
unless ``--prism_location`` names one; offline the download fails and the DirectRunner falls back
to the FnApiRunner, silently. Here a run never downloads anything: ``make engines`` builds Prism
from Beam's Go module (``.ci/engines/fetch.sh``) into the cache below, and a run on either runner
is pointed at it. Without the binary, ``PrismRunner`` is refused and ``DirectRunner`` runs on the
FnApiRunner, saying so in one line. (When Prism is there but fails to start a job, Beam's own
fallback is said in one line by ``pipeline.logs``.)
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

import apache_beam

from pipeline.config import ConfigError

__all__ = ["cache_dir", "note_once", "prism_binary", "resolve_local_engine", "PRISM_RUNNERS"]

PRISM_RUNNERS = ("DirectRunner", "PrismRunner")
PRISM_LOCATION = "--prism_location"
CACHE_ENV = "EMBEDDING_EXPORT_CACHE"  # .ci/engines/*.sh read the same variable
PRISM_ENV = "EMBEDDING_EXPORT_PRISM"  # a Prism binary to use instead of the cached one


def cache_dir() -> str:
    """Where fetched engines live: $EMBEDDING_EXPORT_CACHE, else ~/.cache/embedding-export."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "embedding-export")


def prism_binary() -> Optional[str]:
    """The Prism binary of this Beam version: $EMBEDDING_EXPORT_PRISM, else the cached build, else None."""
    given = os.environ.get(PRISM_ENV)
    if given:
        return given
    path = os.path.join(cache_dir(), f"prism-v{apache_beam.__version__}", "prism")
    return path if os.access(path, os.X_OK) else None


def resolve_local_engine(runner: str, options: Sequence[str]) -> Tuple[str, List[str], Optional[str]]:
    """(runner, options, note): the runner and options a run uses, and a one-line note when it changed.

    Raises:
      ConfigError: ``PrismRunner`` with no Prism binary here.
    """
    options = list(options)
    if runner not in PRISM_RUNNERS or any(o.split("=", 1)[0] == PRISM_LOCATION for o in options):
        return runner, options, None
    binary = prism_binary()
    if binary is not None:
        # Prism's own INFO lines (job service address, "pipeline done!") would pass any log level.
        quiet = [] if any(o.startswith("--prism_log_level") for o in options) else ["--prism_log_level=warn"]
        return runner, [f"{PRISM_LOCATION}={binary}", *quiet, *options], None
    if runner == "PrismRunner":
        raise ConfigError("runner PrismRunner: no Prism binary here (build it with `make engines`, or pass "
                         f"-- {PRISM_LOCATION}=PATH); a run does not download one")
    return "FnApiRunner", options, ("DirectRunner: no Prism binary here (`make engines` builds one), so this "
                                    "run uses the FnApiRunner instead of downloading Prism")


_noted = set()


def note_once(note: str) -> None:
    """Print ``note`` on stderr, once per process."""
    if note not in _noted:
        _noted.add(note)
        print(f"embedding-export: {note}", file=sys.stderr)
