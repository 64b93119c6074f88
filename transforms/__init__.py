"""Beam PTransforms and DoFns of the export job (imports twml, never pipeline); the public names
below (``__all__``, docs/LIBRARY.md) are the library a Beam pipeline composes.

In pipeline order:
    inputs.parquet             Parquet files -> (file, Arrow table), one row group per element,
                               naming the file and row group on a bad read (or skipping it)
    inputs.datarecord          DataRecord TFRecord/block files -> the same (file, Arrow table)
                               (both: a scan for the launcher and a read step giving a ReadResult)
    validate.ValidateAndBatch  (file, Arrow table) -> good-row tables of model.batch_size rows,
                               + rejected rows with reasons, + rows read
    embed.EmbedBatches         tables -> EmbeddedBatch (one SavedModel call per batch; a batch
                               the model fails on is bisected by isolate.isolate_failures)
    partition.PartitionBatches EmbeddedBatch -> ShardedBatch (users in shard order, each shard's
                               range), docs/FORMAT.md section 6
    write.WriteShards          ShardedBatch -> one complete temporary file per shard (formats.*)
    rejected_columns           rejected rows + the input columns the job did not read, read back
    write.WriteRejected        rejected rows -> temporary Parquet files
    duplicates                 written keys -> the duplicate-key counts for the manifest
    finalize.FinalizeExport    checks, publishes the files, _MANIFEST.json, then _SUCCESS
Owners of what the steps share: plan.ExportPlan (the resolved job), specs (the small picklable
descriptions), elements (the batch types and their coders), outputdir (the output directory's
names, shard naming and manifest; no Beam), rejected (the rejected-rows schema and the hidden
row tags; no Beam), errors (ExportError, PreflightError). ownership.py decides which files in an
output directory are the job's own; pause_points.py lets the reliability tests stop a run at a
named moment (an environment lookup otherwise).
"""

# The public API (docs/LIBRARY.md). Loaded on first use, so that importing one module of the
# package (the Beam-free outputdir, say) does not import Beam, TensorFlow and every step.
_PUBLIC = {
    "ExportEmbeddings": "transforms.export",
    "EmbedTables": "transforms.export",
    "EmbedResult": "transforms.export",
    "WriteDataRecordShards": "transforms.export",
    "SavedModelHandler": "transforms.embed",
    "ExportPlan": "transforms.plan",
    "ModelSpecs": "transforms.signature",
    "model_specs": "transforms.signature",
    "InputSpec": "transforms.specs",
    "OutputSpec": "transforms.specs",
    "ModelSpec": "transforms.specs",
    "PartitionSpec": "transforms.specs",
    "EmbeddedBatch": "transforms.elements",
    "ExportManifest": "transforms.outputdir",
    "read_manifest": "transforms.outputdir",
    "ExportError": "transforms.errors",
    "PreflightError": "transforms.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'transforms' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
