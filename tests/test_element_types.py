"""Every PCollection the export makes has a declared element type, so every runner encodes it
with that type's coder (``transforms.elements``), not with Beam's pickling fallback for Any.

The graph is built, not run: the runs themselves are the other tests'.
"""
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import parse_config
from pipeline.job import build_pipeline
from pipeline.plan import preflight
from pipeline_fixtures import IDS_LEN, pcollections, tiny_config, tiny_model, untyped_pcollections, user_table, write_users
from transforms import EmbedTables, SavedModelHandler, WriteDataRecordShards, model_specs
from transforms.elements import ArrowTableCoder, EmbeddedBatchCoder

MANIFEST = ("Finalize/Publish",)  # the manifest: a JSON object, Dict[str, Any] by nature


def _pipeline() -> beam.Pipeline:
    return beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


def _export_graph(config, progress_dir=None) -> beam.Pipeline:
    p = _pipeline()
    build_pipeline(p, preflight(config), progress_dir=progress_dir)
    return p


def _parquet_users(tmp_path, table=None) -> str:
    if table is None:
        write_users(str(tmp_path / "in"), 100, files=2)
    else:
        os.makedirs(tmp_path / "in")
        pq.write_table(table, str(tmp_path / "in" / "u.parquet"))
    return str(tmp_path / "in" / "*.parquet")


def test_parquet_export_by_hash_declares_every_type(tmp_path):
    """Hash partition, an input column the job does not read (restored on rejected rows),
    progress reporting."""
    config = tiny_config(_parquet_users(tmp_path), tiny_model(), str(tmp_path / "out"))
    p = _export_graph(config, progress_dir=str(tmp_path / "progress"))
    assert untyped_pcollections(p, allowed=MANIFEST) == []
    coder = beam.coders.registry.get_coder
    pcolls = pcollections(p)
    # the tagged outputs, rare but possibly large (rejected rows), keep the Arrow coder
    for label in ("ExportEmbeddings/Validate/ValidateRows/ParDo(_ValidateAndBatchFn)[rejected]",
                  "ExportEmbeddings/Embed/RunModel/ParDo(_EmbedFn)[rejected]",
                  "ExportEmbeddings/AllRejected[None]",
                  "ExportEmbeddings/RestoreInputColumns/RestoreColumns[None]"):
        assert isinstance(coder(pcolls[label].element_type), ArrowTableCoder), label
    assert isinstance(coder(pcolls["ExportEmbeddings/Embed/RunModel/ParDo(_EmbedFn)[None]"].element_type),
                      EmbeddedBatchCoder)
    assert isinstance(coder(pcolls["ExportEmbeddings/AllRowsRead[None]"].element_type), beam.coders.VarIntCoder)
    assert str(pcolls["ExportEmbeddings/ReadParquet/Spread/KeyByPart[None]"].element_type).startswith(
        "Tuple[Tuple[<class 'str'>, <class 'int'>], ")


def test_parquet_export_by_column_and_string_keys_declares_every_type(tmp_path):
    """Partition by a column (duplicates counted by key bucket) and string keys."""
    table = user_table(np.arange(60), 3)
    table = table.set_column(0, "user_id", pa.array([f"user-{k}" for k in range(60)]))
    table = table.append_column("bucket", pa.array(np.arange(60) % 3, pa.int32()))
    raw = tiny_config(_parquet_users(tmp_path, table), tiny_model(), str(tmp_path / "out")).model_dump(mode="json")
    raw["partition"] = {"num_shards": 3, "by": "column", "column": "bucket"}
    p = _export_graph(parse_config(raw))
    labels = set(pcollections(p))
    assert any("CountDuplicateKeys" in label for label in labels)
    assert untyped_pcollections(p, allowed=MANIFEST) == []


def test_library_transforms_declare_every_type(tmp_path):
    """EmbedTables on dict rows and WriteDataRecordShards on (key, vector) pairs."""
    specs = model_specs({"path": tiny_model(), "inputs": {"dense": {"column": "dense"},
                                                          "sparse_ids": {"column": "sparse_ids", "length": IDS_LEN}},
                         "outputs": {"embedding": {"feature": "output"}, "score": {"feature": "user.score"}}})
    handler = SavedModelHandler(specs.model.path, specs.model.signature, specs.inputs, specs.outputs)
    schema = user_table(np.arange(2), 0).schema
    p = _pipeline()
    rows = p | "Rows" >> beam.Create(user_table(np.arange(10), 1).to_pylist())
    embedded = rows | EmbedTables(handler, "user_id", schema)
    _ = embedded.embedded | "Write" >> WriteDataRecordShards(str(tmp_path / "a"), 2, outputs=specs.outputs)
    pairs = p | "Pairs" >> beam.Create([(k, np.zeros(4, np.float32)) for k in range(10)])
    _ = pairs | "WritePairs" >> WriteDataRecordShards(str(tmp_path / "b"), 2, embedding_dim=4)
    assert untyped_pcollections(p, allowed=MANIFEST + ("Rows/Map(decode)", "Pairs/Map(decode)")) == []
