"""Beam PTransforms and DoFns of the export job (imports twml, never pipeline).

In pipeline order:
    inputs.parquet             Parquet files -> (file, Arrow table), one row group per element,
                               naming the file and row group on a bad read (or skipping it)
    inputs.datarecord          DataRecord TFRecord/block files -> the same (file, Arrow table)
                               (both: a scan for the launcher and a read step giving a ReadResult)
    validate.ValidateAndBatch  (file, Arrow table) -> good-row tables of model.batch_size rows,
                               + rejected rows with reasons, + rows read
    embed.EmbedBatches         tables -> EmbeddedBatch (one SavedModel call per batch; a batch
                               the model fails on is bisected by isolate.isolate_failures)
    partition.PartitionBatches EmbeddedBatch -> (shard, slice), docs/FORMAT.md section 6
    write.WriteShards          slices -> one complete temporary file per shard (formats.*)
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
