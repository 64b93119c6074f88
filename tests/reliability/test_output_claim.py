"""The output directory has one owner at a time (transforms.claim).

A run claims the output directory before it writes there; a second run is refused with a
message naming the holder; the claim is checked again right before publishing; a claim left by
a killed run is taken over. Real command lines in subprocesses, started together or stopped at a
named moment (``transforms.pause_points``), real SIGKILLs.
"""
import json
import os
import socket
import subprocess
import time

import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES, final_looking, sigkill, start_cli, tree, wait_for, write_config
from transforms.claim import (CLAIM_NAME, LEASE_SECONDS, Claim, claim_bytes, holder_alive, new_claim,
                              read_claims)
from transforms.pause_points import PAUSE_AT_ENV, PAUSE_DIR_ENV

pytestmark = pytest.mark.timeout(400)

TRIALS = FIGURES.setdefault("concurrent runs on one output directory (trial: exit codes, shards published)", [])
USERS = 400


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("claim")
    write_users(str(root / "a"), USERS, files=2, bad=True)
    write_users(str(root / "b"), USERS, files=2, seed=7, first_key=50_000)
    return root


def config(root, out, which="a", shards=16, name=None):
    cfg = tiny_config(str(root / which / "*.parquet"), tiny_model(), str(out), num_shards=shards,
                      max_reject_fraction=0.1)
    return write_config(cfg, str(root / (name or f"{os.path.basename(str(out))}-{which}-{shards}.yaml")))


def load_manifest(out):
    with open(os.path.join(out, "_MANIFEST.json")) as handle:
        return json.load(handle)


def check_single_export(out, shards, which="a"):
    """``out`` holds exactly one complete export of ``shards`` shards of input ``which``, and nothing else."""
    report = verify_export(str(out))
    assert report.ok, [str(p) for p in report.problems]
    manifest = load_manifest(out)
    parts = [name for name in tree(str(out)) if name.startswith("part-")]
    assert manifest["num_shards"] == shards and len(parts) == shards
    assert manifest["input"]["path"].endswith(f"/{which}/*.parquet")
    assert manifest["rows_read"] == USERS + (8 if which == "a" else 0) and report.records == manifest["rows_written"]
    assert not (out / "_temporary").exists()
    return manifest


@pytest.mark.parametrize("trial,inputs_of", [(1, ("a", "a")), (2, ("a", "a")), (3, ("a", "b"))])
def test_two_runs_started_together_leave_one_export(inputs, tmp_path, trial, inputs_of):
    """Two runs (16 and 8 shards) started at the same moment on one output directory: at most one
    publishes; the other is refused (exit 2) naming the holder or the finished export."""
    out = tmp_path / "out"
    procs = [start_cli(config(inputs, out, which, shards, name=f"t{trial}-{shards}.yaml"))
             for which, shards in zip(inputs_of, (16, 8))]
    results = [(proc.wait(timeout=300), proc.communicate()[1].decode()) for proc in procs]
    codes = [code for code, _ in results]
    published = load_manifest(out)["num_shards"] if (out / "_SUCCESS").exists() else None
    TRIALS.append((f"{trial} ({'same input' if inputs_of[0] == inputs_of[1] else 'different inputs'})",
                   codes, published))
    assert sorted(codes) in ([0, 2], [2, 2]), results
    for code, err in results:
        if code == 2:
            assert "is claimed by run" in err or "pass --overwrite" in err, err
    if 0 in codes:
        winner = codes.index(0)
        check_single_export(out, (16, 8)[winner], inputs_of[winner])
    else:
        assert final_looking(str(out)) == [] if out.exists() else True


