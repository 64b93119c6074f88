"""The output directory's owner: a run claims the directory before it writes there.

Two runs writing to one output directory would each publish over the other (a 16-shard manifest
beside 24 part files). A run therefore claims the directory first, and only the holder of the
claim may publish:

1. **Claim.** The run writes its claim file ``_temporary/<run id>/_CLAIM.json`` (host, process
   id and start time, boot id, when it claimed), once, then lists every claim file in the
   directory. If another claim is there whose holder is alive, it deletes its own and is
   refused, naming the holder. This is "write, then read": of two runs claiming at once, the
   one that lists second sees the first (both may see each other and both be refused; never
   can both go on). It needs only that a file, once written, shows in a listing started after
   the write finished: true of local disks, HDFS (one NameNode), Google Cloud Storage and S3
   (strongly consistent listings since 2020); not of stores with eventually consistent
   listings.
2. **Heartbeat.** The launcher rewrites ``_temporary/<run id>/_HEARTBEAT.json`` (the time)
   every ``HEARTBEAT_SECONDS`` while the run lasts (the claim file itself is never rewritten), so that a claim whose holder cannot be checked directly can be judged by its age.
3. **Liveness.** A claim made on this host is alive while its process is (the same pid, the
   same process start time, the same boot): a killed run's claim is taken over at once. A
   claim made on another host is alive until its heartbeat is ``LEASE_SECONDS`` old (clocks
   are assumed to agree to well within that). A claim file that cannot be read is treated as
   alive: nothing is taken over without evidence.
4. **Re-check.** Finalize checks that the run still holds its claim (its file is there, with
   its run id, and no other live claim is) right before it publishes anything.
5. **Release.** The claim is part of the run's scratch directory, which a finished or failed
   run removes.

A claim of a dead holder is debris of an unfinished run (``transforms.ownership``): the run that
takes over the directory removes it with the rest of that run's scratch.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from transforms.outputdir import scratch_name

__all__ = ["CLAIM_NAME", "HEARTBEAT_NAME", "HEARTBEAT_SECONDS", "LEASE_SECONDS", "Claim", "ClaimRefused", "new_claim",
           "claim_bytes", "parse_claim", "holder_alive", "read_claims", "acquire", "claim_problem",
           "release", "Heartbeat"]

CLAIM_NAME = "_CLAIM.json"
HEARTBEAT_NAME = "_HEARTBEAT.json"
HEARTBEAT_SECONDS = 60.0
LEASE_SECONDS = 600.0


class ClaimRefused(RuntimeError):
    """Another live run holds the output directory; the message names it."""


@dataclass(frozen=True)
class Claim:
    """Who holds an output directory.

    Args:
      run_id: the holding run.
      host: ``socket.gethostname()`` of the launcher.
      pid: the launcher's process id.
      pid_started: the process's start time (Linux: clock ticks since boot), or None.
      boot_id: the host's boot id (Linux), or None.
      claimed_at / heartbeat_at: seconds since the epoch, by the launcher's clock (``heartbeat_at``
        as read back: the later of the claim time and the heartbeat file's time).
    """
    run_id: str
    host: str
    pid: int
    pid_started: Optional[int]
    boot_id: Optional[str]
    claimed_at: float
    heartbeat_at: float

    def describe(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.claimed_at))
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, claimed {since}, "
                f"last heartbeat {max(0, now - self.heartbeat_at):.0f} s ago)")


def claim_path(out: str, run_id: str, name: str = CLAIM_NAME) -> str:
    """The claim (or heartbeat) file of run ``run_id``: in its scratch directory."""
    return out.rstrip("/") + "/" + scratch_name(run_id, name)


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _process_started(pid: int) -> Optional[int]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields count from its last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def new_claim(run_id: str) -> Claim:
    now = time.time()
    pid = os.getpid()
    return Claim(run_id, socket.gethostname(), pid, _process_started(pid), _boot_id(), now, now)


def claim_bytes(claim: Claim) -> bytes:
    return json.dumps(asdict(claim), indent=1).encode("utf-8") + b"\n"


def parse_claim(data: bytes) -> Optional[Claim]:
    """The claim in ``data``, or None when it is not one."""
    try:
        body = json.loads(data.decode("utf-8"))
        claim = Claim(**body)
    except Exception:
        return None
    if not (isinstance(claim.run_id, str) and isinstance(claim.host, str) and isinstance(claim.pid, int)
            and isinstance(claim.heartbeat_at, (int, float))):
        return None
    return claim


def holder_alive(claim: Claim, now: Optional[float] = None, lease: float = LEASE_SECONDS) -> bool:
    """Whether the run holding ``claim`` may still be running (see the module docstring, 3)."""
    now = time.time() if now is None else now
    if claim.host == socket.gethostname() and (claim.boot_id is None or claim.boot_id == _boot_id()):
        try:
            os.kill(claim.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
        started = _process_started(claim.pid)
        return claim.pid_started is None or started is None or started == claim.pid_started
    if claim.host == socket.gethostname() and claim.boot_id is not None:
        return False  # this host rebooted since: every process of that boot is gone
    return now - claim.heartbeat_at < lease


def _fs():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def _read(path: str) -> Optional[bytes]:
    from apache_beam.io.filesystem import CompressionTypes
    try:
        with _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read(1 << 20)
    except Exception:
        return None


def read_claims(out: str) -> Dict[str, Tuple[str, Optional[Claim]]]:
    """{run id: (path, claim or None when unreadable)} of every claim file in ``out``."""
    fs = _fs()
    pattern = claim_path(out, "*")
    try:
        matched = fs.match([pattern])[0].metadata_list
    except Exception:
        return {}
    found = {}
    for meta in matched:
        run_id = meta.path.rstrip("/").split("/")[-2]
        data = _read(meta.path)
        claim = parse_claim(data) if data is not None else None
        if claim is not None:
            beat = _read(claim_path(out, run_id, HEARTBEAT_NAME))
            try:
                at = float(json.loads(beat.decode("utf-8"))["heartbeat_at"]) if beat else None
            except Exception:
                at = None
            if at is not None and at > claim.heartbeat_at:
                claim = Claim(**{**asdict(claim), "heartbeat_at": at})
        found[run_id] = (meta.path, claim)
    return found


def live_claims(out: str, except_run: Optional[str] = None) -> List[Tuple[str, str, Optional[Claim]]]:
    """(run id, path, claim) of the claims in ``out`` other than ``except_run``'s that may be
    alive (an unreadable claim counts as alive)."""
    now = time.time()
    return [(run, path, claim) for run, (path, claim) in sorted(read_claims(out).items())
            if run != except_run and (claim is None or holder_alive(claim, now))]


def describe_live(live: List[Tuple[str, str, Optional[Claim]]]) -> str:
    return "; ".join(claim.describe() if claim is not None else f"run {run} (its claim file {path} cannot be read)"
                     for run, path, claim in live)


def _write(path: str, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``path``, then rename it to ``path``."""
    from apache_beam.io.filesystem import CompressionTypes
    fs = _fs()
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    if "://" not in path:
        os.replace(tmp, path)  # atomic, over an existing file
        return
    if fs.exists(path):
        fs.delete([path])  # HDFS does not rename over an existing file
    fs.rename([tmp], [path])


