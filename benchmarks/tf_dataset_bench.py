"""Speed of reading an export in TensorFlow: ``twml.dataset.export_dataset`` (graph-mode parse of
every structural byte) against the TFRecord pass alone and the Python decoders, same export.

    python benchmarks/tf_dataset_bench.py [--users 50000] [--dim 128] [--shards 8] [--rounds 5]

prints one JSON object:

- the export: ``users`` records of a float32 embedding of ``dim`` and a float32 score, in
  ``shards`` TFRecord shards, written with the twml encoder into a temp directory;
- ``tfrecord_rows_per_s``: ``tf.data.TFRecordDataset`` over the shards, batched, nothing parsed
  (the limit of any tf.data reader);
- ``dataset_rows_per_s``: ``export_dataset(dir, batch_size=batch)``; ``dataset_unbatched_rows_per_s``:
  ``export_dataset(dir)``, one element per record. These three are consumed inside TensorFlow
  (``Dataset.reduce``), as a training loop does;
- ``dataset_python_rows_per_s``: ``export_dataset(dir, batch_size=batch)`` iterated in Python;
- ``decode_embeddings_rows_per_s``: ``twml.io.read_tfrecords`` + ``twml.decode.decode_embeddings``
  (numpy, the embedding only); ``general_rows_per_s``: ``decode_data_record`` per record (thriftpy2);
- the datasets are built once and each round is one full pass (an epoch); each figure is rows / time
  of a pass, median of ``rounds`` with min and max in ``*_spread``;
  ratios ``dataset_vs_tfrecord`` and ``dataset_vs_general`` are of the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def write_export(root: str, users: int, dim: int, shards: int) -> None:
    from twml.encode import encode_data_records
    from twml.feature_ids import feature_id
    from twml.io.tfrecord import TFRecordWriter

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**62, size=users)
    emb = rng.normal(size=(users, dim)).astype(np.float32)
    score = rng.normal(size=users).astype(np.float32)
    names = [f"part-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
    for s, name in enumerate(names):
        rows = np.arange(users)[s::shards]
        with TFRecordWriter(os.path.join(root, name)) as writer:
            writer.write_records(encode_data_records(keys[rows], "meta.user_id",
                                                     [("output", emb[rows]), ("user.score", score[rows])]))
    manifest = {"format": "tfrecord", "compression": "none", "num_shards": shards,
                "shards": [{"file": n} for n in names],
                "key_feature": {"name": "meta.user_id", "id": feature_id("meta.user_id")},
                "embedding_feature": {"name": "output", "id": feature_id("output")},
                "outputs": [{"output": "embedding", "feature": "output", "id": feature_id("output"),
                             "dtype": "float32", "shape": [dim]},
                            {"output": "score", "feature": "user.score", "id": feature_id("user.score"),
                             "dtype": "float32", "shape": []}]}
    with open(os.path.join(root, "_MANIFEST.json"), "w") as handle:
        json.dump(manifest, handle)
    open(os.path.join(root, "_SUCCESS"), "w").close()


def timed(fn, rounds: int, users: int):
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = fn()
        rates.append(users / (time.perf_counter() - start))
        assert count == users, (count, users)
    return statistics.median(rates), [min(rates), max(rates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf

    from twml.dataset import export_dataset, read_export_layout
    from twml.decode import decode_data_record, decode_embeddings
    from twml.io.tfrecord import read_tfrecords

    root = tempfile.mkdtemp(prefix="tf-dataset-bench-")
    try:
        write_export(root, args.users, args.dim, args.shards)
        layout = read_export_layout(root)
        files = list(layout.files)

        def rows(ds, batched=True):
            first = (lambda e: e[0]) if isinstance(ds.element_spec, tuple) else (lambda e: e)
            size = (lambda e: tf.shape(first(e), out_type=tf.int64)[0]) if batched else (lambda e: tf.constant(1, tf.int64))
            return int(ds.reduce(tf.constant(0, tf.int64), lambda n, e: n + size(e)))

        # Built once, iterated once per round, as a training job iterates epochs (building one
        # traces the parser, a second or so, which is not per-record cost).
        raw_ds = tf.data.TFRecordDataset(files).batch(args.batch)
        batched_ds = export_dataset(root, batch_size=args.batch)
        unbatched_ds = export_dataset(root)

        def tfrecord_only():
            return rows(raw_ds)

        def dataset():
            return rows(batched_ds)

        def dataset_unbatched():
            return rows(unbatched_ds, batched=False)

        def dataset_python():
            return sum(int(k.shape[0]) for k, _, _ in batched_ds)

        def numpy_decoder():
            return sum(len(decode_embeddings(list(read_tfrecords(f)), layout.key_feature_id,
                                             layout.embedding.feature_id)[0]) for f in files)

        def general():
            return sum(1 for f in files for r in read_tfrecords(f) if decode_data_record(r) is not None)

        result = {"users": args.users, "dim": args.dim, "shards": args.shards, "batch": args.batch,
                  "rounds": args.rounds}
        for name, fn in (("tfrecord", tfrecord_only), ("dataset", dataset), ("dataset_unbatched", dataset_unbatched),
                         ("dataset_python", dataset_python),
                         ("decode_embeddings", numpy_decoder), ("general", general)):
            fn()  # warm-up: graph tracing, file cache
            result[f"{name}_rows_per_s"], result[f"{name}_spread"] = timed(fn, args.rounds, args.users)
        result["dataset_vs_tfrecord"] = result["dataset_rows_per_s"] / result["tfrecord_rows_per_s"]
        result["dataset_vs_general"] = result["dataset_rows_per_s"] / result["general_rows_per_s"]
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
