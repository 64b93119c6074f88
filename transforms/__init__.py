"""Beam PTransforms and DoFns of the export job (imports twml, never pipeline).

In pipeline order:
    validate.ValidateAndBatch  (file, Arrow table) -> good-row tables of model.batch_size rows,
                               + rejected rows with reasons, + rows read
    embed.EmbedBatches         tables -> EmbeddedBatch (one SavedModel call per batch)
    partition.PartitionBatches EmbeddedBatch -> (shard, slice), SPEC section 5
    write.WriteShards          slices -> one complete temporary file per shard (formats.*)
    write.WriteRejected        rejected rows -> temporary Parquet files
    finalize.FinalizeExport    checks, publishes the files, _MANIFEST.json, then _SUCCESS
specs.py and elements.py hold the small picklable types passed between them.
"""
