"""Writing shard files (parts -> shard files, every format), rejected rows, and the finalize step."""
import gzip
import io
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from transforms.elements import EmbeddedBatch, RejectedPart, ShardedBatch, ShardResult
from transforms.errors import ExportError
from transforms.finalize import publish
from transforms.formats import ChecksummedWriter, make_format, open_write
from transforms.specs import OutputLayout, OutputSpec
from transforms.write import WriteRejected, WriteShards, temp_dir
from twml.decode import decode_data_record
from twml.encode import encode_data_records
from twml.feature_ids import feature_id
from twml.io.block import iter_block_records
from twml.io.tfrecord import iter_tfrecords

FN_API = "FnApiRunner"  # TestPipeline ignores --runner in argv
KEY_ID = feature_id("meta.user_id")
OUTPUTS = (OutputSpec("embedding", "output", feature_id("output"), "float32", (3,)),
           OutputSpec("score", "user.score", feature_id("user.score"), "float64", ()))


def layout(tmp_path, fmt="tfrecord", compression="none", shards=4, run_id="run1"):
    return OutputLayout(str(tmp_path / "out"), run_id, fmt, compression, shards, KEY_ID, records_per_block=3)


def batch(keys):
    keys = np.asarray(keys, np.int64)
    emb = np.stack([keys * 0.5, keys * -1.0, np.ones(len(keys))], axis=1).astype(np.float32)
    return EmbeddedBatch(keys, [emb, keys.astype(np.float64) / 7])


def expected_record(key):
    b = batch([key])
    return encode_data_records(b.keys, KEY_ID, [(OUTPUTS[0].feature_id, b.outputs[0]),
                                                (OUTPUTS[1].feature_id, b.outputs[1])])[0]


def _dump(items, path):
    with open(path, "wb") as f:
        pickle.dump(items, f)


def collect(pcoll, path):
    """Materialise a (small) PCollection into a pickle file the test reads after the run."""
    return pcoll | "ToList" >> beam.combiners.ToList() | "Dump" >> beam.Map(_dump, str(path))


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def sharded(slices):
    """A ShardedBatch of (shard, batch) slices given in ascending shard order."""
    ranges, start = [], 0
    for shard, piece in slices:
        ranges.append((shard, start, start + len(piece)))
        start += len(piece)
    return ShardedBatch(EmbeddedBatch.concat([piece for _, piece in slices]), ranges)


def run_write_shards(lay, slices, buffer_bytes, per_batch=None, **kwargs):
    """WriteShards on the slices, one ShardedBatch of ``per_batch`` consecutive slices each (all
    in one by default)."""
    per_batch = per_batch or len(slices)
    batches = [sharded(slices[i:i + per_batch]) for i in range(0, len(slices), per_batch)]
    fmt = make_format(lay, OUTPUTS)
    dump = os.path.join(os.path.dirname(lay.path), "results.pkl")
    with BeamTestPipeline(runner=FN_API) as p:
        collect(p | beam.Create(batches) | WriteShards(fmt, buffer_bytes, **kwargs), dump)
    return sorted(load(dump), key=lambda r: r.shard)


def read_records(result, fmt, compression):
    with open(result.temp_path, "rb") as f:
        data = f.read()
    assert len(data) == result.bytes
    if compression == "gzip":
        data = gzip.decompress(data)
    if fmt == "tfrecord":
        return list(iter_tfrecords(io.BytesIO(data)))
    if fmt == "block":
        return list(iter_block_records(io.BytesIO(data)))
    table = pq.read_table(io.BytesIO(data))
    return table.column("data_record").to_pylist()


@pytest.mark.parametrize("fmt,compression", [("tfrecord", "none"), ("tfrecord", "gzip"), ("block", "none"),
                                             ("block", "gzip"), ("parquet", "none")])
