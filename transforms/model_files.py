"""A SavedModel on any path Beam's FileSystems read, as a path TensorFlow can load.

TensorFlow 2.21 opens local paths and gs:// itself, but not hdfs:// ("File system scheme 'hdfs'
not implemented"), s3:// or azfs://. For such a scheme the SavedModel directory is copied through
Beam's FileSystems into a local temporary directory, once per process (workers and the launcher's
preflight alike); the copy is removed when the process exits. A process killed with SIGKILL
leaves its copy behind under the system temp directory (``embedding-export-model-*``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import Dict, List, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.file_listing import list_files
from transforms.tf_runtime import import_tensorflow

__all__ = ["local_model_dir", "model_files", "tensorflow_opens"]

_COPY_BUFFER = 8 << 20
_lock = threading.Lock()
_copies: Dict[str, str] = {}  # model path -> its local copy, for this process


def _scheme(path: str) -> str:
    return path.split("://", 1)[0].lower() if "://" in path else ""


def tensorflow_opens(path: str) -> bool:
    """Whether ``tf.saved_model.load`` can read ``path`` where it is (imports TensorFlow for a URL)."""
    scheme = _scheme(path)
    if scheme in ("", "file"):
        return True
    tf = import_tensorflow()
    return scheme in tf.io.gfile.get_registered_schemes()


def model_files(model_path: str) -> List[Tuple[str, int]]:
    """(path relative to ``model_path``, size) of every file of the directory, through FileSystems."""
    root = model_path.rstrip("/")
    return [(m.path[len(root) + 1:], m.size_in_bytes) for m in list_files(root)]


def local_model_dir(model_path: str) -> str:
    """``model_path`` itself when TensorFlow opens it, else this process's local copy of it."""
    if tensorflow_opens(model_path):
        return model_path
    with _lock:
        copy = _copies.get(model_path)
        if copy is None:
            copy = _copy_to_local(model_path)
            _copies[model_path] = copy
        return copy


def _copy_to_local(model_path: str) -> str:
    files = model_files(model_path)
    if not any(name in ("saved_model.pb", "saved_model.pbtxt") for name, _ in files):
        raise FileNotFoundError(f"{model_path} is not a SavedModel directory: no saved_model.pb in it")
    target = tempfile.mkdtemp(prefix="embedding-export-model-")
    atexit.register(shutil.rmtree, target, True)
    root = model_path.rstrip("/")
    for name, _ in files:
        local = os.path.join(target, *name.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(f"{root}/{name}", compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BUFFER)
    return target
