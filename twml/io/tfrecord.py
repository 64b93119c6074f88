"""TFRecord framing: what ``tf.data.TFRecordDataset`` and Beam's ``WriteToTFRecord`` read and write.

A frame is ``u64 LE length | u32 LE masked crc32c(length bytes) | data | u32 LE masked
crc32c(data)``, masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2^32.

Writing a batch avoids a Python object per record. When all records share a length (no string
tensors), the length header and its crc are one constant and a batch is a ``[B, L + 16]``
array: ``encode_tfrecords`` has the encoder fill it directly (header as a constant column,
records in place), ``frame_tfrecords`` copies already-encoded records into it; either way
each record's crc is hashed into its footer as its row is written (``twml.row_fill``), never
one ``google_crc32c`` call (~0.2 us) per record. Records of differing lengths are framed one
by one. The reader checks the length's crc before trusting the length and reads through
``PieceReader``, so corrupt or hostile files cost memory in proportion to their real size and
fail with RecordFormatError(path, offset).
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator, Mapping, Optional, Sequence, Union

import google_crc32c
import numpy as np

from twml.encode import EncodedRecords, StringColumn, TensorColumn, encode_data_records, encode_fixed_rows
from twml.errors import RecordFormatError
from twml.io.compression import PathLike, PieceReader, RecordFileWriter, open_for_read
from twml.io.crc32c_batch import MASK_DELTA, frame_records
from twml.row_fill import fill_rows

__all__ = ["masked_crc32c", "frame_tfrecords", "encode_tfrecords", "encode_tfrecord_frames", "TFRecordWriter",
           "iter_tfrecords", "read_tfrecords"]

_HEADER = struct.Struct("<QI")   # length, masked crc of the 8 length bytes
_FOOTER = struct.Struct("<I")    # masked crc of the data
_HEADER_SIZE = _HEADER.size      # 12
FRAME_OVERHEAD = _HEADER_SIZE + _FOOTER.size  # 16 bytes per record


def masked_crc32c(data: bytes) -> int:
    """The masked crc32c that TFRecord stores (``data`` may be bytes or a contiguous uint8 array)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def _header(length: int) -> bytes:
    size = struct.pack("<Q", length)
    return size + _FOOTER.pack(masked_crc32c(size))


def frame_tfrecords(records: EncodedRecords) -> np.ndarray:
    """All of ``records`` framed as TFRecords, back to back: a 1-D uint8 array ready to write."""
    batch = len(records)
    if batch == 0:
        return np.zeros(0, np.uint8)
    length = records.fixed_length()
    if length is not None:
        return _frame_fixed(records.buffer[:batch * length].reshape(batch, length))
    return _frame_variable(records)


def encode_tfrecords(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                     tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]],
                     strings: Sequence[StringColumn] = ()) -> np.ndarray:
    """B DataRecords encoded and framed as TFRecords in one go: a 1-D uint8 array ready to write.

    Byte for byte ``frame_tfrecords(encode_data_records(keys, key_feature_id, tensors, strings))``
    (arguments as there), but for fixed-length records (no string tensor or string feature) the
    encoder writes each record straight into its frame and one native call fills the crc footers.
    """
    return encode_tfrecord_frames(keys, key_feature_id, tensors, strings).buffer


def encode_tfrecord_frames(keys: Optional[np.ndarray], key_feature_id: Optional[int],
                           tensors: Union[Sequence[TensorColumn], Mapping[int, np.ndarray]],
                           strings: Sequence[StringColumn] = ()) -> EncodedRecords:
    """``encode_tfrecords``' bytes and where each frame starts: an ``EncodedRecords`` whose
    records are the B frames (so frames i to j are ``buffer[offsets[i]:offsets[j]]``)."""
    if not isinstance(tensors, Mapping):
        tensors = list(tensors)   # read twice when the records turn out to be variable-length
    rows = None if strings else encode_fixed_rows(keys, key_feature_id, tensors, head=_header,
                                                  tail=_FOOTER.size, crc_footer=True)
    if rows is not None:
        batch, width = rows.shape
        return EncodedRecords(rows.reshape(-1), np.arange(batch + 1, dtype=np.int64) * width)
    records = encode_data_records(keys, key_feature_id, tensors, strings)
    offsets = records.offsets + FRAME_OVERHEAD * np.arange(len(records) + 1, dtype=np.int64)
    return EncodedRecords(frame_tfrecords(records), offsets)