def test_write_shards_every_shard_complete_including_empty(tmp_path, fmt, compression):
    lay = layout(tmp_path, fmt, compression, shards=5)
    # Shard 4 gets nothing; a 1-byte buffer and one open part file make every slice its own part.
    slices = [(s, batch(range(100 * s + i * 10, 100 * s + i * 10 + 7))) for i in range(3) for s in range(4)]
    results = run_write_shards(lay, slices, buffer_bytes=1, per_batch=4, max_open_parts=1)
    assert [r.shard for r in results] == list(range(5))
    for r in results:
        want = [expected_record(k) for s, b in slices if s == r.shard for k in b.keys]
        got = read_records(r, fmt, compression)
        assert sorted(got) == sorted(want)
        assert r.records == len(want)
        assert r.final_name == make_format(lay, OUTPUTS).final_name(r.shard)
        if r.shard < 4:
            assert r.parts == 3
    assert results[4].records == 0
    if fmt == "parquet":
        table = pq.read_table(results[0].temp_path)
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3)
        np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32),
                                      batch(table.column("key").to_pylist()).outputs[0])


def test_single_part_is_the_shard_file_without_a_copy(tmp_path):
    lay = layout(tmp_path, shards=2)
    results = run_write_shards(lay, [(0, batch([1, 2, 3])), (1, batch([4]))], buffer_bytes=1 << 20)
    for r in results:
        assert r.parts == 1
        assert os.path.dirname(r.temp_path) == temp_dir(lay, "parts")


@pytest.mark.parametrize("fmt", ["tfrecord", "block", "parquet"])
def test_spills_append_to_one_part_per_shard_per_bundle(tmp_path, fmt):
    lay = layout(tmp_path, fmt, shards=3)
    # A 1-byte budget writes every slice out at once, but into the shard's one open part file.
    slices = [(s, batch(range(100 * s + i * 10, 100 * s + i * 10 + 7))) for i in range(4) for s in range(3)]
    results = run_write_shards(lay, slices, buffer_bytes=1, per_batch=3)
    for r in results:
        want = [expected_record(k) for s, b in slices if s == r.shard for k in b.keys]
        assert r.parts == 1 and r.records == len(want)
        assert read_records(r, fmt, "none") == want  # in arrival order within the part


@pytest.mark.parametrize("fmt", ["tfrecord", "block", "parquet"])
def test_part_writer_coalesces_slices_without_changing_the_bytes(tmp_path, monkeypatch, fmt):
    import transforms.formats as formats

    monkeypatch.setattr(formats, "COALESCE_ROWS", 10)
    lay = layout(tmp_path, fmt, shards=1)
    slices = [batch(range(start, start + size)) for start, size in ((0, 3), (3, 4), (7, 5), (12, 1), (13, 12))]
    sink = formats.PartSink()
    writer = make_format(lay, OUTPUTS).open_part(sink)
    held = []
    for piece in slices:
        writer.write(piece)
        held.append((writer.pending_bytes, sink.size))
    # 3 + 4 + 5 = 12 rows reach the threshold and are encoded in one go; the rest waits for close.
    assert held[1][1] == 0 and held[1][0] > 0 and held[2] == (0, held[2][1]) and held[2][1] > 0
    writer.close()
    assert writer.records == 25 and writer.pending_bytes == 0
    part = tmp_path / "part"
    out = ChecksummedWriter(open_write(str(part)))
    sink.drain_to(out)
    out.close()
    result = ShardResult(0, str(part), "x", 25, part.stat().st_size, 0)
    want = [expected_record(k) for k in range(25)]
    if fmt == "parquet":
        import pyarrow.ipc as ipc
        assert ipc.open_stream(part.read_bytes()).read_all().column("data_record").to_pylist() == want
    else:
        assert read_records(result, fmt, "none") == want


