"""Publish the export: check the accounting, move the files into place, manifest, then ``_SUCCESS``.

Runs once, after every shard file and rejected-rows file is complete (they arrive as side
inputs). Nothing in the output directory changes unless every check passes:

1. every shard 0..N-1 has exactly one complete file; rows_read (counted from the data) plus the
   rows of unreadable row groups (``input.on_bad_file: skip``) equals the rows in the input
   files' footers, and rows_read == rows_written + rows_rejected; rejected rows are within
   ``max_reject_fraction`` (else only the rejected rows are published, under
   ``_rejected/<run_id>/``, and the run fails naming the counts and the commonest reasons);
2. the mode is chosen: a **directory publish** when the output is a local directory that holds
   nothing but this run's scratch and the files preflight found to be the job's own (``stale``;
   listed again now), on one device with a writable parent; else **file by file** (object
   stores, HDFS, a directory holding foreign files);
3. the publish journal ``_temporary/<run_id>/_PUBLISH.json`` is written: every file about to
   be created (with its size), every earlier file of this job about to be removed
   (``transforms.ownership``), the mode and the staging directory, so that a run killed from
   here on leaves files a rerun knows as its own.

Directory publish (``os.path.realpath`` of the output, so a symlink to it stays one):

4. a hidden sibling ``<parent>/.<name>.<run_id>.publishing`` is made with the output's permission
   bits; a copy of the journal goes in first (its files are then the job's own for
   ``take_inventory``), then the temporary files are renamed into it under their final names,
   in batches, then ``_MANIFEST.json``, then ``_SUCCESS``;
5. the swap: the output directory is renamed to ``.<name>.<run_id>.previous``, the staging
   directory to the output's name. Until then the output directory is as it was (an earlier
   export stays whole); between the two renames there is no output directory at all (a rerun
   then starts from nothing); after them, the complete export;
6. the journal copy goes from the new output directory, and from ``.previous`` the files that are
   the job's own (``stale`` and this run's scratch); it is removed when nothing else is left in
   it (a file that appeared there during the run stays, with a warning).

File by file (and when the output directory cannot be renamed after all):

4. the files of an earlier export or an unfinished run that preflight found to be this job's
   own (``stale``) are removed, ``_SUCCESS`` and ``_MANIFEST.json`` first; nothing else is;
5. the temporary files are renamed to their final names, in batches (a file whose source is
   gone and whose destination exists was renamed by an earlier attempt: skipped, so a retry is
   harmless); every final name holds a complete file from the moment it appears, but a kill
   between two batches leaves complete files under final names without ``_SUCCESS``;
6. ``_MANIFEST.json`` is renamed into place, then ``_SUCCESS`` is, last; then
   ``_temporary/<run_id>/`` and the scratch files of earlier runs are deleted.

Last, in both modes, the ``.publishing`` and ``.previous`` siblings that killed runs left beside a
local output lose the files ``take_inventory`` proves are the job's own, and go when empty.
"""
from __future__ import annotations

import logging
import os
import stat
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.claim import claim_problem
from transforms.duplicates import NO_DUPLICATES, DuplicateCounts, sum_duplicate_counts
from transforms.elements import RejectedPart, ShardResult, UnreadableRowGroup
from transforms.errors import ExportError
from transforms.file_listing import list_files
from transforms.outputdir import (MANIFEST_NAME, REJECTED_DIR, SUCCESS_NAME, TEMP_DIR, finished_manifest,
                                  manifest_bytes, numbered_file_name)
from transforms.ownership import (is_run_id, journal_bytes, journal_name, publish_siblings, sibling_dir,
                                  take_inventory)
from transforms.pause_points import pause_point
from transforms.specs import OutputLayout

__all__ = ["FinalizeExport", "publish", "rejected_dir_of_failed_run", "RENAME_BATCH", "reason_summary"]

RENAME_BATCH = 100  # files per FileSystems.rename call (object stores copy a batch at a time)
MODE_DIRECTORY = "directory"  # the journal's "mode": assembled in a sibling directory, then swapped in
MODE_FILES = "files"          # renamed into the output directory file by file

