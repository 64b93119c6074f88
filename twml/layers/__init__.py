"""twml's Keras layers for TensorFlow 2 / Keras 3.

``Partition`` / ``Stitch`` split a hashmap's entries by partition id and put them back; the
writers turn model outputs into Thrift-serialized DataRecords (uint8 ``[1, len]``) with graph
ops only, so SavedModels ending in them run without this package.
"""
from twml.layers.partition import Partition
from twml.layers.stitch import Stitch
from twml.layers.writers import BatchPredictionTensorWriter, BatchPredictionWriter, DataRecordTensorWriter

__all__ = ["Partition", "Stitch", "DataRecordTensorWriter", "BatchPredictionWriter",
           "BatchPredictionTensorWriter"]
