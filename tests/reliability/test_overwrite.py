"""Guarantee 5: an output directory that holds files is refused unless --overwrite is given, and the
job never deletes (or replaces) a file it did not write: what is the job's own is decided from
evidence it left (manifest, publish journal, run-id scratch, stamped rejected files), never from
names (transforms.ownership)."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from pipeline.job import run_export
from pipeline.plan import preflight
from transforms.errors import PreflightError
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import assert_accounted, tree, write_config
from transforms.ownership import classify, journal_bytes, take_inventory
from transforms.rejected import RUN_ID_METADATA_KEY

pytestmark = pytest.mark.timeout(180)

RUN = "20250102T030405Z-0a1b2c3d"


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    root = tmp_path_factory.mktemp("overwrite")
    write_users(str(root / "in"), 1200, files=2, bad=True)   # 8 bad rows: 0.66% rejected
    return str(root / "in" / "*.parquet")


def snapshot(out, names):
    return {name: (open(os.path.join(out, name), "rb").read(), os.stat(os.path.join(out, name)).st_mtime_ns)
            for name in names}


# -- classification (pure) --------------------------------------------------------------------------

def test_classify_takes_only_what_the_job_left_evidence_for():
    sizes = {
        "_SUCCESS": 0, "_MANIFEST.json": 10, "part-00000-of-00002.tfrecord": 5, "part-00001-of-00002.tfrecord": 5,
        "part-00009-of-00010.tfrecord": 7,                          # no manifest names it
        f"_temporary/{RUN}/parts/s0.part": 3, f"_temporary/{RUN}/_PUBLISH.json": 50,
        "_temporary/0/task": 1,                                     # another tool's _temporary
        "part-00000-of-00003.tfrecord": 9,                          # journal says 9 bytes: ours
        "part-00001-of-00003.tfrecord": 8,                          # journal says 9 bytes: not ours
        "old.tfrecord": 4,                                          # journal removes it: ours
        f"_rejected/{RUN}/part-00000-of-00001.parquet": 30,         # stamped
        "_rejected/part-00000-of-00001.parquet": 30,                # not stamped
        "notes.txt": 2,
    }
    docs = {
        "_MANIFEST.json": {"shards": [{"file": "part-00000-of-00002.tfrecord"}, {"file": "part-00001-of-00002.tfrecord"}],
                           "rejected_files": []},
        f"_temporary/{RUN}/_PUBLISH.json": json.loads(journal_bytes(
            RUN, {"part-00000-of-00003.tfrecord": 9, "part-00001-of-00003.tfrecord": 9}, ["old.tfrecord"])),
    }
    stamps = {f"_rejected/{RUN}/part-00000-of-00001.parquet": RUN}
    inv = classify(sizes, docs.get, stamps.get)
    assert inv.finished and inv.runs == (RUN,)
    assert inv.foreign == ("_rejected/part-00000-of-00001.parquet", "_temporary/0/task", "notes.txt",
                           "part-00001-of-00003.tfrecord", "part-00009-of-00010.tfrecord")
    assert inv.foreign_outputs == ("_rejected/part-00000-of-00001.parquet", "part-00001-of-00003.tfrecord",
                                   "part-00009-of-00010.tfrecord")
    assert set(inv.ours) == set(sizes) - set(inv.foreign)


def test_a_manifest_that_is_not_the_jobs_is_no_evidence():
    sizes = {"_MANIFEST.json": 3, "_SUCCESS": 0, "part-00000-of-00001": 1}
    inv = classify(sizes, lambda name: "not a manifest", lambda name: None)
    assert inv.ours == () and inv.foreign == tuple(sorted(sizes)) and not inv.debris_only


def test_stamped_rejected_files_are_found_in_real_parquet_footers(tmp_path):
    out = tmp_path / "out"
    (out / "_rejected" / RUN).mkdir(parents=True)
    schema = pa.schema([("user_id", pa.int64())]).with_metadata({RUN_ID_METADATA_KEY: RUN.encode()})
    pq.write_table(pa.table({"user_id": [1]}, schema=schema), str(out / "_rejected" / RUN / "part-00000-of-00001.parquet"))
    pq.write_table(pa.table({"user_id": [1]}), str(out / "_rejected" / "someone-elses.parquet"))
    inv = take_inventory(str(out))
    assert inv.ours == (f"_rejected/{RUN}/part-00000-of-00001.parquet",)
    assert inv.foreign == ("_rejected/someone-elses.parquet",) and inv.runs == (RUN,)


# -- the job ------------------------------------------------------------------------------------------

def test_foreign_files_refuse_the_run_unless_overwrite_and_survive_it(users, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "_temporary" / "0").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "_temporary" / "0" / "spark-task").write_text("a Spark job's scratch")
    foreign = snapshot(str(out), ["notes.txt", "_temporary/0/spark-task"])
    cfg = write_config(tiny_config(users, tiny_model(), str(out), num_shards=2), str(tmp_path / "c.yaml"))
    assert cli_main(["run", "--config", cfg]) == 2
    assert "already holds 2 file(s) (_temporary/0/spark-task, notes.txt); pass --overwrite" in capsys.readouterr().err
    assert cli_main(["run", "--config", cfg, "--overwrite"]) == 0
    assert snapshot(str(out), list(foreign)) == foreign            # untouched, not even rewritten


def test_a_finished_export_is_replaced_only_with_overwrite_and_only_its_files_go(users, tmp_path, capsys):
    out = tmp_path / "out"
    first = run_export(preflight(tiny_config(users, tiny_model(), str(out), num_shards=3)))
    (out / "README").write_text("about this directory")
    (out / "_rejected" / "analysis.csv").write_text("kept")
    cfg = write_config(tiny_config(users, tiny_model(), str(out), num_shards=2), str(tmp_path / "c.yaml"))
    assert cli_main(["run", "--config", cfg]) == 2
    assert "pass --overwrite (or set output.overwrite: true) to replace the finished export there" in \
        capsys.readouterr().err
    with pytest.raises(PreflightError, match=r"holds 1 file\(s\) that no manifest or journal of this job names "
                                             r"but that look like export files \(_rejected/analysis.csv\)"):
        run_export(preflight(tiny_config(users, tiny_model(), str(out), num_shards=2), overwrite=True))
    os.remove(out / "_rejected" / "analysis.csv")
    assert cli_main(["run", "--config", cfg, "--overwrite"]) == 0
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert sorted(os.listdir(out)) == ["README", "_MANIFEST.json", "_SUCCESS", "_rejected",
                                       "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    assert (out / "README").read_text() == "about this directory"
    assert first["run_id"] != manifest["run_id"]
    assert_accounted(str(out), manifest)


def test_a_foreign_file_with_a_shard_name_is_never_deleted_or_replaced(users, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00001-of-00002.tfrecord").write_bytes(b"somebody's data")
    before = snapshot(str(out), ["part-00001-of-00002.tfrecord"])
    cfg = tiny_config(users, tiny_model(), str(out), num_shards=2)
    for overwrite in (False, True):
        with pytest.raises(PreflightError, match="part-00001-of-00002.tfrecord"):
            run_export(preflight(cfg, overwrite=overwrite))
    assert snapshot(str(out), ["part-00001-of-00002.tfrecord"]) == before
    assert tree(str(out)) == ["part-00001-of-00002.tfrecord"]


def test_rejected_rows_of_a_failed_run_are_the_jobs_own_for_the_next_run(users, tmp_path):
    out = tmp_path / "out"
    from transforms.errors import ExportError
    with pytest.raises(ExportError, match="more than output.max_reject_fraction"):
        run_export(preflight(tiny_config(users, tiny_model(), str(out), num_shards=2, max_reject_fraction=0.001)))
    (failed,) = tree(str(out))
    assert failed.startswith("_rejected/") and take_inventory(str(out)).debris_only
    manifest = run_export(preflight(tiny_config(users, tiny_model(), str(out), num_shards=2)))   # no --overwrite needed
    assert failed not in tree(str(out))
    assert_accounted(str(out), manifest)