_LOG = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _matching(pattern: str) -> List[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def _delete(paths: Sequence[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def _delete_tree(path: str) -> None:
    """Delete a directory (local) or every object under a prefix (object stores)."""
    if "://" not in path:
        if FileSystems.exists(path):
            FileSystems.delete([path])
        return
    _delete(_matching(_join(path, "**")))


def _rename_keeps_destination(path: str) -> bool:
    """Whether FileSystems.rename fails rather than replace an existing destination (HDFS)."""
    return "://" in path and FileSystems.get_filesystem(path).has_dirs()


def _write_file(path: str, data: bytes, scratch: str) -> None:
    """Write a small file under a temporary name in ``scratch`` and rename it to ``path``."""
    tmp = _join(scratch, f"{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    _rename_into_place([(tmp, path)])


def _rename_into_place(pairs: Sequence[Tuple[str, str]], pause: Optional[str] = None) -> None:
    """Rename (source, destination) pairs in batches of RENAME_BATCH; a pair whose source is
    gone and whose destination exists was done by an earlier attempt and is skipped."""
    todo: List[Tuple[str, str]] = []
    for src, dst in pairs:
        if FileSystems.exists(src):
            todo.append((src, dst))
        elif not FileSystems.exists(dst):
            raise ExportError(f"cannot publish {dst}: neither it nor its temporary file {src} exists")
    # Local and HDFS renames need the destination directory; on object stores mkdirs is a no-op.
    for parent in sorted({dst.rsplit("/", 1)[0] for _, dst in todo}):
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
    for start in range(0, len(todo), RENAME_BATCH):
        batch = todo[start:start + RENAME_BATCH]
        if _rename_keeps_destination(batch[0][1]):
            # HDFS refuses to rename onto an existing file (local disks and object stores replace
            # it). The source is the complete new file, so the old one under its name can go.
            _delete([dst for _, dst in batch])
        FileSystems.rename([src for src, _ in batch], [dst for _, dst in batch])
        if pause:
            pause_point(pause)


def rejected_dir_of_failed_run(out: str, run_id: str, beside_finished_export: bool) -> str:
    """Where a run that failed on too many rejected rows leaves them: ``_rejected/<run_id>/``, or,
    when a finished export is in the directory (which a failed run must leave as it was), the
    run's own scratch directory, ``_temporary/<run_id>/_rejected/``."""
    if beside_finished_export:
        return _join(out, TEMP_DIR, run_id, REJECTED_DIR)
    return _join(out, REJECTED_DIR, run_id)


def _check_shards(shards: Iterable[ShardResult], num_shards: int) -> List[ShardResult]:
    by_shard: Dict[int, ShardResult] = {}
    for result in shards:
        seen = by_shard.get(result.shard)
        if seen is not None and (seen.records, seen.crc32c) != (result.records, result.crc32c):
            raise ExportError(f"shard {result.shard} was assembled twice with different contents "
                              f"({seen.records} vs {result.records} records)")
        by_shard[result.shard] = result
    missing = sorted(set(range(num_shards)) - set(by_shard))
    extra = sorted(set(by_shard) - set(range(num_shards)))
    if missing or extra:
        raise ExportError(f"shard files missing for shards {missing[:20]} / unexpected shards {extra[:20]} "
                          f"(expected 0..{num_shards - 1})")
    return [by_shard[s] for s in range(num_shards)]


def reason_summary(by_reason: Dict[str, int], top: int = 5) -> str:
    """``reason: count, ...`` for the commonest reasons (by_reason sorted commonest first)."""
    items = list(by_reason.items())
    text = ", ".join(f"{reason}: {count}" for reason, count in items[:top])
    return text + (f", and {len(items) - top} more reasons" if len(items) > top else "")


def _relative(out: str, path: str) -> str:
    prefix = out.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _remove_empty_run_dirs(root: str) -> None:
    """Remove the empty run directories (``<root>/<run id>/...``) and then ``root`` if empty.

    Local paths and HDFS: object stores have no directories. Directories of other names are not
    this job's and stay, even when empty.
    """
    if "://" in root:
        _remove_empty_remote_dirs(root)
        return
    if not os.path.isdir(root):
        return
    for child in os.listdir(root):
        path = os.path.join(root, child)
        if is_run_id(child) and os.path.isdir(path):
            for dirpath, _, _ in sorted(os.walk(path), key=lambda item: -len(item[0])):
                if not os.listdir(dirpath):
                    os.rmdir(dirpath)
    if not os.listdir(root):
        os.rmdir(root)


def _remove_empty_remote_dirs(root: str) -> None:
    """``_remove_empty_run_dirs`` on a file system with directories reached by URL (HDFS)."""
    if not FileSystems.get_filesystem(root).has_dirs() or not FileSystems.exists(root):
        return
    children = [m.path.rstrip("/") for m in FileSystems.match([_join(root, "*")])[0].metadata_list]
    empty = [c for c in children if is_run_id(c.rsplit("/", 1)[-1]) and not list_files(c)]
    if empty:
        FileSystems.delete(empty)
    if len(empty) == len(children):
        FileSystems.delete([root])


def publish(layout: OutputLayout, shards: Iterable[ShardResult], rows_read: int,
            rejected: Iterable[RejectedPart], manifest_base: Dict, expected_rows: Optional[int] = None,
            max_reject_fraction: float = 1.0, stale: Sequence[str] = (), unreadable: Iterable = (),
            duplicate_keys: Optional[Dict[str, int]] = None,
            key_id_collisions: Optional[Sequence[Tuple[int, Sequence[str]]]] = None,
            require_claim: bool = False) -> Dict:
    """Check, move into place (by swapping directories, or file by file: see the module
    docstring), write the manifest and ``_SUCCESS``; return the manifest.

    Args:
      layout: the output directory, run id and shard count.
      shards: one ShardResult per shard.
      rows_read: rows counted from the input data.
      rejected: the temporary rejected-rows files.
      manifest_base: the manifest's static entries (config, model, features, versions, ...).
      expected_rows: rows in the input files by their footers (None: not known).
      max_reject_fraction: fail when rows_rejected > this fraction of rows_read.
      stale: absolute paths of files this job wrote earlier (an earlier export being overwritten,
        debris of an unfinished run) that preflight found; they are removed, nothing else in
        the output directory is.
      unreadable: row groups that could not be read (``input.on_bad_file: skip``): objects with
        ``path``, ``row_group``, ``rows`` and ``error``.
      duplicate_keys: {"keys": keys written more than once, "rows": rows beyond each key's first}.
      key_id_collisions: string keys: (key id, the different keys sharing it) for every shared
        id (manifest ``key_id_collisions``); None for integer keys.
      require_claim: the run must still hold its claim on the output directory
        (``transforms.claim``), checked before anything is moved.
    Raises:
      ExportError: a check failed; the output directory is left as it was, except that on too
        many rejected rows the rejected rows are published to ``_rejected/<run_id>/``.
    """
    results = _check_shards(shards, layout.num_shards)
    rejected = sorted(rejected, key=lambda part: (part.crc32c, part.records, part.path))
    unreadable = sorted(unreadable, key=lambda u: (u.path, u.row_group))
    rows_written = sum(r.records for r in results)
    rows_rejected = sum(p.records for p in rejected)
    rows_unreadable = sum(u.rows for u in unreadable)
    by_reason: Dict[str, int] = {}
    for part in rejected:
        for reason, count in part.reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    by_reason = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    if expected_rows is not None and rows_read + rows_unreadable != expected_rows:
        unread = f" + {rows_unreadable} in unreadable row groups" if rows_unreadable else ""
        raise ExportError(f"read {rows_read} rows{unread} but the input files' footers hold {expected_rows}: "
                          "the input changed during the run or rows were lost while reading")
    if rows_read != rows_written + rows_rejected:
        raise ExportError(f"accounting mismatch: rows_read {rows_read} != rows_written {rows_written} "
                          f"+ rows_rejected {rows_rejected}")

    out = layout.path
    temp = _join(out, TEMP_DIR, layout.run_id)
    if require_claim:
        pause_point("publish.claim")
        problem = claim_problem(out, layout.run_id)
        if problem is not None:
            raise ExportError(f"{problem}; nothing was published")
    if rows_rejected > max_reject_fraction * rows_read:
        # Only the rejected rows are published, for inspection, under this run's own directory
        # (so they never replace an earlier export's); their footers carry the run-id stamp. A
        # finished export in the directory stays exactly as it was: the rows then stay in this
        # run's scratch directory (kept, like the journal), not under the export's _rejected/.
        beside_export = FileSystems.exists(_join(out, SUCCESS_NAME))
        kept = rejected_dir_of_failed_run(out, layout.run_id, beside_export)
        names = [_join(kept, numbered_file_name(i, len(rejected), ".parquet")) for i in range(len(rejected))]
        _rename_into_place([(p.path, name) for p, name in zip(rejected, names)])
        if beside_export:  # the rows stay in this run's scratch directory: the rest of it goes
            _delete([path for path in _matching(_join(temp, "**")) if not path.startswith(kept.rstrip("/") + "/")])
            if "://" not in temp:
                for dirpath, _, _ in sorted(os.walk(temp), key=lambda item: -len(item[0])):
                    if not os.listdir(dirpath):
                        os.rmdir(dirpath)
        else:
            _delete_tree(temp)
        _remove_empty_run_dirs(_join(out, TEMP_DIR))
        raise ExportError(
            f"{rows_rejected} of {rows_read} rows rejected ({rows_rejected / max(rows_read, 1):.2%}), "
            f"more than output.max_reject_fraction {max_reject_fraction:g}; commonest reasons: "
            f"{reason_summary(by_reason)}; the rejected rows are in {kept}; nothing else was published")

    pause_point("publish.start")
    rejected_names = [_join(REJECTED_DIR, numbered_file_name(i, len(rejected), ".parquet"))
                      for i in range(len(rejected))]
    manifest = finished_manifest(manifest_base, layout.run_id, results, rows_read, list(zip(rejected, rejected_names)),
                                 by_reason, unreadable, duplicate_keys, key_id_collisions)
    manifest_data = manifest_bytes(manifest)

    creates = {r.final_name: r.bytes for r in results}
    creates.update({name: p.bytes for p, name in zip(rejected, rejected_names)})
    creates.update({MANIFEST_NAME: len(manifest_data), SUCCESS_NAME: 0})
    stale_names = {_relative(out, path): path for path in stale}
    moves = ([(r.temp_path, r.final_name) for r in results]
             + [(p.path, name) for p, name in zip(rejected, rejected_names)])
    why_not = _directory_publish_blocker(out, layout.run_id, stale_names)
    staging = sibling_dir(os.path.realpath(out), layout.run_id, "publishing") if "://" not in out else None
    if why_not is not None:
        _LOG.info("publishing %s file by file: %s", out, why_not)
        if staging is not None and os.path.isdir(staging):  # a failed attempt of this run staged files
            moves = [(src if FileSystems.exists(src) else _join(staging, name), name) for src, name in moves]
        else:
            staging = None
    # The journal first: from here on a kill leaves nothing a rerun cannot recognise as its own.
    mode = MODE_FILES if why_not else MODE_DIRECTORY
    journal = journal_bytes(layout.run_id, creates, stale_names, {"mode": mode, "staging": staging})
    _write_file(_join(out, journal_name(layout.run_id)), journal, temp)
    swapped = mode == MODE_DIRECTORY and _publish_directory(out, staging, layout.run_id, journal, moves,
                                                            manifest_data, stale_names)
    if not swapped:
        if mode == MODE_DIRECTORY:  # the staging directory is complete but could not be swapped in
            moves = [(_join(staging, name), name) for _, name in moves]
        _publish_files(out, layout.run_id, moves, stale_names, creates, manifest_data)
        if staging is not None:
            _clear_own(staging, set(creates), layout.run_id)
    _clear_leftover_siblings(out, layout.run_id, swapped)
    return manifest


def _publish_files(out: str, run_id: str, moves: Sequence[Tuple[str, str]], stale_names: Dict[str, str],
                   creates: Dict[str, Optional[int]], manifest_data: bytes) -> None:
    """Publish file by file into ``out`` (object stores, HDFS, a directory holding foreign files):
    the earlier export's files go, each new file is renamed to its final name, then the manifest,
    then ``_SUCCESS``. A kill between two rename batches leaves complete files under final names
    and no ``_SUCCESS``."""
    temp = _join(out, TEMP_DIR, run_id)
    # An earlier export stops being one before any of its files goes; the files this run
    # creates under the same names are replaced by the renames, not deleted (a retried
    # finalize must not delete what the first attempt published).
    markers = [stale_names[n] for n in (SUCCESS_NAME, MANIFEST_NAME) if n in stale_names]
    _delete(markers)
    visible = [path for name, path in stale_names.items()
               if not name.startswith(TEMP_DIR + "/") and name not in creates]
    _delete(visible)
    _rename_into_place([(src, _join(out, name)) for src, name in moves], pause="publish.renamed")
    _write_file(_join(out, MANIFEST_NAME), manifest_data, temp)
    pause_point("publish.manifest")
    _write_file(_join(out, SUCCESS_NAME), b"", temp)
    pause_point("publish.success")
    _delete_tree(temp)
    _delete([path for name, path in stale_names.items() if name.startswith(TEMP_DIR + "/")])
    _remove_empty_run_dirs(_join(out, TEMP_DIR))
    _remove_empty_run_dirs(_join(out, REJECTED_DIR))


# ------------------------------------------------------------------------------------------------
# Directory publish (local output): assemble the export in a hidden sibling, then swap it in.

def _own_dir(rel: str, holding: Set[str], run_id: str) -> bool:
    """Whether a directory (relative name) is the job's: it held the job's files, or it is
    ``_temporary``, ``_rejected`` or a run's scratch or rejected-rows directory."""
    parts = rel.split("/")
    if rel in holding or rel in (TEMP_DIR, REJECTED_DIR):
        return True
    if parts[0] == TEMP_DIR and len(parts) > 1 and (is_run_id(parts[1]) or parts[1] == run_id):
        return True
    return parts[0] == REJECTED_DIR and len(parts) == 2 and is_run_id(parts[1])


def _walk(root: str) -> Tuple[List[str], List[str]]:
    """(files, directories) under a local ``root``, relative names, deepest directories first.
    Symlinks are not followed; a symlink to a directory is listed as a file."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        if prefix:
            dirs.append(rel)
        files += [prefix + name for name in filenames]
        files += [prefix + name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
    return sorted(files), sorted(dirs, key=lambda d: (-d.count("/"), d))


def _ancestors(names: Iterable[str]) -> Set[str]:
    found: Set[str] = set()
    for name in names:
        parts = name.split("/")[:-1]
        found.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def _directory_publish_blocker(out: str, run_id: str, stale_names: Dict[str, str]) -> Optional[str]:
    """Why ``out`` cannot be published by swapping directories, or None when it can: a local
    directory holding only this run's scratch and the files preflight found to be the job's own
    (listed again now, hidden files and empty directories included), whose parent is writable
    and on the same device as it and its scratch."""
    if "://" in out:
        return "not a local path"
    real = os.path.realpath(out)
    parent = os.path.dirname(real)
    temp = os.path.join(real, TEMP_DIR, run_id)
    if not os.path.isdir(temp):
        return f"{temp} is not a directory"
    if os.path.ismount(real):
        return f"{real} is a mount point"
    if len({os.stat(path).st_dev for path in (parent, real, temp)}) != 1:
        return f"{real}, its scratch directory and its parent are not all on one device"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its parent directory {parent} is not writable"
    parent_stat = os.stat(parent)
    if parent_stat.st_mode & stat.S_ISVTX and hasattr(os, "geteuid") and \
            os.geteuid() not in (0, parent_stat.st_uid, os.stat(real).st_uid):
        return f"its parent directory {parent} is sticky and neither it nor {real} is this user's"
    scratch = f"{TEMP_DIR}/{run_id}/"
    files, dirs = _walk(real)
    foreign = [name for name in files if name not in stale_names and not name.startswith(scratch)]
    holding = _ancestors(name for name in files if name not in foreign)
    foreign += [d + "/" for d in dirs if not _own_dir(d, holding, run_id)]
    if foreign:
        return f"it holds {len(foreign)} entries this job did not write ({', '.join(sorted(foreign)[:5])})"
    return None


def _clear_own(root: str, own: Set[str], run_id: Optional[str]) -> List[str]:
    """In a local directory, delete the files named in ``own`` (relative names) and those under
    ``_temporary/<run_id>/``, then the job's directories left empty, then ``root`` if empty.
    Returns the relative names of what is left (files the job cannot prove are its own)."""
    if not os.path.isdir(root):
        return []
    scratch = f"{TEMP_DIR}/{run_id}/" if run_id else None
    files, dirs = _walk(root)
    doomed = [name for name in files if name in own or (scratch and name.startswith(scratch))]
    for name in doomed:
        os.remove(os.path.join(root, name))
    holding = _ancestors(doomed)
    for rel in dirs:  # deepest first
        path = os.path.join(root, rel)
        if _own_dir(rel, holding, run_id or "") and not os.path.islink(path) and not os.listdir(path):
            os.rmdir(path)
    left = sorted(set(files) - set(doomed))
    if not os.listdir(root):
        os.rmdir(root)
    return left


def _clear_sibling(path: str) -> List[str]:
    """Remove the job's files (by ``take_inventory``) from a sibling left by a killed directory
    publish, and the sibling itself when nothing else is in it; warn about what stays."""
    left = _clear_own(path, set(take_inventory(path).ours), None)
    if left:
        _LOG.warning("left %s in place: it holds %d file(s) this job did not write (%s)", path, len(left),
                     ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""))
    return left


def _clear_leftover_siblings(out: str, run_id: str, swapped: bool) -> None:
    """Clear the staging and moved-aside directories that killed runs (or a failed attempt of
    this run) left beside ``out``; this run's own were handled already when it swapped."""
    if "://" in out:
        return
    for path, sibling_run, kind in publish_siblings(os.path.realpath(out)):
        if sibling_run != run_id or (kind == "previous" and not swapped):
            _LOG.info("removing the files of run %s from its %s directory %s", sibling_run, kind, path)
            _clear_sibling(path)


def _swap_in(real: str, staging: str, previous: str) -> bool:
    """Rename ``real`` aside to ``previous`` and ``staging`` to ``real``; False (nothing changed)
    when ``real`` cannot be moved aside. A kill between the two renames leaves no ``real``."""
    if os.path.lexists(previous):  # an earlier attempt of this run moved the output aside, then failed
        _clear_sibling(previous)
    try:
        os.rename(real, previous)
    except OSError as err:
        _LOG.warning("cannot move %s aside to %s (%s); publishing file by file instead", real, previous, err)
        return False
    pause_point("publish.swapped_out")
    try:
        os.rename(staging, real)
    except OSError as err:
        raise ExportError(f"moved the output directory {real} aside to {previous} but cannot rename the "
                          f"complete export {staging} into its place: {err}") from err
    return True


def _publish_directory(out: str, staging: str, run_id: str, journal: bytes, moves: Sequence[Tuple[str, str]],
                       manifest_data: bytes, stale_names: Dict[str, str]) -> bool:
    """Assemble the export in ``staging`` (a hidden sibling of the output directory), then swap it
    in; False when the output directory cannot be moved aside (``staging`` is then complete, and
    the caller publishes its files one by one). Afterwards the old directory's files that are
    the job's own go (``stale_names`` and this run's scratch); a file that appeared in it during
    the run stays, with a warning naming the directory."""
    real = os.path.realpath(out)
    os.makedirs(staging, exist_ok=True)  # exists when a failed attempt of this run made it
    os.chmod(staging, stat.S_IMODE(os.stat(real).st_mode))
    scratch = _join(staging, TEMP_DIR, run_id)
    # The journal's copy makes the staging directory's files the job's own for take_inventory.
    _write_file(_join(staging, journal_name(run_id)), journal, scratch)
    _rename_into_place([(src, _join(staging, name)) for src, name in moves], pause="publish.renamed")
    _write_file(_join(staging, MANIFEST_NAME), manifest_data, scratch)
    pause_point("publish.manifest")
    _write_file(_join(staging, SUCCESS_NAME), b"", scratch)
    pause_point("publish.staged")
    previous = sibling_dir(real, run_id, "previous")
    if not _swap_in(real, staging, previous):
        return False
    pause_point("publish.success")
    _delete_tree(_join(real, TEMP_DIR, run_id))
    _remove_empty_run_dirs(_join(real, TEMP_DIR))
    left = _clear_own(previous, set(stale_names), run_id)
    if left:
        _LOG.warning("left %s in place: %d file(s) appeared in %s during the run and are not this job's (%s)",
                     previous, len(left), out, ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""))
    return True


@beam.typehints.with_input_types(Iterable[int])  # a combiner's types: Beam reads no string annotations
@beam.typehints.with_output_types(int)
def _total_rows(counts: Iterable[int]) -> int:
    """The rows read, from the read steps' counts."""
    return sum(counts)


@beam.typehints.with_input_types(str, List[ShardResult], int, List[RejectedPart], List[UnreadableRowGroup],
                                 DuplicateCounts)
@beam.typehints.with_output_types(Dict[str, Any])
class _FinalizeFn(beam.DoFn):
    def __init__(self, layout: OutputLayout, manifest_base: Dict, expected_rows: Optional[int],
                 max_reject_fraction: float, stale: Tuple[str, ...], require_claim: bool = False):
        self._layout = layout
        self._require_claim = require_claim
        self._base = manifest_base
        self._expected = expected_rows
        self._max_reject = max_reject_fraction
        self._stale = stale

    def process(self, _run_id, shards, rows_read, rejected, unreadable, duplicates):
        keys, rows, collisions = duplicates
        yield publish(self._layout, shards, int(rows_read), rejected, self._base, self._expected,
                      self._max_reject, self._stale, unreadable, {"keys": int(keys), "rows": int(rows)},
                      list(collisions) if self._layout.string_keys else None, self._require_claim)


class FinalizeExport(beam.PTransform):
    """{"shards", "rows_read", "rejected"[, "unreadable", "duplicates"]} PCollections -> the
    manifest dict, once everything is published.

    Args:
      layout: the output directory, run id and shard count.
      manifest_base: the manifest's static entries.
      expected_rows: rows by the input footers, or None.
      max_reject_fraction: fail above this fraction of rejected rows.
      stale: absolute paths of this job's earlier files to remove (``ExportPlan.stale_files``).
      require_claim: check that the run still holds the output directory's claim before publishing.

    Inputs "unreadable" (row groups skipped by ``on_bad_file: skip``) and "duplicates" (one
    (keys, rows, key-id collisions) per shard or key bucket, ``transforms.duplicates``) are optional.
    """

    def __init__(self, layout: OutputLayout, manifest_base: Dict, expected_rows: Optional[int] = None,
                 max_reject_fraction: float = 1.0, stale: Sequence[str] = (), require_claim: bool = False):
        super().__init__()
        self._args = (layout, manifest_base, expected_rows, max_reject_fraction, tuple(stale), require_claim)

    def expand(self, inputs):
        layout = self._args[0]
        p = inputs["shards"].pipeline
        rows_read = inputs["rows_read"] | "SumRowsRead" >> beam.CombineGlobally(_total_rows)
        unreadable = inputs.get("unreadable")
        if unreadable is None:
            unreadable = p | "NoUnreadable" >> beam.Create([]).with_output_types(UnreadableRowGroup)
        # Through a combiner, not straight into AsList: Beam's bundle-based direct runner hands a
        # side input made from a tagged output the main output's elements instead.
        unreadable = (unreadable | "CollectUnreadable" >> beam.combiners.ToList()
                      .with_output_types(List[UnreadableRowGroup]))
        duplicates = inputs.get("duplicates")
        if duplicates is None:
            duplicates = p | "NoDuplicates" >> beam.Create([NO_DUPLICATES]).with_output_types(DuplicateCounts)
        duplicates = duplicates | "SumDuplicates" >> beam.CombineGlobally(sum_duplicate_counts)
        return (p
                | "Once" >> beam.Create([layout.run_id])
                | "Publish" >> beam.ParDo(_FinalizeFn(*self._args),  # side inputs in process()'s order
                                          beam.pvalue.AsList(inputs["shards"]),
                                          beam.pvalue.AsSingleton(rows_read),
                                          beam.pvalue.AsList(inputs["rejected"]),
                                          beam.pvalue.AsSingleton(unreadable),
                                          beam.pvalue.AsSingleton(duplicates)))
