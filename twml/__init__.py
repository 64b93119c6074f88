"""twml for TensorFlow 2: DataRecord schema and codecs, feature ids, file containers and layers.

No Beam imports here: the Beam job (``transforms``, ``pipeline``) builds on this package, never
the other way round. ``twml.layers`` imports TensorFlow and is loaded only when asked for.
"""
from twml.encode import (EncodedRecords, encode_batch_prediction_response, encode_continuous_records,
                         encode_data_records, encode_fixed_rows, encode_tensor_record)
from twml.decode import (decode_batch_prediction_response, decode_data_record, decode_embeddings,
                         tensor_to_numpy)
from twml.errors import RecordFormatError
from twml.feature_ids import feature_id, feature_ids, resolve_feature_id
from twml.sharding import fmix64, shard_of_keys

__version__ = "0.1.0"

__all__ = ["EncodedRecords", "RecordFormatError", "decode_batch_prediction_response",
           "decode_data_record", "decode_embeddings", "tensor_to_numpy", "encode_batch_prediction_response",
           "encode_continuous_records", "encode_data_records", "encode_fixed_rows", "encode_tensor_record",
           "feature_id", "feature_ids", "fmix64", "resolve_feature_id", "shard_of_keys", "__version__"]
