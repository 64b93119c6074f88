"""Guarantee 4: a run killed with SIGKILL at any point leaves no _SUCCESS and no partial file under a
final name; on a local output directory (published by swapping in a staged directory) it leaves
no file under a final name at all. The same command run again (without --overwrite) gives the
complete, correct export, byte for byte the export of an uninterrupted run, and nothing of the
killed run reaches it, nor stays beside it.

The killed run is the real command line (``python -m pipeline.cli run``) in a subprocess. Kill
points are exact (the run pauses at a named ``transforms.pause_points`` moment, the test sends
SIGKILL from outside), observed (SIGKILL as soon as the first temporary part file appears) or
timed (SIGKILL after a fixed delay). 150 shards, so that the publish renames take two batches and
a kill can land between them.
"""
import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import (FIGURES, assert_accounted, final_looking, read_bytes, sigkill, start_cli, tree,
                         wait_for, write_config)
from transforms.claim import CLAIM_NAME, HEARTBEAT_NAME
from transforms.ownership import publish_siblings
from transforms.pause_points import PAUSE_AT_ENV, PAUSE_DIR_ENV

pytestmark = pytest.mark.timeout(300)

SHARDS = 150
USERS = 1500
PAUSE_POINTS = ["read.row_group", "publish.start", "publish.renamed", "publish.manifest", "publish.staged",
                "publish.swapped_out"]
TIMED_KILLS = [0.01, 0.04, 0.1]  # seconds after the run's first file appears (it ends ~0.2 s later)
KILLS = FIGURES.setdefault("kill points tried (point, final-looking files left in the output directory, "
                           "complete files in the hidden staging directory)", [])
MARKERS = ("_MANIFEST.json", "_SUCCESS")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The inputs, and the export of an uninterrupted run of the same command."""
    root = tmp_path_factory.mktemp("crash")
    write_users(str(root / "in"), USERS, files=2, bad=True)
    out = root / "reference"
    proc = start_cli(config_for(root, out))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    manifest = verify_and_load(str(out))
    names = [s["file"] for s in manifest["shards"]] + [e["file"] for e in manifest["rejected_files"]]
    return root, manifest, read_bytes(str(out), names)


def config_for(root, out):
    cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=SHARDS)
    return write_config(cfg, str(out) + ".yaml")


def rows_of(table):
    """The table's rows, in any order (rejected rows of different steps meet in an order the
    runner picks), compared by repr so that NaN equals NaN."""
    return sorted(repr(row) for row in table.to_pylist())


def same_files(out, reference_files, names=None):
    """Shards byte for byte; rejected-rows Parquet by content (its footer carries the run id)."""
    for name in names if names is not None else reference_files:
        if name.startswith("_rejected/"):
            assert rows_of(pq.read_table(os.path.join(out, name))) == \
                rows_of(pq.read_table(pa.BufferReader(reference_files[name]))), name
        else:
            with open(os.path.join(out, name), "rb") as handle:
                assert handle.read() == reference_files[name], f"{name} is not the complete shard"


def check_killed_state(out, reference_files):
    """No _SUCCESS; every file under a name a loader reads is a complete file of the export."""
    names = final_looking(out) if os.path.isdir(out) else []
    assert "_SUCCESS" not in names
    same_files(out, reference_files, [name for name in names if name != "_MANIFEST.json"])
    return names


def aside(out):
    """{kind: path} of the hidden directories a directory publish keeps beside ``out``."""
    found = {kind: path for path, _, kind in publish_siblings(os.path.realpath(out))}
    assert len(found) == len(publish_siblings(os.path.realpath(out)))   # one run's, at most
    return found


def check_staged(out, reference_files):
    """The staging directory beside ``out`` (if any) holds the journal's copy and only complete
    files of the export; returns the export's names in it."""
    staging = aside(out).get("publishing")
    if staging is None:
        return []
    assert any(name.endswith("/_PUBLISH.json") for name in tree(staging))  # what makes its files ours
    names = final_looking(staging)
    same_files(staging, reference_files, [name for name in names if name not in MARKERS])
    return names


def check_rerun(config_path, out, reference_manifest, reference_files, capsys):
    """The same command again, without --overwrite: a complete export, byte-identical to the reference."""
    assert cli_main(["run", "--config", config_path]) == 0, capsys.readouterr().err
    manifest = verify_and_load(out)
    assert [(s["file"], s["records"], s["crc32c"]) for s in manifest["shards"]] == \
        [(s["file"], s["records"], s["crc32c"]) for s in reference_manifest["shards"]]
    same_files(out, reference_files)
    assert sorted(os.listdir(out)) == sorted(set(f.split("/")[0] for f in reference_files)
                                             | {"_MANIFEST.json", "_SUCCESS"})
    assert aside(out) == {}                     # the killed run's staging / moved-aside directories are gone
    return manifest


