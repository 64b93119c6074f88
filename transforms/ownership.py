"""Which files in an output directory this job wrote: the only files it will ever delete or replace.

Beam's file sinks delete whatever matches their output glob; this job does not guess from names.
A file counts as the job's own only on evidence the job itself left:

1. scratch: anything under ``_temporary/<run id>/`` (a run id is ``YYYYMMDDTHHMMSSZ-xxxxxxxx``,
   so another tool's ``_temporary/0/`` is not taken for ours);
2. a finished or half-finished export: ``_MANIFEST.json`` when it parses as this job's manifest,
   the ``_SUCCESS`` beside it, and the shard and rejected-rows files that manifest lists;
3. a publish journal ``_temporary/<run id>/_PUBLISH.json``, written by finalize before it puts
   anything in place: the files it creates (with their sizes: a file of another size under that
   name is not ours) and the files of an earlier export it removes. It survives a kill at any
   moment of the publish, so a rerun knows every file the killed run had already moved;
4. rejected-rows Parquet files under ``_rejected/`` whose footer carries this job's run-id stamp
   (``embedding_export.run_id``): the rows a failed run published for inspection.

A local export is published by swapping directories (``transforms.finalize``): the new export is
assembled in a hidden sibling ``.<name>.<run id>.publishing`` and the old directory is moved aside
to ``.<name>.<run id>.previous``. A run killed meanwhile leaves these siblings; ``publish_siblings``
finds them by that exact name, and their files count as ours only by the evidence above
(``take_inventory`` on each: the staging directory holds a copy of the journal).

Everything else is foreign. ``take_inventory`` lists the directory and classifies it (the pure
part is ``classify``); ``check_output_dir`` decides from the inventory whether a run may start and which
files the run's finalize removes.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from transforms.errors import PreflightError
from transforms.claim import LEASE_SECONDS, describe_live, live_claims
from transforms.outputdir import (JOURNAL_NAME, MANIFEST_NAME, REJECTED_DIR, SHARD_PREFIX, SUCCESS_NAME, TEMP_DIR,
                                  scratch_name)
from transforms.rejected import RUN_ID_METADATA_KEY

__all__ = ["RUN_ID_PATTERN", "new_run_id", "Inventory", "classify", "take_inventory",
           "journal_name", "journal_bytes", "looks_like_output", "is_run_id", "scratch_run_id",
           "SIBLING_KINDS", "sibling_dir", "publish_siblings", "check_output_dir"]

_LOG = logging.getLogger(__name__)
_RUN_ID = r"\d{8}T\d{6}Z-[0-9a-f]{8}"
RUN_ID_PATTERN = re.compile(f"^{_RUN_ID}$")

SIBLING_KINDS = ("publishing", "previous")  # the staging directory, the output directory moved aside


def new_run_id() -> str:
    """A new run id: the UTC launch time and 8 random hex digits (``RUN_ID_PATTERN``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_PATTERN.match(text))


def journal_name(run_id: str) -> str:
    """The journal's path relative to the output directory."""
    return scratch_name(run_id, JOURNAL_NAME)


def journal_bytes(run_id: str, creates: Mapping[str, Optional[int]], removes: Iterable[str],
                  extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """The journal: {"run_id", "creates": [{"file", "bytes"}], "removes": [file]} (relative names),
    then the ``extra`` entries (how finalize publishes: ``mode``, ``staging``), which ``classify``
    does not read."""
    body: Dict[str, Any] = {"run_id": run_id,
                            "creates": [{"file": name, "bytes": size} for name, size in creates.items()],
                            "removes": sorted(removes)}
    body.update({key: value for key, value in (extra or {}).items() if key not in body})
    return json.dumps(body, indent=1).encode("utf-8") + b"\n"


def sibling_dir(real_out: str, run_id: str, kind: str) -> str:
    """``<parent>/.<name>.<run id>.<kind>``: the staging directory (``publishing``) or the old
    output directory moved aside (``previous``) of a directory publish of ``real_out`` (local)."""
    if kind not in SIBLING_KINDS:
        raise ValueError(f"sibling kind {kind!r} is not one of {SIBLING_KINDS}")
    parent, name = os.path.split(real_out.rstrip(os.sep))
    return os.path.join(parent, f".{name}.{run_id}.{kind}")


def publish_siblings(real_out: str) -> List[Tuple[str, str, str]]:
    """(path, run id, kind) of every directory beside ``real_out`` named as ``sibling_dir`` names
    them with a real run id, sorted. Siblings of other names, without a run id, or that are
    symlinks are not listed."""
    parent, name = os.path.split(real_out.rstrip(os.sep))
    pattern = re.compile(r"^\." + re.escape(name) + r"\.(?P<run>" + _RUN_ID + r")\.(?P<kind>"
                         + "|".join(SIBLING_KINDS) + r")$")
    try:
        names = os.listdir(parent or ".")
    except OSError:
        return []
    found = []
    for entry in sorted(names):
        match = pattern.match(entry)
        path = os.path.join(parent, entry)
        if match and os.path.isdir(path) and not os.path.islink(path):
            found.append((path, match.group("run"), match.group("kind")))
    return found


def scratch_run_id(name: str) -> Optional[str]:
    """The run id of a relative name under ``_temporary/<run id>/``, else None."""
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] == TEMP_DIR and is_run_id(parts[1]):
        return parts[1]
    return None


