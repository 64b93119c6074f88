"""Small real inputs for the pipeline tests: Parquet user files, a tiny SavedModel, a run config.

The model is a real ``tf.Module`` saved with a ``serving_default`` signature (dense float32
[None, DENSE_DIM], sparse_ids int64 [None, IDS_LEN] -> embedding float32 [None, EMB_DIM], score
float32 [None]); its embedding is ``x / ||x||`` without an epsilon, so a row with all-zero dense
features and no ids gives a non-finite embedding, which the job must reject.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ExportConfig, parse_config
from twml.decode import decode_data_record, decode_embeddings
from twml.feature_ids import feature_id
from twml.io.block import read_block_records
from twml.io.tfrecord import read_tfrecords

DENSE_DIM = 8
IDS_LEN = 4
MAX_IDS = 7       # some rows carry more ids than IDS_LEN: they are truncated
VOCAB = 50
EMB_DIM = 6
KEY_ID = feature_id("meta.user_id")
EMB_ID = feature_id("output")
SCORE_ID = feature_id("user.score")

# Bad rows written by write_users(bad=True), with the reason the job must give.
BAD_ROW_REASONS = {
    "null_key": "null_key",
    "dense_null": "null_list:dense",
    "dense_short": f"wrong_length:dense:{DENSE_DIM}",
    "dense_nan": "non_finite:dense",
    "dense_null_element": "null_element:dense",
    "ids_null": "null_list:sparse_ids",
    "ids_null_element": "null_element:sparse_ids",
    "zero_row": "non_finite_embedding",
}


def user_table(keys: np.ndarray, seed: int) -> pa.Table:
    """Good rows for ``keys``: dense list<float32>[DENSE_DIM], sparse_ids list<int64> of 0..MAX_IDS ids."""
    rng = np.random.default_rng(seed)
    n = len(keys)
    dense = rng.normal(size=(n, DENSE_DIM)).astype(np.float32)
    lengths = rng.integers(0, MAX_IDS + 1, size=n)
    ids = rng.integers(1, 10_000, size=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.table({
        "user_id": pa.array(keys, pa.int64()),
        "dense": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * DENSE_DIM),
                                          pa.array(dense.reshape(-1), pa.float32())),
        "sparse_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64())),
        "country": pa.array([f"c{k % 7}" for k in keys]),  # a column the job does not read
    })


def bad_rows(first_key: int) -> pa.Table:
    """One row per BAD_ROW_REASONS entry, keys from ``first_key`` on (the null-key row has none)."""
    good = [0.5] * DENSE_DIM
    rows = {
        "null_key": (None, good, [1, 2]),
        "dense_null": (first_key + 1, None, [1]),
        "dense_short": (first_key + 2, good[:3], [1]),
        "dense_nan": (first_key + 3, [float("nan")] + good[1:], [1]),
        "dense_null_element": (first_key + 4, [None] + good[1:], [1]),
        "ids_null": (first_key + 5, good, None),
        "ids_null_element": (first_key + 6, good, [3, None]),
        "zero_row": (first_key + 7, [0.0] * DENSE_DIM, []),
    }
    keys, dense, ids = zip(*rows.values())
    return pa.table({
        "user_id": pa.array(keys, pa.int64()),
        "dense": pa.array(dense, pa.list_(pa.float32())),
        "sparse_ids": pa.array(ids, pa.list_(pa.int64())),
        "country": pa.array(["bad"] * len(keys)),
    })


def write_users(out_dir: str, users: int, files: int = 2, seed: int = 0, bad: bool = False,
                row_group_size: int = 250, first_key: int = 1000) -> List[str]:
    """Write ``users`` good users (keys first_key, first_key+1, ... shuffled, some negative) across
    ``files`` Parquet files; with ``bad`` one BAD_ROW_REASONS row set goes into the first file."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = np.arange(first_key, first_key + users, dtype=np.int64)
    keys[::11] *= -1  # negative keys: shard placement must treat them as uint64
    rng.shuffle(keys)
    paths = []
    for i, chunk in enumerate(np.array_split(keys, files)):
        table = user_table(chunk, seed * 1000 + i)
        if bad and i == 0:
            table = pa.concat_tables([table.slice(0, len(chunk) // 2), bad_rows(10 ** 12),
                                      table.slice(len(chunk) // 2)])
        path = os.path.join(out_dir, f"users-{i:03d}.parquet")
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def build_tiny_model(path: str, seed: int = 0, extra_output: bool = True, guard=None,
                     names: Sequence[str] = ("embedding", "score")) -> str:
    """Save the tiny embedding model at ``path`` (a SavedModel directory) and return the path.

    ``names`` are the signature's output names for the embedding and the score.

    ``guard(dense, sparse_ids)``, if given, is traced into the signature before the maths (e.g.
    ``tf.debugging`` asserts that make the model raise on some batches).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(rng.normal(size=(DENSE_DIM, EMB_DIM)).astype(np.float32))
            self.table = tf.Variable(rng.normal(size=(VOCAB, EMB_DIM)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, DENSE_DIM], tf.float32),
                                      tf.TensorSpec([None, IDS_LEN], tf.int64)])
        def serve(self, dense, sparse_ids):
            if guard is not None:
                guard(dense, sparse_ids)
            mask = tf.cast(sparse_ids != 0, tf.float32)[..., None]
            pooled = tf.reduce_sum(tf.gather(self.table, tf.math.floormod(sparse_ids, VOCAB)) * mask, 1)
            x = tf.matmul(dense, self.w) + pooled
            out = {names[0]: x / tf.norm(x, axis=1, keepdims=True)}  # no epsilon: 0 -> NaN
            if extra_output:
                out[names[1]] = tf.reduce_sum(x, axis=1)
            return out

    module = Tiny()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def model_outputs(model_path: str, dense: np.ndarray, ids: np.ndarray) -> Dict[str, np.ndarray]:
    """The model applied with TF directly (no Beam), for comparison with the export."""
    import tensorflow as tf
    fn = tf.saved_model.load(model_path).signatures["serving_default"]
    out = fn(dense=tf.constant(dense, tf.float32), sparse_ids=tf.constant(ids, tf.int64))
    return {k: v.numpy() for k, v in out.items()}


def padded_ids(lists: Sequence[Sequence[int]], length: int = IDS_LEN, pad: int = 0) -> np.ndarray:
    """Python-loop reference of right-padding / truncating id lists (independent of the job's code)."""
    out = np.full((len(lists), length), pad, dtype=np.int64)
    for i, ids in enumerate(lists):
        ids = list(ids)[:length]
        out[i, :len(ids)] = ids
    return out


def tiny_config(input_glob: str, model_path: str, out_dir: str, *, num_shards: int = 4,
                fmt: str = "tfrecord", compression: str = "none", batch_size: int = 128,
                extra_output: bool = True, runner: str = "FnApiRunner",
                runner_options: Optional[List[str]] = None, **output_extra) -> ExportConfig:
    outputs = {"embedding": {"feature": "output"}}
    if extra_output:
        outputs["score"] = {"feature": "user.score"}
    raw = {
        "input": {"format": "parquet", "path": input_glob, "key": "user_id"},
        "model": {"path": model_path, "batch_size": batch_size,
                  "inputs": {"dense": {"column": "dense"},
                             "sparse_ids": {"column": "sparse_ids", "length": IDS_LEN, "pad": 0}},
                  "outputs": outputs},
        "partition": {"num_shards": num_shards},
        "output": {"path": out_dir, "format": fmt, "compression": compression, **output_extra},
        "runner": {"name": runner, "options": runner_options or ["--direct_running_mode=in_memory"]},
    }
    return parse_config(raw, "<test>")


def fmix64_reference(key: int) -> int:
    """MurmurHash3 fmix64 with Python ints (an implementation independent of transforms.partition)."""
    mask = (1 << 64) - 1
    k = key & mask
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & mask
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & mask
    k ^= k >> 33
    return k


_CACHE_DIR: Optional[str] = None


def cache_dir() -> str:
    """A directory shared by the tests of this process (removed at exit)."""
    global _CACHE_DIR
    if _CACHE_DIR is None:
        import atexit
        import shutil
        import tempfile
        _CACHE_DIR = tempfile.mkdtemp(prefix="pipeline-tests-")
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


def tiny_model(extra_output: bool = True) -> str:
    """The tiny SavedModel, built once per test process."""
    path = os.path.join(cache_dir(), f"model-{int(extra_output)}")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        build_tiny_model(path, extra_output=extra_output)
    return path


def build_exact_model(path: str) -> str:
    """A SavedModel whose outputs are exact (``embedding = 2 * dense``, ``score = float(sum(sparse_ids))``):
    they depend neither on the machine's BLAS nor on a row's batch, so exports of it can be
    compared byte for byte across machines, runners and batchings."""
    import tensorflow as tf

    class Exact(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, DENSE_DIM], tf.float32),
                                      tf.TensorSpec([None, IDS_LEN], tf.int64)])
        def serve(self, dense, sparse_ids):
            return {"embedding": dense * 2.0,
                    "score": tf.cast(tf.reduce_sum(sparse_ids, axis=1), tf.float32)}

    module = Exact()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def exact_model() -> str:
    """The exact SavedModel (``build_exact_model``), built once per test process."""
    path = os.path.join(cache_dir(), "model-exact")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        build_exact_model(path)
    return path


def read_inputs(paths: Sequence[str]) -> pa.Table:
    """All rows of the input files (good and bad), in file order."""
    return pa.concat_tables([pq.read_table(p, columns=["user_id", "dense", "sparse_ids"]) for p in paths])


def expected_embeddings(model_path: str, paths: Sequence[str]) -> Dict[int, Dict[str, np.ndarray]]:
    """{key: {output: row}} for every good row, computed with TF directly, ids padded in Python."""
    table = read_inputs(paths)
    keys = table.column("user_id").to_pylist()
    dense = table.column("dense").to_pylist()
    ids = table.column("sparse_ids").to_pylist()
    good = [i for i in range(len(keys))
            if keys[i] is not None and dense[i] is not None and len(dense[i]) == DENSE_DIM
            and all(v is not None and np.isfinite(v) for v in dense[i])
            and ids[i] is not None and all(v is not None for v in ids[i])]
    out = model_outputs(model_path, np.array([dense[i] for i in good], np.float32),
                        padded_ids([ids[i] for i in good]))
    result = {}
    for j, i in enumerate(good):
        row = {name: values[j] for name, values in out.items()}
        if np.isfinite(row["embedding"]).all():
            result[keys[i]] = row
    return result


def shard_records(out_dir, manifest):
    """{shard index: [record bytes]} read with the twml readers, by format."""
    fmt = manifest["format"]
    result = {}
    for i, entry in enumerate(manifest["shards"]):
        path = os.path.join(out_dir, entry["file"])
        if fmt == "tfrecord":
            records = list(read_tfrecords(path))
        elif fmt == "block":
            records = list(read_block_records(path))
        else:
            records = pq.read_table(path).column("data_record").to_pylist()
        result[i] = records
    return result


def check_export(out_dir, manifest, expected, users, shards):
    """Everything docs/FORMAT.md promises about a finished export."""
    names = sorted(os.listdir(out_dir))
    files = [s["file"] for s in manifest["shards"]]
    assert names == sorted(files + ["_MANIFEST.json", "_SUCCESS", "_rejected"])
    assert json.loads(open(os.path.join(out_dir, "_MANIFEST.json")).read()) == manifest
    assert os.path.getsize(os.path.join(out_dir, "_SUCCESS")) == 0
    for key in ("format", "compression", "num_shards", "shards", "rows_read", "rows_written", "rows_rejected",
                "key_feature", "embedding_feature", "embedding_dim", "model", "config", "versions"):
        assert key in manifest, key
    assert manifest["num_shards"] == shards and len(files) == shards
    assert manifest["key_feature"] == {"name": "meta.user_id", "id": KEY_ID}
    assert manifest["embedding_feature"] == {"name": "output", "id": EMB_ID}
    assert manifest["embedding_dim"] == EMB_DIM
    assert manifest["model"]["signature"] == "serving_default"
    assert {"embedding_export", "apache_beam", "tensorflow"} <= set(manifest["versions"])
    assert manifest["rows_read"] == users + len(BAD_ROW_REASONS)
    assert manifest["rows_written"] == users == len(expected)
    assert manifest["rows_rejected"] == len(BAD_ROW_REASONS)
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_rejected"]
    assert manifest["rejected_by_reason"] == {r: 1 for r in BAD_ROW_REASONS.values()}
    records = shard_records(out_dir, manifest)
    seen = set()
    for shard, recs in records.items():
        entry = manifest["shards"][shard]
        assert entry["records"] == len(recs)
        assert entry["bytes"] == os.path.getsize(os.path.join(out_dir, entry["file"]))
        keys, emb = decode_embeddings(recs, KEY_ID, EMB_ID)
        for key, vector, raw in zip(keys.tolist(), emb, recs):
            assert fmix64_reference(key) % shards == shard  # FORMAT.md section 6, independent fmix64
            want = expected[key]
            np.testing.assert_allclose(vector, want["embedding"], rtol=1e-6, atol=1e-6)
            record = decode_data_record(raw)
            assert list(record.tensors) == [EMB_ID, SCORE_ID]  # FORMAT.md section 3: embedding, then outputs in order
            score = record.tensors[SCORE_ID].rawTypedTensor
            assert score.shape == []
            np.testing.assert_allclose(np.frombuffer(score.content, "<f4")[0], want["score"], rtol=1e-5, atol=1e-5)
            seen.add(key)
    assert seen == set(expected)
    rejected = pq.read_table(os.path.join(out_dir, "_rejected"))
    assert sorted(rejected.column("reason").to_pylist()) == sorted(BAD_ROW_REASONS.values())
    # write_users puts the bad rows in its first file
    assert set(rejected.column("source_file").to_pylist()) == {
        os.path.join(os.path.dirname(manifest["input"]["path"]), "users-000.parquet")}
    assert {"user_id", "dense", "sparse_ids"} <= set(rejected.column_names)
    return records


def sorted_records(records):
    return {s: sorted(r) for s, r in records.items()}


def pcollections(p) -> Dict[str, object]:
    """{'label[tag]': PCollection} of every output of every step of pipeline ``p``."""
    import apache_beam as beam

    found = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            for tag, pcoll in node.outputs.items():
                found[f"{node.full_label}[{tag}]"] = pcoll

    p.visit(Visitor())
    return found


def untyped_pcollections(p, allowed: Sequence[str] = ()) -> List[str]:
    """'label[tag]: type' of every PCollection of ``p`` whose element type is, or holds, Any
    (Beam then falls back to its pickling coder), except those made by a step in ``allowed``."""
    from apache_beam.typehints import typehints

    def holds_any(t) -> bool:
        if t is typehints.Any:
            return True
        inner = [getattr(t, name, None) for name in ("inner_type", "key_type", "value_type")]
        inner += list(getattr(t, "tuple_types", ())) + list(getattr(t, "union_types", ()))
        return any(holds_any(i) for i in inner if i is not None)

    return [f"{label}: {pcoll.element_type}" for label, pcoll in pcollections(p).items()
            if not label.rsplit("[", 1)[0].endswith(tuple(allowed)) and holds_any(pcoll.element_type)]
