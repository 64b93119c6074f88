"""The export written the obvious way: the baseline that ``pipeline_vs_naive`` compares against.

    python -m benchmarks.naive --input PATTERN --model PATH --output PREFIX --batch-size B \
        --sparse-length L --num-shards S [--runner-option=--flag=value ...] --result FILE

What most Beam users would write for this job, written carefully: ReadFromParquet (one dict per
user), BatchElements with the export's batch size, a DoFn that loads the SavedModel once in
setup() and calls it once per batch, one (key, embedding) element per user, a thriftpy2
DataRecord per user serialized with thriftpy2's C binary protocol (docs/FORMAT.md section 3: field 3 the
key, field 8 the embedding as a rawTypedTensor), and WriteToTFRecord with a fixed shard count.
The same model, input and record bytes as the real job; only the shard a user lands in differs
(WriteToTFRecord assigns shards round-robin, not by key hash).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import from the repository, not from benchmarks/
    sys.path[0] = str(REPO)

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from benchmarks.window import TimedWindow, own_peak_rss_mb  # noqa: E402

__all__ = ["EmbedRows", "data_record_bytes", "build_naive_export", "run_naive", "main"]


class EmbedRows(beam.DoFn):
    """Embed a batch of Parquet rows with the SavedModel; emit one (user_id, embedding) per user.

    Args:
      model_path: SavedModel directory (loaded in setup, once per DoFn instance).
      signature: the serving signature to call.
      sparse_length: ``sparse_ids`` lists are cut to this many ids and padded with 0.
    """

    def __init__(self, model_path: str, signature: str, sparse_length: int):
        self._model_path = model_path
        self._signature = signature
        self._sparse_length = sparse_length
        self._rows = Metrics.counter(self.__class__, "rows_embedded")

    def setup(self) -> None:
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(self._model_path)  # keep: the signature needs it alive
        self._call = self._model.signatures[self._signature]

    def process(self, rows: List[Dict[str, Any]]) -> Iterator[Tuple[int, np.ndarray]]:
        dense = np.asarray([row["dense"] for row in rows], dtype=np.float32)
        sparse = np.zeros((len(rows), self._sparse_length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids = row["sparse_ids"][:self._sparse_length]
            sparse[i, :len(ids)] = ids
        out = self._call(dense=self._tf.constant(dense), sparse_ids=self._tf.constant(sparse))
        embeddings = out["embedding"].numpy()
        self._rows.inc(len(rows))
        for row, embedding in zip(rows, embeddings):
            yield row["user_id"], embedding


def data_record_bytes(user: Tuple[int, np.ndarray], key_feature_id: int, embedding_feature_id: int) -> bytes:
    """One user's DataRecord (docs/FORMAT.md section 3) as a thriftpy2 object, serialized with the C protocol."""
    from twml.schema import data_thrift, serialize, tensor_thrift

    key, embedding = user
    tensor = tensor_thrift.GeneralTensor(rawTypedTensor=tensor_thrift.RawTypedTensor(
        dataType=tensor_thrift.DataType.FLOAT, content=embedding.astype("<f4").tobytes(),
        shape=[int(embedding.shape[0])]))
    record = data_thrift.DataRecord(discreteFeatures={key_feature_id: int(key)},
                                    tensors={embedding_feature_id: tensor})
    return serialize(record)


def build_naive_export(pipeline: beam.Pipeline, input_pattern: str, model_path: str, output_prefix: str,
                       batch_size: int, sparse_length: int, num_shards: int,
                       key_feature: str = "meta.user_id", embedding_feature: str = "output",
                       signature: str = "serving_default") -> None:
    """Add the naive export to ``pipeline``: files ``<output_prefix>-SSSSS-of-NNNNN.tfrecord``."""
    from twml.feature_ids import feature_id

    _ = (pipeline
         | "ReadParquet" >> beam.io.ReadFromParquet(input_pattern, columns=["user_id", "dense", "sparse_ids"])
         | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
         | "Embed" >> beam.ParDo(EmbedRows(model_path, signature, sparse_length))
         .with_input_types(List[Dict[str, Any]]).with_output_types(Tuple[int, Any])
         | "ToDataRecord" >> beam.Map(data_record_bytes, feature_id(key_feature), feature_id(embedding_feature))
         .with_output_types(bytes)
         | "Write" >> beam.io.WriteToTFRecord(output_prefix, file_name_suffix=".tfrecord", num_shards=num_shards))


def run_naive(input_pattern: str, model_path: str, output_prefix: str, batch_size: int, sparse_length: int,
              num_shards: int, runner: str = "DirectRunner", runner_options: Sequence[str] = ()) -> Dict:
    """Run the naive export to completion; returns {"seconds", "rows_written"}."""
    options = PipelineOptions([f"--runner={runner}", *runner_options])
    pipeline = beam.Pipeline(options=options)
    build_naive_export(pipeline, input_pattern, model_path, output_prefix, batch_size, sparse_length, num_shards)
    with TimedWindow() as window:
        result = pipeline.run()
        result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("rows_embedded"))["counters"]
    return {"seconds": window.wall_s, "window": window.result(), "own_peak_rss_mb": own_peak_rss_mb(),
            "rows_written": int(sum(c.committed or 0 for c in counters))}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="Parquet file pattern")
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True, help="output file prefix")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--sparse-length", type=int, required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--runner-option", action="append", default=[],
                        help="a pipeline flag, written --runner-option=--flag=value (repeatable)")
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args(argv)
    result = run_naive(args.input, args.model, args.output, args.batch_size, args.sparse_length,
                       args.num_shards, args.runner, args.runner_option)
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from benchmarks.naive import main as _main
    sys.exit(_main())
