"""Named moments of a run where a test can stop the real process and kill it from outside.

The crash tests (tests/reliability) run the real command line in a subprocess with
``EMBEDDING_EXPORT_PAUSE_AT=<name>`` and ``EMBEDDING_EXPORT_PAUSE_DIR=<dir>`` set. When the run
reaches ``pause_point(name)`` it creates ``<dir>/<name>`` and sleeps; the test sees the file and
sends SIGKILL, so the kill lands at exactly that moment rather than at a guessed time (or
creates ``<dir>/<name>.resume``, and the run goes on: a test changes something at that moment).
Without the variable a pause point is one environment lookup. The points:

    run.claimed         the launcher holds the output directory's claim; the pipeline is not built yet
    read.row_group      a row group was read (reading and embedding under way, nothing written)
    publish.claim       every shard file is complete, the counts check out; the claim on the output
                        directory is about to be checked (transforms.claim)
    publish.start       every shard file is complete under _temporary/, nothing published yet
    publish.renamed     a batch of files was renamed into place (a directory publish: into the
                        hidden staging directory beside the output), more to go
    publish.manifest    _MANIFEST.json is in place (or staged), _SUCCESS is not
    publish.staged      directory publish: the staging directory holds the whole export and
                        _SUCCESS; the output directory is as it was
    publish.swapped_out directory publish: the output directory was renamed aside, the staging
                        directory not yet renamed into its place (there is no output directory)
    publish.success     _SUCCESS is in the output directory, the run's leftovers (scratch, the
                        directory moved aside) are not yet removed
"""
from __future__ import annotations

import os
import time

__all__ = ["pause_point", "PAUSE_AT_ENV", "PAUSE_DIR_ENV", "MAX_PAUSE_SECONDS"]

PAUSE_AT_ENV = "EMBEDDING_EXPORT_PAUSE_AT"
PAUSE_DIR_ENV = "EMBEDDING_EXPORT_PAUSE_DIR"
MAX_PAUSE_SECONDS = 120.0  # a test that never kills does not hang a worker forever


def pause_point(name: str) -> None:
    """Pause here if the environment asks for ``name`` (see the module docstring)."""
    if os.environ.get(PAUSE_AT_ENV) != name:
        return
    marker_dir = os.environ.get(PAUSE_DIR_ENV) or "."
    with open(os.path.join(marker_dir, name), "w") as marker:
        marker.write(str(os.getpid()))
    resume = os.path.join(marker_dir, name + ".resume")
    deadline = time.monotonic() + MAX_PAUSE_SECONDS
    while time.monotonic() < deadline:
        if os.path.exists(resume):
            return
        time.sleep(0.05)
    raise RuntimeError(f"paused at {name} for {MAX_PAUSE_SECONDS:g} s and nobody killed or resumed the process")