def _frame_fixed(rows: np.ndarray) -> np.ndarray:
    """Each row framed: the header a template column, the row a block, the crc hashed as it is
    written (``twml.row_fill``)."""
    batch, length = rows.shape
    template = np.zeros(length + FRAME_OVERHEAD, dtype=np.uint8)
    template[:_HEADER_SIZE] = np.frombuffer(_header(length), dtype=np.uint8)
    return fill_rows(template, [(_HEADER_SIZE, rows)], batch, (_HEADER_SIZE, length)).reshape(-1)


def _frame_variable(records: EncodedRecords) -> np.ndarray:
    return frame_records(records.buffer, records.offsets)


class TFRecordWriter(RecordFileWriter):
    """Streams TFRecord frames into a binary file object or a local file.

    Args:
      target: a binary file object (left open by ``close``; e.g. one from Beam FileSystems,
        which may compress it) or a local path (opened with ``open_for_write`` and closed by
        ``close``).
      compression: for a path only: "gzip", "none", or None/"auto" for "gzip iff .gz suffix".

    ``records`` and ``bytes_written`` count what was written (bytes before any compression).
    Usable as a context manager.
    """

    def __init__(self, target: Union[BinaryIO, PathLike], compression: Optional[str] = None):
        super().__init__(target, compression)
        self.records = 0
        self.bytes_written = 0

    def write(self, record: bytes) -> None:
        """Frame and write one serialized record."""
        self._check_open()
        record = bytes(record)
        frame = b"".join((_header(len(record)), record, _FOOTER.pack(masked_crc32c(record))))
        self._file.write(frame)
        self.records += 1
        self.bytes_written += len(frame)

    def write_records(self, records: EncodedRecords) -> None:
        """Frame and write a whole batch with ``frame_tfrecords``."""
        self._check_open()
        framed = frame_tfrecords(records)
        if framed.size:
            self._file.write(memoryview(framed))
        self.records += len(records)
        self.bytes_written += int(framed.size)

    def write_framed(self, framed: np.ndarray, records: int) -> None:
        """Write a batch already framed (``encode_tfrecords`` / ``frame_tfrecords``) as is.

        Args:
          framed: the 1-D uint8 frames, back to back.
          records: how many frames ``framed`` holds (for the ``records`` counter).
        """
        self._check_open()
        framed = np.asarray(framed)
        if framed.dtype != np.uint8 or framed.ndim != 1:
            raise ValueError(f"write_framed expects a 1-D uint8 array, got {framed.dtype} "
                             f"with shape {framed.shape}")
        if records < 0 or framed.size < FRAME_OVERHEAD * records or (records == 0) != (framed.size == 0):
            raise ValueError(f"{framed.size} bytes cannot hold exactly {records} TFRecord frames "
                             f"({FRAME_OVERHEAD} bytes of framing each)")
        if framed.size:
            self._file.write(memoryview(np.ascontiguousarray(framed)))
        self.records += records
        self.bytes_written += int(framed.size)

    def flush(self) -> None:
        self._check_open()
        self._file.flush()


def iter_tfrecords(fileobj: BinaryIO, path: Optional[str] = None,
                   check_crc: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord stream (already decompressed, if it was compressed).

    Args:
      fileobj: a binary file object positioned at the first frame.
      path: the file's name, for error messages only.
      check_crc: also verify each record's data crc (the length crc is always verified,
        before the length is used).
    Raises:
      RecordFormatError(path, offset) on truncation, crc mismatch or a damaged gzip stream;
      offsets count bytes of the decompressed stream.
    """
    reader = PieceReader(fileobj, path)
    while not reader.at_end():
        offset = reader.offset
        header = reader.take(_HEADER_SIZE, f"TFRecord header ({_HEADER_SIZE} bytes)")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise RecordFormatError(
                f"corrupt TFRecord header: crc of the length field does not match "
                f"(length field reads {length})", path, offset)
        data = reader.take(length, f"TFRecord of {length} bytes")
        (data_crc,) = _FOOTER.unpack(reader.take(_FOOTER.size, "TFRecord data crc"))
        if check_crc and masked_crc32c(data) != data_crc:
            raise RecordFormatError(f"corrupt TFRecord: data crc mismatch in a record of {length} bytes",
                                    path, offset)
        yield data


def read_tfrecords(path: PathLike, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the records of a local TFRecord file, plain or gzip (by ``.gz`` suffix or magic)."""
    name = os.fspath(path)
    with open_for_read(name) as fileobj:
        yield from iter_tfrecords(fileobj, name, check_crc)