def looks_like_output(name: str) -> bool:
    """Whether a relative name is one a loader of exports would read (or that the job writes):
    ``part-*`` at the top or anywhere under ``_rejected/``, ``_MANIFEST.json``, ``_SUCCESS``."""
    parts = name.split("/")
    if len(parts) == 1:
        return name in (MANIFEST_NAME, SUCCESS_NAME) or name.startswith(SHARD_PREFIX)
    return parts[0] == REJECTED_DIR


@dataclass(frozen=True)
class Inventory:
    """An output directory, classified.

    Args:
      finished: ``_SUCCESS`` is there (a finished export, or at least its marker).
      ours: relative names of the files this job wrote (see the module docstring).
      foreign: relative names of every other file.
      runs: run ids of unfinished runs whose scratch, journal or stamped files are there.
    """
    finished: bool
    ours: Tuple[str, ...]
    foreign: Tuple[str, ...]
    runs: Tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.ours and not self.foreign

    @property
    def debris_only(self) -> bool:
        """Only files an unfinished run of this job left (a rerun may go ahead without overwrite)."""
        return not self.finished and not self.foreign and bool(self.ours)

    @property
    def foreign_outputs(self) -> Tuple[str, ...]:
        """Foreign files with names this job's export uses or a loader would read."""
        return tuple(name for name in self.foreign if looks_like_output(name))


