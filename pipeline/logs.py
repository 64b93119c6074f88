"""What the command line prints besides its own output: quiet by default, everything with -v.

``setup_logging`` runs first thing in ``pipeline.cli.main``, before TensorFlow, absl or Beam are
imported (their start-up notices are decided at import). Without ``-v``:
  * TensorFlow's C++ notices (oneDNN, CPU features, absl's "before InitializeLog") are off
    (``TF_CPP_MIN_LOG_LEVEL=2``; worker processes inherit it), as are gRPC's;
  * Python logging shows WARNING and above, less the known import-time noise in ``NOISE``
    (Beam's "apitools not found" when the GCP extras are absent);
  * Python warnings raised inside Beam, TensorFlow and Keras are not shown.
Two things Beam logs only at INFO are shown in any case, one line each, since they change what
the user has to do: Beam's DirectRunner falling back from Prism to its Python runner
(``PrismFallbackNotice``), and, printed by the CLI from the launch result, a Dataflow job's id
and console URL (``pipeline.runner_options.launch_notice``).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Optional

__all__ = ["NOISE", "setup_logging", "PrismFallbackNotice"]

# (logger name, message prefix) of log records that say nothing a user can act on.
NOISE = (
    ("root", "apitools not found"),   # apache_beam.io.gcp.internal.clients.bigquery, at import
)
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
_QUIET_WARNINGS_FROM = r"(apache_beam|tensorflow|keras|absl)(\.|$)"
_DIRECT_RUNNER_LOGGER = "apache_beam.runners.direct.direct_runner"
_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__()
        self.setLevel(level)
        self.setFormatter(logging.Formatter(_FORMAT))
        self._embedding_export = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it
        pass


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(record.name == name and message.startswith(prefix) for name, prefix in NOISE)


class PrismFallbackNotice(logging.Handler):
    """Turns Beam's INFO records of a DirectRunner falling back from Prism into one line.

    Beam's DirectRunner first tries Prism (a binary it downloads unless ``--prism_location``
    names one) and, when Prism cannot start, logs the exception and "Falling back to
    DirectRunner" at INFO and runs on its Python runner. That changes the engine the job runs
    on, so it is said, once, whatever the log level.
    """

    def __init__(self):
        super().__init__(logging.INFO)
        self._embedding_export = True
        self.reason: Optional[str] = None
        self.said = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Exception with PrismRunner:"):
            text = message.split(":", 1)[1].strip()
            self.reason = text.splitlines()[0].strip() if text else None
        elif message.startswith(("Falling back to DirectRunner", "Pipeline failed on PrismRunner")) and not self.said:
            self.said = True
            why = f" ({self.reason})" if self.reason else ""
            print(f"embedding-export: DirectRunner could not start Prism{why}; running on Beam's "
                  "Python runner instead", file=sys.stderr, flush=True)


def setup_logging(verbose: bool) -> None:
    """Set the log levels, filters and environment of a command; call before importing TF or Beam.

    Safe to call again (tests run several commands in one process): it replaces what it set.
    """
    if not verbose:
        for name, value in _QUIET_ENV.items():
            os.environ.setdefault(name, value)
        warnings.filterwarnings("ignore", module=_QUIET_WARNINGS_FROM)
    root = logging.getLogger()
    direct = logging.getLogger(_DIRECT_RUNNER_LOGGER)
    for logger in (root, direct):
        for old in [h for h in logger.handlers if getattr(h, "_embedding_export", False)]:
            logger.removeHandler(old)
    handler = _StderrHandler()
    handler.addFilter(_DropNoise())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("absl").setLevel(logging.NOTSET if verbose else logging.ERROR)
    direct.addHandler(PrismFallbackNotice())
    # Quiet: the logger makes its INFO records for the notice to see, and keeps them from the
    # root handler; its own warnings still show through a handler of its own.
    direct.setLevel(logging.NOTSET if verbose else logging.INFO)
    direct.propagate = verbose
    if not verbose:
        direct.addHandler(_StderrHandler(logging.WARNING))
