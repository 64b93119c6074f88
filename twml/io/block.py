"""Elephant-bird binary blocks, the container twml's ``BlockFormatDataset`` reads.

A file is a sequence of blocks; each block is the 16-byte marker, a u32 little-endian size of
what follows, and that many bytes of a protobuf ``SerializedBlock``::

    message SerializedBlock { optional int32 version = 1; optional string proto_class_name = 2;
                              repeated bytes proto_blobs = 3; }

with version 1, the record class name, and one blob per record (100 a block by default).
libtwml's reader (BlockFormatReader.cpp) parses the protobuf by hand and needs the fields in
exactly that order with one-byte tags, a class name under 1024 bytes, a size that is positive
as a signed int32; the protobuf runtime writes fields in field-number order, so its bytes fit.
The message class is built at import from a descriptor (no protoc step) in a private pool.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator, List, Optional, Union

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from twml.encode import EncodedRecords
from twml.errors import RecordFormatError
from twml.io.compression import PathLike, PieceReader, RecordFileWriter, open_for_read

__all__ = ["BLOCK_MARKER", "DATA_RECORD_CLASS_NAME", "DEFAULT_RECORDS_PER_BLOCK", "SerializedBlock",
           "encode_block", "BlockWriter", "iter_block_records", "read_block_records"]

BLOCK_MARKER = bytes([0x29, 0xD8, 0xD5, 0x06, 0x58, 0xCD, 0x4C, 0x29,
                      0xB2, 0xBC, 0x57, 0x99, 0x21, 0x71, 0xBD, 0xFF])
DATA_RECORD_CLASS_NAME = "com.twitter.ml.api.DataRecord"
DEFAULT_RECORDS_PER_BLOCK = 100
BLOCK_VERSION = 1
_SIZE = struct.Struct("<I")
_MAX_BLOCK_SIZE = (1 << 31) - 1   # libtwml reads the size as a signed int
_MAX_CLASS_NAME = 1022            # libtwml copies it into char[1024] with a NUL


def _build_serialized_block_class():
    proto = descriptor_pb2.FileDescriptorProto(
        name="twml/io/block_storage.proto", package="com.twitter.data.proto", syntax="proto2")
    message = proto.message_type.add(name="SerializedBlock")
    field = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="version", number=1, label=field.LABEL_OPTIONAL, type=field.TYPE_INT32)
    message.field.add(name="proto_class_name", number=2, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_STRING)
    message.field.add(name="proto_blobs", number=3, label=field.LABEL_REPEATED, type=field.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("com.twitter.data.proto.SerializedBlock"))


SerializedBlock = _build_serialized_block_class()


def encode_block(records: List[bytes], class_name: str = DATA_RECORD_CLASS_NAME) -> bytes:
    """One framed block (marker, u32 LE size, SerializedBlock) holding ``records``."""
    payload = SerializedBlock(version=BLOCK_VERSION, proto_class_name=class_name,
                              proto_blobs=records).SerializeToString()
    if len(payload) > _MAX_BLOCK_SIZE:
        raise ValueError(f"block of {len(records)} records is {len(payload)} bytes; libtwml reads "
                         f"at most {_MAX_BLOCK_SIZE}: use fewer records_per_block")
    return BLOCK_MARKER + _SIZE.pack(len(payload)) + payload


class BlockWriter(RecordFileWriter):
    """Streams records into elephant-bird blocks.

    Args:
      target: a binary file object (left open by ``close``) or a local path (opened with
        ``open_for_write`` and closed by ``close``).
      records_per_block: records in every block but the last (100 is twml's default).
      class_name: the ``proto_class_name`` written in every block.
      compression: for a path only: "gzip", "none", or None/"auto" for "gzip iff .gz suffix".

    ``records``, ``blocks`` and ``bytes_written`` count what was written (bytes before any
    compression); records still waiting for a full block are not written until ``flush``.
    """

    def __init__(self, target: Union[BinaryIO, PathLike], records_per_block: int = DEFAULT_RECORDS_PER_BLOCK,
                 class_name: str = DATA_RECORD_CLASS_NAME, compression: Optional[str] = None):
        if records_per_block < 1:
            raise ValueError(f"records_per_block must be >= 1, got {records_per_block}")
        if not class_name or len(class_name.encode("utf-8")) > _MAX_CLASS_NAME:
            raise ValueError(f"class_name must be 1 to {_MAX_CLASS_NAME} bytes, got {class_name!r}")
        super().__init__(target, compression)
        self.records_per_block = int(records_per_block)
        self.class_name = class_name
        self.records = 0
        self.blocks = 0
        self.bytes_written = 0
        self._pending: List[bytes] = []

    def write(self, record: bytes) -> None:
        """Add one serialized record; a block is written each time ``records_per_block`` are waiting."""
        self._check_open()
        self._pending.append(bytes(record))
        if len(self._pending) >= self.records_per_block:
            self._write_block(self._pending)
            self._pending = []

    def write_records(self, records: EncodedRecords) -> None:
        """Add a whole batch; full blocks are written straight from it."""
        self._check_open()
        items = records.to_list()
        start = 0
        if self._pending:
            start = min(len(items), self.records_per_block - len(self._pending))
            self._pending.extend(items[:start])
            if len(self._pending) < self.records_per_block:
                return
            self._write_block(self._pending)
            self._pending = []
        step = self.records_per_block
        full_end = start + (len(items) - start) // step * step
        for begin in range(start, full_end, step):
            self._write_block(items[begin:begin + step])
        self._pending = items[full_end:]

    def flush(self) -> None:
        """Write the waiting records as a (partial) block and flush the file object."""
        self._check_open()
        if self._pending:
            self._write_block(self._pending)
            self._pending = []
        self._file.flush()

    def _finish(self) -> None:
        self.flush()

    def _write_block(self, records: List[bytes]) -> None:
        block = encode_block(records, self.class_name)
        self._file.write(block)
        self.records += len(records)
        self.blocks += 1
        self.bytes_written += len(block)


def iter_block_records(fileobj: BinaryIO, path: Optional[str] = None,
                       class_name: Optional[str] = DATA_RECORD_CLASS_NAME) -> Iterator[bytes]:
    """Yield the records of a block stream (already decompressed, if it was compressed).

    Args:
      fileobj: a binary file object positioned at a block marker.
      path: the file's name, for error messages only.
      class_name: the ``proto_class_name`` every block must carry; None accepts any.
    Raises:
      RecordFormatError(path, offset) on a missing marker, truncation, an unparsable block,
      a version other than 1 or another class name; offsets count decompressed bytes.
    """
    reader = PieceReader(fileobj, path)
    head_size = len(BLOCK_MARKER) + _SIZE.size
    while not reader.at_end():
        offset = reader.offset
        head = reader.take(head_size, "block header")
        if head[:len(BLOCK_MARKER)] != BLOCK_MARKER:
            raise RecordFormatError(f"no block marker: found {head[:len(BLOCK_MARKER)].hex()}", path, offset)
        (size,) = _SIZE.unpack_from(head, len(BLOCK_MARKER))
        if size > _MAX_BLOCK_SIZE:
            raise RecordFormatError(f"block size {size} is over the {_MAX_BLOCK_SIZE} that libtwml reads",
                                    path, offset)
        payload = reader.take(size, f"block of {size} bytes")
        yield from _block_records(payload, class_name, path, offset)


def _block_records(payload: bytes, class_name: Optional[str], path: Optional[str], offset: int) -> List[bytes]:
    block = SerializedBlock()
    try:
        block.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise RecordFormatError(f"unparsable SerializedBlock: {err}", path, offset) from err
    if block.version != BLOCK_VERSION:
        raise RecordFormatError(f"unsupported block version {block.version} (expected {BLOCK_VERSION})",
                                path, offset)
    if class_name is not None and block.proto_class_name != class_name:
        raise RecordFormatError(f"block holds {block.proto_class_name!r}, expected {class_name!r}",
                                path, offset)
    return list(block.proto_blobs)


def read_block_records(path: PathLike, class_name: Optional[str] = DATA_RECORD_CLASS_NAME) -> Iterator[bytes]:
    """Yield the records of a local block file, plain or gzip (by ``.gz`` suffix or magic)."""
    name = os.fspath(path)
    with open_for_read(name) as fileobj:
        yield from iter_block_records(fileobj, name, class_name)
