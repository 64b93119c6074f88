"""twml for TensorFlow 2: DataRecord schema and codecs, feature ids, file containers and layers.

No Beam imports here: the Beam job (``transforms``, ``pipeline``) builds on this package, never
the other way round. The names below load on first use (PEP 562), so ``import twml.dataset``
(graph-mode reading) neither imports thriftpy2 nor the encoders; ``twml.layers`` and
``twml.dataset`` import TensorFlow and are loaded only when asked for.
"""
from __future__ import annotations

from twml._lazy import lazy_exports
from twml._version import __version__

__getattr__, __dir__, _NAMES = lazy_exports(__name__, globals(), {
    "twml.encode": ("EncodedRecords", "encode_batch_prediction_response", "encode_continuous_records",
                    "encode_data_records", "encode_fixed_rows", "encode_tensor_record"),
    "twml.decode": ("decode_batch_prediction_response", "decode_data_record", "decode_embeddings",
                    "tensor_to_numpy"),
    "twml.errors": ("RecordFormatError",),
    "twml.feature_ids": ("feature_id", "feature_ids", "resolve_feature_id"),
    "twml.sharding": ("fmix64", "shard_of_keys"),
})
__all__ = _NAMES + ["__version__"]
