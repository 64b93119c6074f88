"""File containers for serialized records: TFRecord framing and elephant-bird blocks.

The names below load on first use (PEP 562), as in ``twml``: so that a submodule such as
``twml.io.crc32c_batch``, which the encoder itself uses (``twml.row_fill``), imports without
the containers, which import the encoder.
"""
from __future__ import annotations

from twml._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "twml.io.block": ("BLOCK_MARKER", "DATA_RECORD_CLASS_NAME", "BlockWriter", "iter_block_records",
                      "read_block_records"),
    "twml.io.compression": ("infer_compression", "open_for_read", "open_for_write"),
    "twml.io.tfrecord": ("TFRecordWriter", "encode_tfrecord_frames", "encode_tfrecords", "frame_tfrecords",
                         "iter_tfrecords", "masked_crc32c", "read_tfrecords"),
})
