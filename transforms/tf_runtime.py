"""TensorFlow's process-wide settings for this job: its CPU allocator and its thread pools.

Both are read once per process, when TensorFlow first runs something, so every TensorFlow
import of the job goes through ``import_tensorflow`` and the pools are set right after it,
before the model loads (``transforms.embed``).

**The allocator.** TensorFlow's default CPU allocator returns each large tensor to the C
library when the op is done, which returns it to the system, so the next batch's tensors are
fresh pages that the kernel must fault in and zero. For the reference model (its [B, 32, 64]
id-embedding gather alone is 8 KB a row) that was two page faults and 5 to 8 core-us of kernel
time a row, a quarter of the export's CPU on a 2-core VM (2026-11-30). TensorFlow's BFC
allocator (``TF_CPU_ALLOCATOR_USE_BFC``) keeps freed memory and reuses it: page faults fell
tenfold and the export ran 1.4-1.65x faster, with the same peak RSS (benchmarks/README.md). So
the job turns it on.

Caveats, plainly:

- An environment that sets ``TF_CPU_ALLOCATOR_USE_BFC`` itself wins (``false`` restores TF's
  default allocator).
- A process in which other code ran TensorFlow before the job imported it keeps the allocator
  it started with, as it keeps its thread pools.
- The BFC allocator does not give memory back to the system while the process lives: a worker
  holds its largest batch's tensors until it exits (``TF_CPU_BFC_MEM_LIMIT_IN_MB`` caps it).

Usage::

    from transforms.tf_runtime import import_tensorflow
    tf = import_tensorflow()
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Tuple

__all__ = ["import_tensorflow", "set_thread_pools", "CPU_ALLOCATOR_ENV"]

_LOG = logging.getLogger(__name__)

# TensorFlow's switch for its BFC allocator on CPU (read when TF first allocates in a process).
CPU_ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


# What TensorFlow writes to stderr at import on CPUs where it turns oneDNN on (AVX-512 VNNI and
# newer), before its logging reads TF_CPP_MIN_LOG_LEVEL: so that setting cannot hide them.
_IMPORT_NOTICES = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                   b"oneDNN custom operations are on.")


def import_tensorflow():
    """The ``tensorflow`` module, imported with the job's allocator setting (unless the
    environment chose one). Where ``TF_CPP_MIN_LOG_LEVEL`` asks for no INFO lines (the quiet
    command line sets it), TensorFlow's import-time notices (``_IMPORT_NOTICES``) are dropped
    too; anything else it writes to stderr while importing is passed on."""
    os.environ.setdefault(CPU_ALLOCATOR_ENV, "true")
    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0"):
        with _stderr_without(_IMPORT_NOTICES):
            import tensorflow as tf
    else:
        import tensorflow as tf
    return tf


@contextlib.contextmanager
def _stderr_without(notices: Tuple[bytes, ...]) -> Iterator[None]:
    """Collect what this process writes to file descriptor 2 meanwhile (native code included),
    then write it back less the lines containing one of ``notices`` (a crash meanwhile loses
    what was collected)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as collected:
        os.dup2(collected.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            collected.seek(0)
            kept = [line for line in collected if not any(notice in line for notice in notices)]
            if kept:
                os.write(2, b"".join(kept))


def set_thread_pools(tf, intra: int, inter: int) -> None:
    """TF's intra-op and inter-op pool sizes (0 = TF's default); kept as they are, with a log
    line, when TF has already run something in this process."""
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        # TF already initialised in this process (e.g. the launcher ran it): keep its pools.
        _LOG.info("TF thread pools already initialised; keeping them")
