"""twml for TensorFlow 2: DataRecord schema and codecs, feature ids, file containers and layers.

No Beam imports here: the Beam job (``transforms``, ``pipeline``) builds on this package, never
the other way round. The names below load on first use (PEP 562), so ``import twml.dataset``
(graph-mode reading) neither imports thriftpy2 nor the encoders; ``twml.layers`` and
``twml.dataset`` import TensorFlow and are loaded only when asked for.
"""
from __future__ import annotations

import importlib

from twml._version import __version__

_EXPORTS = {
    "twml.encode": ("EncodedRecords", "encode_batch_prediction_response", "encode_continuous_records",
                    "encode_data_records", "encode_fixed_rows", "encode_tensor_record"),
    "twml.decode": ("decode_batch_prediction_response", "decode_data_record", "decode_embeddings",
                    "tensor_to_numpy"),
    "twml.errors": ("RecordFormatError",),
    "twml.feature_ids": ("feature_id", "feature_ids", "resolve_feature_id"),
    "twml.sharding": ("fmix64", "shard_of_keys"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'twml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
