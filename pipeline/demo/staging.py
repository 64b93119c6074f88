"""Replace a local directory as a whole: build beside it, then swap it in.

A failed or interrupted build never leaves a mix of old and new files in the target.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["staged_directory"]


@contextlib.contextmanager
def staged_directory(target: Union[str, Path], prefix: str) -> Iterator[Path]:
    """Yield a fresh directory next to ``target``; on success it replaces ``target``.

    On any exception the staging directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