def acquire(out: str, run_id: str) -> Claim:
    """Claim ``out`` for ``run_id`` (module docstring, 1); returns the claim.

    Raises:
      ClaimRefused: another live run holds it (or claimed it at the same moment); this run's
        claim file is removed again.
    """
    claim = new_claim(run_id)
    path = claim_path(out, run_id)
    _write(path, claim_bytes(claim))
    live = live_claims(out, except_run=run_id)
    if live:
        release(out, run_id)
        raise ClaimRefused(f"output.path {out} is claimed by {describe_live(live)}: another export is writing "
                           "there; wait for it to finish or stop it (the claim of a run that was killed is "
                           f"taken over: on this host at once, from another host {LEASE_SECONDS:g} s after "
                           "its last heartbeat)")
    return claim


def claim_problem(out: str, run_id: str) -> Optional[str]:
    """Why run ``run_id`` no longer holds ``out`` (its claim is gone or another live run claims
    it), or None when it does."""
    data = _read(claim_path(out, run_id))
    claim = parse_claim(data) if data is not None else None
    if claim is None or claim.run_id != run_id:
        live = live_claims(out, except_run=run_id)
        holder = f"; it is now claimed by {describe_live(live)}" if live else ""
        return f"run {run_id} no longer holds its claim on {out} ({claim_path(out, run_id)} is gone){holder}"
    live = live_claims(out, except_run=run_id)
    if live:
        return f"another run claims {out} too: {describe_live(live)}"
    return None


def release(out: str, run_id: str) -> None:
    """Remove this run's claim file (and, locally, its directories when left empty)."""
    fs = _fs()
    path = claim_path(out, run_id)
    for doomed in (claim_path(out, run_id, HEARTBEAT_NAME), path):
        try:
            if fs.exists(doomed):
                fs.delete([doomed])
        except Exception:
            pass  # already gone (a finished publish removes the run's scratch directory)
    if "://" not in out:
        for directory in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
            try:
                os.rmdir(directory)
            except OSError:
                break  # not empty, or gone


class Heartbeat:
    """While open, write the time to ``_HEARTBEAT.json`` beside the claim every ``interval``
    seconds (a thread of the launcher), as long as the claim file is still this run's."""

    def __init__(self, out: str, claim: Claim, interval: float = HEARTBEAT_SECONDS):
        self._out = out
        self._claim = claim
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        path = claim_path(self._out, self._claim.run_id)
        while not self._stop.wait(self._interval):
            try:
                data = _read(path)
                current = parse_claim(data) if data is not None else None
                if current is None or current.run_id != self._claim.run_id:
                    continue  # published (scratch removed) or taken away: nothing to refresh
                _write(claim_path(self._out, self._claim.run_id, HEARTBEAT_NAME),
                       json.dumps({"run_id": self._claim.run_id, "heartbeat_at": time.time()}).encode("utf-8"))
            except Exception:
                continue  # a missed heartbeat only shortens the lease left
