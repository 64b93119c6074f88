"""The exported bytes do not change when the code is reorganised: every shard of small,
deterministic exports (three output formats from Parquet input, one from DataRecord input) has
the sha256 recorded from the commit before the layout change (f4b20b0).

The model is exact (``embedding = 2 * dense``, ``score = float(sum(sparse_ids))``): its outputs
do not depend on the machine's BLAS or on a row's place in its batch, so the hashes hold on any
machine and check only this project's reading, validation, batching, placement, encoding and
file writing. Gzip shards are hashed decompressed (the compressed bytes depend on the zlib build).
"""
import gzip
import hashlib
import os

import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.job import run_export
from pipeline.plan import preflight
from pipeline_fixtures import DENSE_DIM, IDS_LEN, exact_model, tiny_config, write_users

# (format, compression, shards) -> [(file, records, sha256 of its (decompressed) bytes)], recorded at f4b20b0
PARQUET_INPUT = {
    ("tfrecord", "none", 4): [
        ("part-00000-of-00004.tfrecord", 205, "ecd77490da2c8daa5acae403b9a6968e61da18eddd5f570377fa6480ee613571"),
        ("part-00001-of-00004.tfrecord", 243, "5ef690d46328aac170ababb4bfa3ef49a79dc8ae9eada7643afe73592f362ff9"),
        ("part-00002-of-00004.tfrecord", 221, "c47d841eea05cf146fc1e787b0f2794d76d34bc6b22c0469a0b8915c326a4809"),
        ("part-00003-of-00004.tfrecord", 232, "a69e97204f5df17bf8214536d75710f7b08fb8c2bf70fea83b0fcc401177442d")],
    ("block", "gzip", 3): [
        ("part-00000-of-00003.gz", 305, "eee733d177d336662c3e92771baeac137842a4151f01651cc0d8bea2e794a2b3"),
        ("part-00001-of-00003.gz", 293, "6a7e1437afa9e3c9cbb940b75c5ed18ca05a4058e16c78b6c695acb3c55c1874"),
        ("part-00002-of-00003.gz", 303, "7cf902bb13384dad57714f156e9e3ed9dc9862f24545d3273d859da492967cd2")],
    ("parquet", "none", 2): [
        ("part-00000-of-00002.parquet", 426, "9cba5f0cd95bf03ac4a6a8890f5675af078b2adf412cfeb8f87c3d4d8635e63a"),
        ("part-00001-of-00002.parquet", 475, "ec72cc70a556adb7a58b112334a989f98171fe8cbfb5a344b758f8377c960d0b")],
}
PARQUET_REJECTED = {"non_finite:dense": 1, "null_element:dense": 1, "null_element:sparse_ids": 1, "null_key": 1,
                    "null_list:dense": 1, "null_list:sparse_ids": 1, "wrong_length:dense:8": 1}
DATARECORD_INPUT = [
    ("part-00000-of-00003.tfrecord", 100, "9b8206303e27e9cef2fad2aacc56b2930424518e40967aad62ff210e5a397ad9"),
    ("part-00001-of-00003.tfrecord", 111, "02f96eb16b72c4369e3872163b05d445f3139b5ac10d9a145fc4a8cd60021b00"),
    ("part-00002-of-00003.tfrecord", 88, "8d2bf4d440573a208a12471647da8478fbf01bf0d03a9c04334ae560f55aa0dd")]
DR_KEY = "meta.user_id"
DR_DENSE = [f"user.f{i}" for i in range(DENSE_DIM)]
DR_WORDS = ["sports", "news", "musik", "cats", "beam", "rust", "x", "日本語"]




def write_datarecords(path, users=300, seed=3):
    """A TFRecord file of DataRecords: the key (discrete), DR_DENSE (continuous) and
    user.interests (sparse_binary); record 17 has no key."""
    from twml.feature_ids import feature_id
    from twml.io.tfrecord import TFRecordWriter
    from twml.schema import data_thrift, serialize
    rng = np.random.default_rng(seed)
    with TFRecordWriter(path) as writer:
        for i in range(users):
            dense = rng.normal(size=len(DR_DENSE)).astype(np.float32)
            words = sorted(DR_WORDS[j] for j in rng.choice(len(DR_WORDS), size=int(rng.integers(0, 4)), replace=False))
            discrete = {} if i == 17 else {feature_id(DR_KEY): 5000 + i * 7}
            record = data_thrift.DataRecord(
                continuousFeatures={feature_id(n): float(v) for n, v in zip(DR_DENSE, dense)},
                discreteFeatures=discrete,
                sparseBinaryFeatures={feature_id("user.interests"): set(words)} if words else None)
            writer.write(serialize(record))
    return path


def shard_hashes(out, manifest):
    found = []
    for shard in manifest["shards"]:
        with open(os.path.join(out, shard["file"]), "rb") as handle:
            data = handle.read()
        if shard["file"].endswith(".gz"):
            data = gzip.decompress(data)
        found.append((shard["file"], shard["records"], hashlib.sha256(data).hexdigest()))
    return found


@pytest.fixture(scope="module")
def model():
    return exact_model()


@pytest.mark.parametrize("fmt, compression, shards", list(PARQUET_INPUT))
def test_parquet_input_exports_the_bytes_of_the_commit_before(model, tmp_path, fmt, compression, shards):
    write_users(str(tmp_path / "in"), 900, files=3, bad=True, row_group_size=200)
    out = str(tmp_path / "out")
    manifest = run_export(preflight(tiny_config(str(tmp_path / "in" / "*.parquet"), model, out, num_shards=shards,
                                                fmt=fmt, compression=compression, batch_size=64,
                                                max_reject_fraction=0.05)))
    assert (manifest["rows_read"], manifest["rows_written"], manifest["rows_rejected"]) == (908, 901, 7)
    assert manifest["rejected_by_reason"] == PARQUET_REJECTED
    assert shard_hashes(out, manifest) == PARQUET_INPUT[(fmt, compression, shards)]


def test_datarecord_input_exports_the_bytes_of_the_commit_before(model, tmp_path):
    (tmp_path / "in").mkdir()
    write_datarecords(str(tmp_path / "in" / "users.tfrecord"))
    out = str(tmp_path / "out")
    raw = {
        "input": {"format": "datarecord", "path": str(tmp_path / "in" / "*.tfrecord"), "container": "tfrecord",
                  "key": DR_KEY, "features": {"dense": {"continuous": DR_DENSE},
                                              "ids": {"sparse_binary": "user.interests"}}},
        "model": {"path": model, "batch_size": 64,
                  "inputs": {"dense": {"column": "dense"}, "sparse_ids": {"column": "ids", "length": IDS_LEN}},
                  "outputs": {"embedding": {"feature": "output"}, "score": {"feature": "user.score"}}},
        "partition": {"num_shards": 3},
        "output": {"path": out, "max_reject_fraction": 0.05},
        "runner": {"name": "FnApiRunner", "options": ["--direct_running_mode=in_memory"]},
    }
    manifest = run_export(preflight(parse_config(raw, "<test>")))
    assert (manifest["rows_read"], manifest["rows_written"], manifest["rows_rejected"]) == (300, 299, 1)
    assert manifest["rejected_by_reason"] == {"null_key": 1}
    assert shard_hashes(out, manifest) == DATARECORD_INPUT