def test_framed_pieces_go_straight_to_open_part_files_and_the_rest_is_held(tmp_path, monkeypatch):
    """A TFRecord batch is framed once; a shard's frames of WRITE_THROUGH_BYTES or more are written
    to its part file at once when that file is open or can be opened (here the first two shards
    of four, max_open_parts=2), the others are held until the bundle ends; either way every
    part holds its shard's records in arrival order, in one part per shard."""
    import transforms.write as write

    monkeypatch.setattr(write, "WRITE_THROUGH_BYTES", 1)
    lay = layout(tmp_path, shards=4)
    fn = write._WritePartsFn(make_format(lay, OUTPUTS), 1 << 20, 2)
    fn.start_bundle()
    batches = [[(s, batch(range(100 * s + 10 * i, 100 * s + 10 * i + 5))) for s in range(4)] for i in range(3)]
    for i, slices in enumerate(batches):
        assert list(fn.process(sharded(slices))) == []
        parts = fn._parts
        assert [(parts[s].file_open, parts[s].held) for s in (0, 1)] == [(True, 0), (True, 0)]
        frames = len(expected_record(0)) + 16
        assert [(parts[s].file_open, parts[s].held) for s in (2, 3)] == [(False, 5 * frames * (i + 1))] * 2
    infos = [value.value for value in fn.finish_bundle()]
    assert [shard for shard, _ in infos] == [0, 1, 2, 3]
    for shard, info in infos:
        want = [expected_record(k) for slices in batches for s, b in slices if s == shard for k in b.keys]
        with open(info.path, "rb") as f:
            assert list(iter_tfrecords(f)) == want
        assert info.records == len(want)