def verify_and_load(out):
    import json
    with open(os.path.join(out, "_MANIFEST.json")) as handle:
        manifest = json.load(handle)
    assert_accounted(out, manifest)
    return manifest


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_kill_at_a_named_moment_then_rerun(reference, tmp_path, point, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: point, PAUSE_DIR_ENV: str(tmp_path)})
    reached = wait_for(lambda: (tmp_path / point).exists(), proc)
    assert reached, proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    left = check_killed_state(str(out), ref_files)
    staged = check_staged(str(out), ref_files)
    KILLS.append((point, len(left), len(staged)))
    assert left == []                          # a local output directory never shows a final name early
    if point in ("read.row_group", "publish.start"):
        assert aside(str(out)) == {}           # nothing staged before the publish renames
    if point == "publish.renamed":             # a kill between two rename batches into the staging directory
        assert 0 < len(staged) < len(ref_files) and not set(staged) & set(MARKERS)
    if point == "publish.manifest":
        assert set(staged) == set(ref_files) | {"_MANIFEST.json"}
    if point in ("publish.staged", "publish.swapped_out"):
        assert set(staged) == set(ref_files) | set(MARKERS)   # complete, but not where a loader looks
    if point == "publish.swapped_out":         # between the swap's two renames: no output directory at all
        assert not out.exists() and set(aside(str(out))) == {"publishing", "previous"}
    elif point != "read.row_group":            # (while reading, nothing is written yet)
        assert any(name.startswith("_temporary/") for name in tree(str(out)))  # debris the rerun clears
    manifest = check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)
    assert manifest["run_id"] != ref_manifest["run_id"]


def test_kill_while_parts_are_written_then_rerun(reference, tmp_path, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path)

    def parts_appeared():
        temp = out / "_temporary"
        return temp.is_dir() and any(name.endswith(".part") for name in tree(str(temp)))

    assert wait_for(parts_appeared, proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    left = check_killed_state(str(out), ref_files)
    KILLS.append(("parts written (observed)", len(left), len(check_staged(str(out), ref_files))))
    assert left == []
    check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)


@pytest.mark.parametrize("delay", TIMED_KILLS)
def test_kill_after_a_delay_then_rerun(reference, tmp_path, delay, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path)
    # The first file other than the run's claim (written at launch, before the pipeline starts).
    claim_files = ("/" + CLAIM_NAME, "/" + HEARTBEAT_NAME)
    assert wait_for(lambda: out.is_dir() and any(not n.endswith(claim_files) for n in tree(str(out))), proc)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass  # still running: the kill below lands mid-run (or, checked next, just after _SUCCESS)
    finished = proc.poll() == 0
    sigkill(proc)
    if finished or (out / "_SUCCESS").exists():
        # Too late to interrupt: the export is complete, and a rerun is refused without --overwrite.
        KILLS.append((f"{delay:g} s after the first file (run had finished)", None, None))
        verify_and_load(str(out))
        assert cli_main(["run", "--config", config_path]) == 2
        assert "pass --overwrite" in capsys.readouterr().err
        return
    left = check_killed_state(str(out), ref_files)
    KILLS.append((f"{delay:g} s after the first file", len(left), len(check_staged(str(out), ref_files))))
    assert left == []
    check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)


