"""File containers for serialized records: TFRecord framing and elephant-bird blocks."""
from twml.io.block import (BLOCK_MARKER, DATA_RECORD_CLASS_NAME, BlockWriter, iter_block_records,
                           read_block_records)
from twml.io.compression import infer_compression, open_for_read, open_for_write
from twml.io.tfrecord import TFRecordWriter, encode_tfrecords, frame_tfrecords, iter_tfrecords, masked_crc32c, read_tfrecords

__all__ = ["BLOCK_MARKER", "DATA_RECORD_CLASS_NAME", "BlockWriter", "iter_block_records",
           "read_block_records", "infer_compression", "open_for_read", "open_for_write",
           "TFRecordWriter", "encode_tfrecords", "frame_tfrecords", "iter_tfrecords", "masked_crc32c", "read_tfrecords"]
