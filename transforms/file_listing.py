"""Every file under a directory, through Beam's FileSystems, on any of them.

``FileSystems.match([dir/**])`` lists a whole tree on local disks and object stores, but Beam's
HDFS file system lists one level only: ``**`` there returns the directory's own entries,
subdirectories included (as 0-byte entries), and fails when the directory does not exist. This
walks such file systems one level at a time instead. An entry whose own listing fails is a file.
"""
from __future__ import annotations

import os
from typing import List

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems

__all__ = ["list_files"]


def list_files(root: str) -> List[FileMetadata]:
    """The files under ``root`` at any depth, sorted by path; [] when ``root`` does not exist."""
    root = root.rstrip("/")
    if "://" not in root or not FileSystems.get_filesystem(root).has_dirs():
        found = FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list
        return sorted(found, key=lambda m: m.path)
    if not FileSystems.exists(root):
        return []
    files: List[FileMetadata] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        for m in FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list:
            if m.size_in_bytes == 0 and _is_directory(m.path):
                pending.append(m.path.rstrip("/"))
            else:
                files.append(m)
    return sorted(files, key=lambda m: m.path)


def _is_directory(path: str) -> bool:
    if "://" not in path:
        return os.path.isdir(path)
    try:
        FileSystems.match([FileSystems.join(path, "*")])
    except Exception:  # BeamIOError: HDFS refuses to list a file
        return False
    return True
