"""verify trusts no rejected-rows file: the manifest records each one's rows, bytes and crc32c,
verify checks them, and reports every file under ``_rejected/`` that the manifest does not list."""
import json
import os
import shutil

import pytest

from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline.tools.verify import verify_export
from pipeline_fixtures import tiny_config, tiny_model, write_users
from rel_support import FIGURES

pytestmark = pytest.mark.timeout(180)

CHECKED = FIGURES.setdefault("tampered rejected-rows files, each reported by verify", [])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-rejected")
    write_users(str(root / "in"), 300, files=2, bad=True)
    out = root / "clean"
    manifest = run_export(preflight(tiny_config(str(root / "in" / "*.parquet"), tiny_model(), str(out), num_shards=2,
                                       max_reject_fraction=0.1)))
    assert manifest["rows_rejected"] == 8 and manifest["rejected_files"]
    return out, manifest


def copy_of(export, tmp_path):
    out, manifest = export
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target, manifest


def problems(out):
    report = verify_export(str(out))
    return report.ok, [(p.file, p.message) for p in report.problems]


def test_the_manifest_records_each_rejected_files_rows_bytes_and_crc32c(export):
    out, manifest = export
    for entry in manifest["rejected_files"]:
        assert set(entry) >= {"file", "records", "bytes", "crc32c"}
        assert entry["bytes"] == os.path.getsize(out / entry["file"])
    assert problems(out) == (True, [])


def test_every_flipped_byte_of_a_rejected_file_is_reported(export, tmp_path):
    out, manifest = copy_of(export, tmp_path)
    name = manifest["rejected_files"][0]["file"]
    path = out / name
    original = path.read_bytes()
    # Every 31st byte in turn (the data pages, the footer, the magic), one flip at a time.
    flips = 0
    for offset in range(0, len(original), 31):
        data = bytearray(original)
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
        ok, found = problems(out)
        assert not ok and any(file == name for file, _ in found), (offset, found)
        flips += 1
    CHECKED.append(f"{flips} single-byte flips (every 31st byte of a {len(original)}-byte file)")
    path.write_bytes(original)
    assert problems(out) == (True, [])


def test_a_rejected_file_the_manifest_does_not_list_is_reported(export, tmp_path):
    out, manifest = copy_of(export, tmp_path)
    listed = out / manifest["rejected_files"][0]["file"]
    extra = ["_rejected/part-00009-of-00010.parquet", "_rejected/20250101T000000Z-00000001/part-00000-of-00001.parquet",
             "_rejected/notes.txt"]
    for name in extra:
        os.makedirs(os.path.dirname(out / name), exist_ok=True)
        shutil.copyfile(listed, out / name)
    ok, found = problems(out)
    assert not ok
    assert sorted(file for file, message in found if "does not list" in message) == sorted(extra), found
    CHECKED.append(f"{len(extra)} unlisted files under _rejected/")


def test_a_shortened_or_padded_rejected_file_is_reported(export, tmp_path):
    out, manifest = copy_of(export, tmp_path)
    entry = manifest["rejected_files"][0]
    path = out / entry["file"]
    path.write_bytes(path.read_bytes() + b"\0")
    ok, found = problems(out)
    assert not ok and any("bytes" in message for _, message in found), found
    with open(out / "_MANIFEST.json") as handle:
        assert json.load(handle)["rejected_files"][0]["bytes"] == entry["bytes"]