def test_part_writer_keeps_framed_bytes_only_when_asked(tmp_path):
    """keep=True puts the caller's frames in the sink without a copy (the caller writes them out
    at once); otherwise they are copied, so that held bytes never pin the whole batch's buffer."""
    import transforms.formats as formats

    fmt = make_format(layout(tmp_path, shards=1), OUTPUTS)
    users = batch(range(6))
    frames = fmt.frames(users).buffer
    for keep in (True, False):
        sink = formats.PartSink()
        writer = fmt.open_part(sink)
        writer.write(users.rows(0, 2), frames[:frames.size // 3], keep=keep)
        writer.write(users.rows(2, 6), frames[frames.size // 3:], keep=keep)
        assert writer.records == 6 and writer.pending_bytes == 0 and sink.size == frames.size
        assert [np.shares_memory(chunk, frames) if isinstance(chunk, np.ndarray) else False
                for chunk in sink._chunks] == [keep, keep]
        out = io.BytesIO()
        sink.drain_to(out)
        assert out.getvalue() == frames.tobytes()


def test_decoded_record_holds_key_then_outputs_in_config_order(tmp_path):
    record = decode_data_record(expected_record(42))
    assert record.discreteFeatures == {KEY_ID: 42}
    assert list(record.tensors) == [OUTPUTS[0].feature_id, OUTPUTS[1].feature_id]
    raw = record.tensors[OUTPUTS[0].feature_id].rawTypedTensor
    assert raw.dataType == 0 and raw.shape == [3]
    np.testing.assert_array_equal(np.frombuffer(raw.content, "<f4"), [21.0, -42.0, 1.0])


def test_write_rejected_parts(tmp_path):
    lay = layout(tmp_path)
    schema = pa.schema([("user_id", pa.int64()), ("reason", pa.string()), ("source_file", pa.string())])
    t1 = pa.table({"user_id": [1, 2], "reason": ["a", "b"], "source_file": ["f", "f"]})
    t2 = pa.table({"user_id": [3], "reason": ["a"], "source_file": ["g"]})
    with BeamTestPipeline(runner=FN_API) as p:
        collect(p | beam.Create([t1, t2]) | WriteRejected(lay, schema), tmp_path / "parts.pkl")
    (part,) = load(tmp_path / "parts.pkl")
    assert part.records == 3 and part.reasons == {"a": 2, "b": 1}
    assert pq.read_table(part.path).to_pylist() == t1.to_pylist() + t2.to_pylist()


# ------------------------------------------------------------------------------------------------
# publish(): the finalize step, on files made by hand.

def make_temp_file(path, data: bytes):
    handle = ChecksummedWriter(open_write(path))
    handle.write(data)
    handle.close()
    return handle


def staged(tmp_path, shards=2, run_id="run1", rejected_rows=0):
    lay = layout(tmp_path, shards=shards, run_id=run_id)
    results = []
    for s in range(shards):
        path = os.path.join(temp_dir(lay, "shards"), f"shard{s}")
        h = make_temp_file(path, f"shard {s} of {run_id}".encode())
        results.append(ShardResult(s, path, f"part-{s:05d}-of-{shards:05d}.tfrecord", 10, h.bytes, h.crc32c, 1))
    rejected = []
    if rejected_rows:
        path = os.path.join(temp_dir(lay, "rejected"), "r.parquet")
        h = make_temp_file(path, b"rejected")
        rejected.append(RejectedPart(path, rejected_rows, h.bytes, h.crc32c, {"null_key": rejected_rows}))
    return lay, results, rejected


BASE = {"format": "tfrecord", "compression": "none", "num_shards": 2, "model": {"path": "m"}}


def test_publish_moves_files_writes_manifest_then_success_and_is_idempotent(tmp_path):
    lay, results, rejected = staged(tmp_path, rejected_rows=1)
    manifest = publish(lay, results, 21, rejected, BASE, expected_rows=21)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_SUCCESS", "_rejected", "part-00000-of-00002.tfrecord",
                                       "part-00001-of-00002.tfrecord"]
    assert os.listdir(tmp_path) == ["out"]   # no staging or moved-aside directory left beside it
    assert os.listdir(out / "_rejected") == ["part-00000-of-00001.parquet"]
    on_disk = json.loads((out / "_MANIFEST.json").read_text())
    assert on_disk == manifest
    assert manifest["rows_read"] == 21 and manifest["rows_written"] == 20 and manifest["rows_rejected"] == 1
    assert manifest["rejected_by_reason"] == {"null_key": 1}
    assert manifest["shards"][1] == {"file": "part-00001-of-00002.tfrecord", "records": 10,
                                     "bytes": results[1].bytes, "crc32c": results[1].crc32c}
    assert list(manifest)[:4] == ["format", "compression", "num_shards", "shards"]
    # A retried finalize (sources gone, destinations present) succeeds and changes nothing.
    again = publish(lay, results, 21, rejected, BASE, expected_rows=21)
    assert again["shards"] == manifest["shards"]
    assert (out / "part-00001-of-00002.tfrecord").read_bytes() == b"shard 1 of run1"


@pytest.mark.parametrize("rows_read,expected,match", [
    (22, None, "accounting mismatch: rows_read 22 != rows_written 20 \\+ rows_rejected 1"),
    (21, 25, "read 21 rows but the input files' footers hold 25"),
])
def test_publish_refuses_bad_accounting_and_publishes_nothing(tmp_path, rows_read, expected, match):
    lay, results, rejected = staged(tmp_path, rejected_rows=1)
    with pytest.raises(ExportError, match=match):
        publish(lay, results, rows_read, rejected, BASE, expected_rows=expected)
    assert os.listdir(tmp_path / "out") == ["_temporary"]


def test_publish_refuses_missing_shard(tmp_path):
    lay, results, _ = staged(tmp_path, shards=3)
    with pytest.raises(ExportError, match=r"shard files missing for shards \[1\]"):
        publish(lay, [results[0], results[2]], 20, [], BASE)


def test_publish_too_many_rejects_publishes_only_the_rejected_rows(tmp_path):
    lay, results, rejected = staged(tmp_path, rejected_rows=5)
    with pytest.raises(ExportError, match=r"5 of 25 rows rejected \(20.00%\), more than output.max_reject_fraction 0.1"):
        publish(lay, results, 25, rejected, BASE, max_reject_fraction=0.1)
    assert sorted(os.listdir(tmp_path / "out")) == ["_rejected"]


def test_publish_overwrite_removes_only_the_old_exports_files(tmp_path):
    # What publish may remove is decided before launch (transforms.ownership, by manifest, journal
    # and run-id scratch), never by name: files no manifest names stay, even named part-*.
    from transforms.ownership import take_inventory
    out = tmp_path / "out"
    out.mkdir()
    old = [f"part-0000{i}-of-00003.tfrecord" for i in range(3)]
    for name in old + ["_SUCCESS", "README.txt", "part-notes.txt"]:
        (out / name).write_text("old")
    (out / "_MANIFEST.json").write_text(json.dumps({"shards": [{"file": name} for name in old]}))
    (out / "_temporary" / "20240101T000000Z-0123abcd").mkdir(parents=True)
    (out / "_temporary" / "20240101T000000Z-0123abcd" / "x").write_text("old")
    (out / "_temporary" / "0").mkdir()
    (out / "_temporary" / "0" / "spark").write_text("not ours")
    inventory = take_inventory(str(out))
    assert inventory.foreign == ("README.txt", "_temporary/0/spark", "part-notes.txt")
    lay, results, rejected = staged(tmp_path, shards=2, run_id="run2")
    publish(lay, results, 20, rejected, BASE, stale=[str(out / name) for name in inventory.ours])
    assert sorted(os.listdir(out)) == ["README.txt", "_MANIFEST.json", "_SUCCESS", "_temporary",
                                       "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord",
                                       "part-notes.txt"]
    assert os.listdir(out / "_temporary") == ["0"]
    assert (out / "README.txt").read_text() == "old"


# ------------------------------------------------------------------------------------------------
# publish() on a local directory: staged in a hidden sibling, then swapped in.

RUN = "20250102T030405Z-0a1b2c3d"       # run ids of killed runs (real ones: their siblings are found)
OTHER_RUN = "20250102T030406Z-0a1b2c3e"


def watch_pauses(monkeypatch, at=None):
    """Record the pause points publish passes; call ``at(name)`` at each (to look at the disk)."""
    import transforms.finalize as finalize
    seen = []

    def record(name):
        seen.append(name)
        if at is not None:
            at(name)

    monkeypatch.setattr(finalize, "pause_point", record)
    return seen


def write_earlier_export(out, shards=3, run_id=RUN):
    """A finished export of this job (manifest, shards, _SUCCESS) plus a killed run's scratch."""
    names = [f"part-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    out.mkdir(parents=True, exist_ok=True)
    for name in names + ["_SUCCESS"]:
        (out / name).write_text("old")
    (out / "_MANIFEST.json").write_text(json.dumps({"shards": [{"file": name} for name in names]}))
    (out / "_temporary" / run_id / "parts").mkdir(parents=True)
    (out / "_temporary" / run_id / "parts" / "p.part").write_text("old scratch")
    return names + ["_SUCCESS", "_MANIFEST.json", f"_temporary/{run_id}/parts/p.part"]


def test_publish_stages_beside_the_output_then_swaps_the_directory_in(tmp_path, monkeypatch):
    from transforms.ownership import take_inventory
    out = tmp_path / "out"
    earlier = write_earlier_export(out)
    stale = [str(out / name) for name in take_inventory(str(out)).ours]
    assert len(stale) == len(earlier)
    os.chmod(out, 0o750)
    old_inode = os.stat(out).st_ino
    lay, results, rejected = staged(tmp_path, run_id="run2", rejected_rows=1)
    staging = tmp_path / ".out.run2.publishing"
    looked = {}

    def look(name):
        if name == "publish.staged":   # everything staged; the output directory as it was
            looked["out"] = sorted(os.listdir(out))
            looked["staging"] = sorted(os.listdir(staging))
            looked["mode"] = oct(os.stat(staging).st_mode & 0o777)
            looked["journal"] = json.loads((out / "_temporary" / "run2" / "_PUBLISH.json").read_text())
            looked["copy"] = json.loads((staging / "_temporary" / "run2" / "_PUBLISH.json").read_text())
        if name == "publish.swapped_out":
            looked["gap"] = (out.exists(), sorted(os.listdir(tmp_path)))

    seen = watch_pauses(monkeypatch, look)
    manifest = publish(lay, results, 21, rejected, BASE, expected_rows=21, stale=stale)
    assert seen == ["publish.start", "publish.renamed", "publish.manifest", "publish.staged",
                    "publish.swapped_out", "publish.success"]
    assert looked["out"] == sorted(set(name.split("/")[0] for name in earlier))   # the earlier export, whole
    assert looked["staging"] == ["_MANIFEST.json", "_SUCCESS", "_rejected", "_temporary",
                                 "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    assert looked["mode"] == "0o750"
    assert looked["journal"]["mode"] == "directory" and looked["journal"]["staging"] == str(staging)
    assert looked["copy"] == looked["journal"]
    assert looked["gap"] == (False, [".out.run2.previous", ".out.run2.publishing"])
    # Afterwards: the new export alone, the same files a file-by-file publish leaves, nothing beside it.
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_SUCCESS", "_rejected", "part-00000-of-00002.tfrecord",
                                       "part-00001-of-00002.tfrecord"]
    assert os.listdir(out / "_rejected") == ["part-00000-of-00001.parquet"]
    assert json.loads((out / "_MANIFEST.json").read_text()) == manifest
    assert (out / "part-00001-of-00002.tfrecord").read_bytes() == b"shard 1 of run2"
    assert os.listdir(tmp_path) == ["out"]
    assert os.stat(out).st_ino != old_inode and oct(os.stat(out).st_mode & 0o777) == "0o750"


def test_publish_into_a_directory_holding_a_foreign_file_goes_file_by_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".keep").write_text("a hidden file the job did not write")
    lay, results, rejected = staged(tmp_path)
    journals = []
    watch_pauses(monkeypatch, lambda name: name == "publish.renamed" and journals.append(
        json.loads((out / "_temporary" / "run1" / "_PUBLISH.json").read_text())))
    publish(lay, results, 20, rejected, BASE)
    assert journals[0]["mode"] == "files" and journals[0]["staging"] is None
    assert sorted(os.listdir(out)) == [".keep", "_MANIFEST.json", "_SUCCESS", "part-00000-of-00002.tfrecord",
                                       "part-00001-of-00002.tfrecord"]
    assert os.listdir(tmp_path) == ["out"]


def test_publish_into_a_directory_holding_an_empty_foreign_directory_goes_file_by_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    lay, results, rejected = staged(tmp_path)
    seen = watch_pauses(monkeypatch)
    publish(lay, results, 20, rejected, BASE)
    assert "publish.staged" not in seen and (out / "logs").is_dir()


def test_publish_goes_file_by_file_when_the_output_cannot_be_moved_aside(tmp_path, monkeypatch):
    """A rename the checks did not foresee fails (a bind mount, say): the staged files are
    published into the output directory one by one, and the staging directory goes."""
    out = tmp_path / "out"
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if str(src) == str(out):
            raise OSError(16, "Device or resource busy", str(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    lay, results, rejected = staged(tmp_path, rejected_rows=1)
    seen = watch_pauses(monkeypatch)
    publish(lay, results, 21, rejected, BASE)
    assert seen[:4] == ["publish.start", "publish.renamed", "publish.manifest", "publish.staged"]
    assert seen[4:] == ["publish.renamed", "publish.manifest", "publish.success"]
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "_SUCCESS", "_rejected", "part-00000-of-00002.tfrecord",
                                       "part-00001-of-00002.tfrecord"]
    assert (out / "part-00000-of-00002.tfrecord").read_bytes() == b"shard 0 of run1"
    assert os.listdir(tmp_path) == ["out"]


def test_publish_through_a_symlinked_output_keeps_the_link(tmp_path):
    real = tmp_path / "data" / "export"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    lay, results, rejected = staged(tmp_path)
    publish(lay, results, 20, rejected, BASE)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(os.listdir(real)) == ["_MANIFEST.json", "_SUCCESS", "part-00000-of-00002.tfrecord",
                                        "part-00001-of-00002.tfrecord"]
    assert os.listdir(tmp_path / "data") == ["export"]


def test_publish_clears_only_the_jobs_files_from_killed_runs_siblings(tmp_path):
    """What killed directory publishes left beside the output: only files take_inventory proves
    are the job's go; a foreign file keeps its directory; siblings of another output, or named
    without a run id, are not looked at."""
    from transforms.ownership import journal_bytes, journal_name, publish_siblings
    previous = tmp_path / f".out.{RUN}.previous"              # an earlier export, moved aside, + a foreign file
    write_earlier_export(previous)
    (previous / "notes.txt").write_text("appeared during the run")
    staging = tmp_path / f".out.{OTHER_RUN}.publishing"       # a killed run's staging directory
    (staging / "_temporary" / OTHER_RUN).mkdir(parents=True)
    (staging / journal_name(OTHER_RUN)).write_bytes(journal_bytes(
        OTHER_RUN, {"part-00000-of-00002.tfrecord": 5, "part-00001-of-00002.tfrecord": 5, "_SUCCESS": 0}, []))
    (staging / "part-00000-of-00002.tfrecord").write_bytes(b"12345")
    (staging / "part-00001-of-00002.tfrecord").write_bytes(b"123")   # not the journal's size: not ours
    untouched = {}
    for name in (f".other.{RUN}.previous", ".out.previous", f".out.v2.{RUN}.publishing", f".out.{RUN}.elsewhere"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "_SUCCESS").write_text("")
        untouched[name] = os.stat(tmp_path / name / "_SUCCESS").st_mtime_ns
    assert [kind for _, _, kind in publish_siblings(str(tmp_path / "out"))] == ["previous", "publishing"]
    notes = os.stat(previous / "notes.txt").st_mtime_ns

    lay, results, rejected = staged(tmp_path)
    publish(lay, results, 20, rejected, BASE)
    assert sorted(tree_of(previous)) == ["notes.txt"] and os.stat(previous / "notes.txt").st_mtime_ns == notes
    assert sorted(tree_of(staging)) == ["part-00001-of-00002.tfrecord"]
    for name, mtime in untouched.items():
        assert os.stat(tmp_path / name / "_SUCCESS").st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == sorted(["out", previous.name, staging.name, *untouched])


def tree_of(root):
    return [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files]


@pytest.mark.parametrize("fail_at", ["publish.renamed", "publish.staged", "publish.swapped_out"])
def test_a_retried_directory_publish_finishes_what_the_failed_attempt_began(tmp_path, monkeypatch, fail_at):
    """Finalize failed (an exception, not a kill) while staging, before the swap, or between the
    swap's renames (no output directory); the runner's retry publishes the complete export."""
    lay, results, rejected = staged(tmp_path, run_id=RUN, rejected_rows=1)

    def fail(name):
        if name == fail_at:
            raise RuntimeError(f"failed at {name}")

    watch_pauses(monkeypatch, fail)
    with pytest.raises(RuntimeError, match=fail_at):
        publish(lay, results, 21, rejected, BASE)
    assert (tmp_path / "out").exists() == (fail_at != "publish.swapped_out")
    watch_pauses(monkeypatch)
    publish(lay, results, 21, rejected, BASE)
    out = tmp_path / "out"
    assert sorted(tree_of(out)) == ["_MANIFEST.json", "_SUCCESS", "_rejected/part-00000-of-00001.parquet",
                                    "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    assert (out / "part-00001-of-00002.tfrecord").read_bytes() == f"shard 1 of {RUN}".encode()
    assert os.listdir(tmp_path) == ["out"]