def _manifest_files(manifest: object) -> Optional[List[str]]:
    """The relative names a manifest of this job lists, or None if it is not one."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return None
    names = []
    for key in ("shards", "rejected_files"):
        for entry in manifest.get(key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                names.append(posixpath.normpath(entry["file"]))
    return names


def classify(sizes: Mapping[str, int], read_json: Callable[[str], object],
             rejected_stamp: Callable[[str], Optional[str]]) -> Inventory:
    """Classify the files of an output directory (pure: I/O goes through the callables).

    Args:
      sizes: {relative name ("a/b" separators): size in bytes} of every file.
      read_json: parsed JSON of a relative name (None if unreadable).
      rejected_stamp: the run-id stamp in the footer of a Parquet file under ``_rejected/``, or None.
    """
    ours: Dict[str, None] = {}
    runs: Dict[str, None] = {}
    for name in sizes:
        run_id = scratch_run_id(name)
        if run_id is not None:
            ours[name] = None
            runs[run_id] = None
    if MANIFEST_NAME in sizes:
        listed = _manifest_files(read_json(MANIFEST_NAME))
        if listed is not None:
            for name in [MANIFEST_NAME, SUCCESS_NAME] + listed:
                if name in sizes:
                    ours[name] = None
    for name in sizes:
        if not (name.endswith("/" + JOURNAL_NAME) and scratch_run_id(name)):
            continue
        journal = read_json(name)
        if not isinstance(journal, dict):
            continue
        for entry in journal.get("creates") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                continue
            target = posixpath.normpath(entry["file"])
            size = entry.get("bytes")
            if target in sizes and (size is None or size == sizes[target]):
                ours[target] = None
        for target in journal.get("removes") or []:
            if isinstance(target, str) and posixpath.normpath(target) in sizes:
                ours[posixpath.normpath(target)] = None
    for name in sizes:
        if name not in ours and name.startswith(REJECTED_DIR + "/") and name.endswith(".parquet"):
            stamp = rejected_stamp(name)
            if stamp is not None and is_run_id(stamp):
                ours[name] = None
                if name.split("/")[1] == stamp:
                    runs[stamp] = None
    foreign = tuple(sorted(name for name in sizes if name not in ours))
    return Inventory(SUCCESS_NAME in sizes, tuple(sorted(ours)), foreign, tuple(sorted(runs)))


def take_inventory(out: str, skip_run: Optional[str] = None) -> Inventory:
    """List the output directory ``out`` (local or a URL Beam's FileSystems reads) and classify it;
    ``skip_run``'s own scratch (a run looking at the directory it claimed) is left out."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from transforms.file_listing import list_files

    prefix = out.rstrip("/") + "/"
    matched = list_files(out)  # not match(**): Beam's HDFS listing is one level deep
    sizes = {m.path[len(prefix):].replace("\\", "/"): int(m.size_in_bytes) for m in matched
             if m.path.startswith(prefix)}
    if skip_run is not None:
        sizes = {name: size for name, size in sizes.items() if scratch_run_id(name) != skip_run}

    def read_json(name: str) -> object:
        try:
            with FileSystems.open(prefix + name, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return json.loads(handle.read(1 << 26).decode("utf-8"))
        except Exception:  # unreadable or not JSON: no evidence, the files stay foreign
            return None

    def rejected_stamp(name: str) -> Optional[str]:
        import pyarrow.parquet as pq
        try:
            with FileSystems.open(prefix + name, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                metadata = pq.ParquetFile(handle).metadata.metadata or {}
        except Exception:
            return None
        stamp = metadata.get(RUN_ID_METADATA_KEY)
        return stamp.decode("utf-8", "replace") if stamp is not None else None

    return classify(sizes, read_json, rejected_stamp)


def _shown(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _note_killed_publish(path: str) -> None:
    """Name the staging and moved-aside directories a killed directory publish left beside a
    local output path (the run's finalize removes the job's files in them; nothing else), and a
    symlinked output left dangling by a kill between the publish's two renames (``run_export``
    makes its target again before launching; preflight, which ``--dry-run`` runs too, writes
    nothing)."""
    if "://" in path:
        return
    siblings = publish_siblings(os.path.realpath(path))
    if siblings:
        _LOG.warning("beside output.path %s: %s, left by killed run(s) %s; once this run has published, it "
                     "removes the files in them that are this job's own", path,
                     ", ".join(os.path.basename(sibling) for sibling, _, _ in siblings),
                     ", ".join(sorted({run for _, run, _ in siblings})))
    if os.path.islink(path) and not os.path.exists(path):
        _LOG.warning("output.path %s is a symlink to %s, which does not exist (a killed run had moved it "
                     "aside); the run makes it again", path, os.path.realpath(path))


def check_output_dir(path: str, overwrite: bool, own_run: Optional[str] = None) -> Inventory:
    """What the output directory holds, and whether this run may write there.

    Allowed: an empty or missing directory; one holding only what an unfinished run of this job
    left (no ``_SUCCESS``; scratch, journal-listed or stamped files: ``transforms.ownership``),
    which the run removes; and with ``overwrite``, an earlier export of this job, whose files are
    removed while foreign files stay, unless a foreign file has a name the export uses or a
    loader reads (then the run is refused: the job neither deletes nor mixes with it). A directory
    another live run has claimed (``transforms.claim``) is refused.

    Args:
      own_run: the run that now holds the directory's claim (its recheck): its own scratch is
        skipped, its claim is not another's, and the killed-publish notes are not repeated.
    """
    if own_run is None:
        _note_killed_publish(path)
    if "://" not in path and os.path.isfile(path):
        raise PreflightError(f"output.path {path} is a file; it must be a directory")
    try:
        inventory = take_inventory(path, skip_run=own_run)
    except Exception as err:
        raise PreflightError(f"output.path {path}: cannot list it: {err}") from None
    live = live_claims(path, except_run=own_run) if inventory.runs else []
    if live:
        raise PreflightError(f"output.path {path} is claimed by {describe_live(live)}: another export is "
                             "writing there; wait for it to finish or stop it (the claim of a killed run is "
                             "taken over: on this host at once, from another host "
                             f"{LEASE_SECONDS:g} s after its last heartbeat)")
    if inventory.empty:
        return inventory
    if inventory.debris_only:
        _LOG.warning("output.path %s holds only what unfinished run(s) %s of this job left (%d files); "
                     "this run removes them", path, ", ".join(inventory.runs) or "?", len(inventory.ours))
        return inventory
    if not overwrite:
        names = list(inventory.foreign) + list(inventory.ours)  # the foreign ones are why: first
        what = "the finished export there" if inventory.finished else "an earlier export"
        raise PreflightError(
            f"output.path {path} already holds {len(names)} file(s) ({_shown(names)}); "
            f"pass --overwrite (or set output.overwrite: true) to replace {what}: only the files this "
            f"job wrote (those its {MANIFEST_NAME} or publish journal names, and its {TEMP_DIR}/ "
            f"scratch files) are removed, others are kept")
    clashing = inventory.foreign_outputs
    if clashing:
        raise PreflightError(
            f"output.path {path} holds {len(clashing)} file(s) that no manifest or journal of this job names "
            f"but that look like export files ({_shown(clashing)}); the job does not delete or mix with "
            f"files it did not write: move them away, or choose another output.path")
    return inventory