def test_a_second_run_is_refused_naming_the_holder_and_takes_over_once_it_is_killed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    holder = start_cli(config(inputs, out, "a", 16), **{PAUSE_AT_ENV: "publish.claim", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.claim").exists(), holder), holder.communicate()[1].decode()[-3000:]
    (run_id,) = read_claims(str(out))
    second = config(inputs, out, "b", 8)
    assert cli_main(["run", "--config", second]) == 2
    err = capsys.readouterr().err
    assert f"is claimed by run {run_id} (host {socket.gethostname()}, pid {holder.pid}," in err, err
    assert "another export is writing there" in err
    assert cli_main(["run", "--config", second, "--overwrite"]) == 2      # --overwrite does not override a claim
    assert f"claimed by run {run_id}" in capsys.readouterr().err
    sigkill(holder)
    assert cli_main(["run", "--config", second]) == 0, capsys.readouterr().err   # the dead holder's claim is taken over
    check_single_export(out, 8, "b")
    assert run_id not in " ".join(tree(str(out)))


def test_a_run_that_lost_its_claim_before_publishing_publishes_nothing(inputs, tmp_path):
    """The claim is checked again right before publishing: a run whose claim was taken over (here:
    replaced by the test with another live run's, as a run that judged it dead would) fails."""
    out = tmp_path / "out"
    proc = start_cli(config(inputs, out, "a", 16), **{PAUSE_AT_ENV: "publish.claim", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.claim").exists(), proc), proc.communicate()[1].decode()[-3000:]
    (run_id,) = read_claims(str(out))
    os.remove(out / "_temporary" / run_id / CLAIM_NAME)
    thief = "20300101T000000Z-0123abcd"
    (out / "_temporary" / thief).mkdir()
    (out / "_temporary" / thief / CLAIM_NAME).write_bytes(claim_bytes(new_claim(thief)))  # this (live) process
    (tmp_path / "publish.claim.resume").write_text("")
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 1, err[-3000:]
    assert f"run {run_id} no longer holds its claim" in err and f"claimed by run {thief}" in err, err[-3000:]
    assert final_looking(str(out)) == []
    assert all(name.startswith(f"_temporary/{thief}/") for name in tree(str(out)))


def test_the_directory_is_checked_again_once_claimed(inputs, tmp_path):
    """A run that passed preflight while the directory was empty, and claims it only after another
    run has published there, is refused (without --overwrite); the other export stays whole."""
    out = tmp_path / "out"
    late = tiny_config(str(inputs / "b" / "*.parquet"), tiny_model(), str(out), num_shards=8)
    plan = preflight(late)
    first = run_export(preflight(tiny_config(str(inputs / "a" / "*.parquet"), tiny_model(), str(out), num_shards=16,
                                   max_reject_fraction=0.1)))
    with pytest.raises(PreflightError, match="already holds .*pass --overwrite"):
        run_export(plan)
    assert check_single_export(out, 16)["run_id"] == first["run_id"]


def test_liveness_of_a_claim():
    here = new_claim("20250101T000000Z-00000001")
    assert holder_alive(here)                                                  # this process
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not holder_alive(Claim(**{**here.__dict__, "pid": dead.pid}))      # a process that has ended
    if here.pid_started is not None:
        assert not holder_alive(Claim(**{**here.__dict__, "pid_started": here.pid_started + 1}))  # pid reused
    if here.boot_id is not None:
        assert not holder_alive(Claim(**{**here.__dict__, "boot_id": "another-boot"}))
    now = time.time()
    elsewhere = Claim(**{**here.__dict__, "host": "some-other-host"})
    assert holder_alive(Claim(**{**elsewhere.__dict__, "heartbeat_at": now - LEASE_SECONDS + 5}), now)
    assert not holder_alive(Claim(**{**elsewhere.__dict__, "heartbeat_at": now - LEASE_SECONDS - 5}), now)


def test_an_unreadable_claim_is_never_taken_over(inputs, tmp_path):
    out = tmp_path / "out"
    other = "20250101T000000Z-00000002"
    (out / "_temporary" / other).mkdir(parents=True)
    (out / "_temporary" / other / CLAIM_NAME).write_text("{ not a claim")
    cfg = tiny_config(str(inputs / "a" / "*.parquet"), tiny_model(), str(out), num_shards=2,
                      max_reject_fraction=0.1)
    with pytest.raises(PreflightError, match=f"claimed by run {other} \\(its claim file .* cannot be read\\)"):
        run_export(preflight(cfg))
    assert tree(str(out)) == [f"_temporary/{other}/{CLAIM_NAME}"]
