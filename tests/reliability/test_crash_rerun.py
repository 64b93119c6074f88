"""Guarantee 4: a run killed with SIGKILL at any point leaves no _SUCCESS and no partial file under a
final name; the same command run again (without --overwrite) gives the complete, correct export,
byte for byte the export of an uninterrupted run, and nothing of the killed run reaches it.

The killed run is the real command line (``python -m pipeline.cli run``) in a subprocess. Kill
points are exact (the run pauses at a named ``transforms.pause_points`` moment, the test sends
SIGKILL from outside), observed (SIGKILL as soon as the first temporary part file appears) or
timed (SIGKILL after a fixed delay). 150 shards, so that the publish renames take two batches and
a kill can land between them.
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import (FIGURES, assert_accounted, final_looking, read_bytes, sigkill, start_cli, tree,
                         wait_for, write_config)
from transforms.pause_points import PAUSE_AT_ENV, PAUSE_DIR_ENV

pytestmark = pytest.mark.timeout(300)

SHARDS = 150
USERS = 1500
PAUSE_POINTS = ["read.row_group", "publish.start", "publish.renamed", "publish.manifest"]
TIMED_KILLS = [0.01, 0.04, 0.1]  # seconds after the run's first file appears (it ends ~0.2 s later)
KILLS = FIGURES.setdefault("kill points tried (point: final-looking files left)", [])


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


def check_rerun(config_path, out, reference_manifest, reference_files, capsys):
    """The same command again, without --overwrite: a complete export, byte-identical to the reference."""
    assert cli_main(["run", "--config", config_path]) == 0, capsys.readouterr().err
    manifest = verify_and_load(out)
    assert [(s["file"], s["records"], s["crc32c"]) for s in manifest["shards"]] == \
        [(s["file"], s["records"], s["crc32c"]) for s in reference_manifest["shards"]]
    same_files(out, reference_files)
    assert sorted(os.listdir(out)) == sorted(set(f.split("/")[0] for f in reference_files)
                                             | {"_MANIFEST.json", "_SUCCESS"})
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
    KILLS.append((point, len(left)))
    if point in ("read.row_group", "publish.start"):
        assert left == []                      # nothing published before the publish renames
    if point == "publish.renamed":
        assert 0 < len(left) < len(ref_files)  # a kill between two rename batches
    if point == "publish.manifest":
        assert set(left) == set(ref_files) | {"_MANIFEST.json"}
    if point != "read.row_group":  # (while reading, nothing is written yet)
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
    KILLS.append(("parts written (observed)", len(left)))
    check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)


@pytest.mark.parametrize("delay", TIMED_KILLS)
def test_kill_after_a_delay_then_rerun(reference, tmp_path, delay, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path)
    assert wait_for(lambda: out.is_dir() and bool(tree(str(out))), proc)
    try:
        proc.wait(timeout=delay)
    except Exception:
        pass
    finished = proc.poll() == 0
    sigkill(proc)
    if finished or (out / "_SUCCESS").exists():
        # Too late to interrupt: the export is complete, and a rerun is refused without --overwrite.
        KILLS.append((f"{delay:g} s after the first file (run had finished)", None))
        verify_and_load(str(out))
        assert cli_main(["run", "--config", config_path]) == 2
        assert "pass --overwrite" in capsys.readouterr().err
        return
    left = check_killed_state(str(out), ref_files)
    KILLS.append((f"{delay:g} s after the first file", len(left)))
    check_rerun(config_path, str(out), ref_manifest, ref_files, capsys)


def test_kill_after_success_leaves_a_finished_export(reference, tmp_path, capsys):
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: "publish.success", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.success").exists(), proc)
    sigkill(proc)
    KILLS.append(("publish.success", len(final_looking(str(out)))))
    assert verify_export(str(out)).ok           # complete; only its scratch directory is left over
    same_files(str(out), ref_files)
    assert cli_main(["run", "--config", config_path]) == 2   # a finished export: --overwrite needed
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli_main(["run", "--config", config_path, "--overwrite"]) == 0
    assert not (out / "_temporary").exists()
    same_files(str(out), ref_files)


def test_kill_while_overwriting_an_earlier_export_then_rerun(reference, tmp_path, capsys):
    """An --overwrite run killed between rename batches: the earlier export's _SUCCESS went
    first, its other files are named in the journal's removes, so the rerun knows them all."""
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    earlier = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=3)
    run_export(earlier)
    config_path = config_for(root, out)
    proc = start_cli(config_path, "--overwrite", **{PAUSE_AT_ENV: "publish.renamed", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.renamed").exists(), proc)
    sigkill(proc)
    left = check_killed_state(str(out), ref_files)
    KILLS.append(("publish.renamed, overwriting", len(left)))
    assert not any(name.endswith("-of-00003.tfrecord") for name in left)   # the earlier export is gone
    # Everything left is known as the job's (scratch, journal), so even without --overwrite:
    assert cli_main(["run", "--config", config_path]) == 0, capsys.readouterr().err
    same_files(str(out), ref_files)
    verify_and_load(str(out))


def test_debris_plus_a_foreign_file_needs_overwrite(reference, tmp_path, capsys):
    root, _, ref_files = reference
    out = tmp_path / "out"
    config_path = config_for(root, out)
    proc = start_cli(config_path, **{PAUSE_AT_ENV: "publish.start", PAUSE_DIR_ENV: str(tmp_path)})
    assert wait_for(lambda: (tmp_path / "publish.start").exists(), proc)
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
    from pipeline.preflight import preflight
    root, ref_manifest, ref_files = reference
    out = tmp_path / "out"
    cfg = tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=SHARDS)
    plan = preflight(cfg)
    parts = out / "_temporary" / plan.run_id / "parts"
    parts.mkdir(parents=True)
    (parts / "s00000-deadbeef.part").write_bytes(ref_files["part-00000-of-00150.tfrecord"])  # a plausible part
    (parts / "s00001-feedface.part").write_bytes(b"\x00" * 64)
    manifest = run_export(cfg, plan=plan)
    same_files(str(out), ref_files)
    assert manifest["rows_written"] == ref_manifest["rows_written"]
    assert not (out / "_temporary").exists()