def test_kill_after_success_leaves_a_finished_export(reference, tmp_path, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: "publish.success", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.success").exists(), proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    KILLS.append(("publish.success", len(final_looking(str(out))), len(check_staged(str(out), ref_files))))
    assert verify_export(str(out)).ok           # complete; only its scratch directory is left over
    same_files(str(out), ref_files)
    assert set(aside(str(out))) == {"previous"}  # and the old directory, moved aside
    assert cli_main(["run", "--config", config_path]) == 2   # a finished export: --overwrite needed
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli_main(["run", "--config", config_path, "--overwrite"]) == 0
    assert not (out / "_temporary").exists() and aside(str(out)) == {}
    same_files(str(out), ref_files)


@pytest.mark.parametrize("point", ["publish.renamed", "publish.swapped_out"])
def test_kill_while_overwriting_an_earlier_export_then_rerun(reference, tmp_path, point, capsys):
    """An --overwrite run killed while staging leaves the earlier export whole in the output
    directory (a finished export: rerunning needs --overwrite, as the killed command had);
    killed between the swap's renames it leaves no output directory (the earlier export is
    whole in the moved-aside directory), and a rerun needs no --overwrite. Either way the
    rerun's export is the reference's and nothing of the earlier export stays, beside it either."""
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    earlier = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=3)
    earlier_manifest = run_export(preflight(earlier))
    earlier_names = ([s["file"] for s in earlier_manifest["shards"]]
                     + [e["file"] for e in earlier_manifest["rejected_files"]] + list(MARKERS))
    earlier_files = read_bytes(str(out), earlier_names)
    config_path = config_for(root, out)
    proc = start_cli(config_path, "--overwrite", **{PAUSE_AT_ENV: point, PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / point).exists(), proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    staged = check_staged(str(out), ref_files)
    if point == "publish.renamed":
        assert read_bytes(str(out), earlier_names) == earlier_files      # the earlier export, whole
        assert final_looking(str(out)) == sorted(earlier_names) and verify_export(str(out)).ok
        KILLS.append((point + ", overwriting (earlier export left whole)", 0, len(staged)))
        assert cli_main(["run", "--config", config_path]) == 2
        assert "pass --overwrite" in capsys.readouterr().err
        assert cli_main(["run", "--config", config_path, "--overwrite"]) == 0, capsys.readouterr().err
    else:
        assert not out.exists()
        assert read_bytes(aside(str(out))["previous"], earlier_names) == earlier_files
        KILLS.append((point + ", overwriting", 0, len(staged)))
        assert cli_main(["run", "--config", config_path]) == 0, capsys.readouterr().err
    same_files(str(out), ref_files)
    verify_and_load(str(out))
    assert sorted(tree(str(out))) == sorted(set(ref_files) | set(MARKERS)) and aside(str(out)) == {}


def test_kill_at_the_swap_of_a_symlinked_output_then_rerun(reference, tmp_path, capsys):
    """The output path is a symlink: publishing replaces the directory it points to, and the
    link stays. Killed between the swap's renames the link dangles; a dry run writes nothing, the
    rerun makes its target again and publishes through the link."""
    root, ref_manifest, ref_files = reference
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real, target_is_directory=True)
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: "publish.swapped_out", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.swapped_out").exists(), proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    assert out.is_symlink() and not out.exists() and set(aside(str(out))) == {"publishing", "previous"}
    KILLS.append(("publish.swapped_out, symlinked output", 0, len(check_staged(str(out), ref_files))))
    assert cli_main(["run", "--config", config_path, "--dry-run"]) == 0, capsys.readouterr().err
    assert out.is_symlink() and not out.exists()  # a dry run writes nothing; the run makes the target
    check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)
    assert out.is_symlink() and os.readlink(out) == str(real)
    assert sorted(os.listdir(tmp_path / "real")) == sorted(os.listdir(out))


def test_a_foreign_file_makes_publish_go_file_by_file(reference, tmp_path, capsys):
    """A file the job did not write keeps the output directory in place (it is never moved
    aside): the files are renamed into it one batch at a time, so a kill between batches leaves
    complete shards under final names (no _SUCCESS); the foreign file is never touched."""
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    before = snapshot(str(out / "notes.txt"))
    config_path = config_for(root, out)
    proc = start_cli(config_path, "--overwrite", **{PAUSE_AT_ENV: "publish.renamed", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.renamed").exists(), proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    left = check_killed_state(str(out), ref_files)
    KILLS.append(("publish.renamed, foreign file present (file by file)", len(left), 0))
    assert 0 < len(left) < len(ref_files) and aside(str(out)) == {}
    (journal,) = [name for name in tree(str(out)) if name.endswith("/_PUBLISH.json")]
    assert json.loads((out / journal).read_text())["mode"] == "files"
    assert snapshot(str(out / "notes.txt")) == before
    assert cli_main(["run", "--config", config_path, "--overwrite"]) == 0, capsys.readouterr().err
    same_files(str(out), ref_files)
    verify_and_load(str(out))
    assert sorted(tree(str(out))) == sorted(set(ref_files) | set(MARKERS) | {"notes.txt"})
    assert snapshot(str(out / "notes.txt")) == before and aside(str(out)) == {}


def snapshot(path):
    with open(path, "rb") as handle:
        return handle.read(), os.stat(path).st_mtime_ns


def test_debris_plus_a_foreign_file_needs_overwrite(reference, tmp_path, capsys):
    root, _, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: "publish.start", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.start").exists(), proc), proc.communicate()[1].decode()[-3000:]
    sigkill(proc)
    (out / "mine.txt").write_text("someone else's")
    assert cli_main(["run", "--config", config_path]) == 2
    err = capsys.readouterr().err
    assert "mine.txt" in err and "pass --overwrite" in err
    assert cli_main(["run", "--config", config_path, "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "someone else's"
    same_files(str(out), ref_files)


def test_orphan_parts_of_failed_attempts_never_reach_the_output(reference, tmp_path):
    """A retried bundle leaves part files no metadata names (Dataflow retries; the in-process
    runner does not, so the orphans are planted): none reaches a shard."""
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=SHARDS)
    plan = preflight(cfg)
    parts = out / "_temporary" / plan.run_id / "parts"
    parts.mkdir(parents=True)
    (parts / "s00000-deadbeef.part").write_bytes(ref_files["part-00000-of-00150.tfrecord"])  # a plausible part
    (parts / "s00001-feedface.part").write_bytes(b"\x00" * 64)
    manifest = run_export(plan)
    same_files(str(out), ref_files)
    assert manifest["rows_written"] == ref_manifest["rows_written"]
    assert not (out / "_temporary").exists()
