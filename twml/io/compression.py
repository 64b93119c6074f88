"""Local files with optional gzip, and bounded reads from (possibly compressed) record streams.

The container writers take any binary file object (the Beam side hands them files opened by
Beam's FileSystems, which may compress by itself) or a local path; ``RecordFileWriter`` is what
they share (the target, closing, the context manager), ``open_for_*`` are for local paths only.
``PieceReader`` (over ``read_exactly``) is what both readers use, so that a length field cannot
make them allocate more than the input actually holds, and so that gzip errors surface as
RecordFormatError.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import BinaryIO, Optional, Self, Union

from twml.errors import RecordFormatError

__all__ = ["GZIP", "NONE", "GZIP_MAGIC", "infer_compression", "open_for_write", "open_for_read",
           "RecordFileWriter", "read_exactly", "read_up_to", "PieceReader"]

GZIP = "gzip"
NONE = "none"
GZIP_MAGIC = b"\x1f\x8b"
# Fixed gzip header fields (mtime 0) make the same records give the same file bytes.
DEFAULT_GZIP_LEVEL = 6

PathLike = Union[str, "os.PathLike[str]"]

# First read of a record body; later reads double, so a length field claiming far more than the
# input holds costs at most about twice what was really there.
_FIRST_CHUNK = 1 << 16
# What zlib/gzip raise on a damaged stream (EOFError: "Compressed file ended before ...").
_STREAM_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError)


def infer_compression(path: PathLike, compression: Optional[str] = None) -> str:
    """``compression`` normalised to "gzip" / "none"; None or "auto" means "gzip" iff path ends in .gz."""
    if compression in (None, "auto"):
        return GZIP if os.fspath(path).endswith(".gz") else NONE
    value = compression.lower()
    if value in ("gzip", "gz"):
        return GZIP
    if value in ("none", "", "uncompressed"):
        return NONE
    raise ValueError(f"unknown compression {compression!r}; expected 'gzip', 'none' or 'auto'")


def open_for_write(path: PathLike, compression: Optional[str] = None,
                   level: int = DEFAULT_GZIP_LEVEL) -> BinaryIO:
    """Open a local file for writing records, gzip-compressed when asked (or when path ends in .gz).

    Args:
      path: the file to create (truncated if it exists).
      compression: "gzip", "none", or None/"auto" to decide by the ``.gz`` suffix.
      level: gzip compression level (6 is zlib's default and what TF writes).
    """
    if infer_compression(path, compression) == GZIP:
        return gzip.GzipFile(filename=os.fspath(path), mode="wb", compresslevel=level, mtime=0)
    return open(path, "wb")


def open_for_read(path: PathLike) -> BinaryIO:
    """Open a local record file for reading; gzip is recognised by a ``.gz`` suffix or its magic bytes."""
    path = os.fspath(path)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if path.endswith(".gz") or magic == GZIP_MAGIC:
        return gzip.GzipFile(filename=path, mode="rb")
    return open(path, "rb")


class RecordFileWriter:
    """What the container writers share: where they write, closing, and the context manager.

    Args:
      target: a binary file object (left open by ``close``, only flushed) or a local path
        (opened with ``open_for_write`` and closed by ``close``).
      compression: for a path only: "gzip", "none", or None/"auto" for "gzip iff .gz suffix".

    Subclasses write to ``self._file``, call ``_check_open`` before writing, and put what must
    reach the file before it is closed in ``_finish``.
    """

    def __init__(self, target: Union[BinaryIO, PathLike], compression: Optional[str] = None):
        if isinstance(target, (str, os.PathLike)):
            self._file = open_for_write(target, compression)
            self._owns_file = True
        else:
            if compression not in (None, "auto", "none"):
                raise ValueError("compression applies to paths only; wrap the file object yourself")
            self._file = target
            self._owns_file = False
        self._closed = False

    def _finish(self) -> None:
        """Write what is still held; called once, by ``close``, while the file is open."""

    def close(self) -> None:
        """Finish; close the file if this writer opened it, else flush it. Idempotent."""
        if self._closed:
            return
        self._finish()
        self._closed = True
        if self._owns_file:
            self._file.close()
        else:
            self._file.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_exactly(fileobj: BinaryIO, size: int, path: Optional[str], offset: int, what: str) -> bytes:
    """Read ``size`` bytes, or raise RecordFormatError if the stream ends first.

    Reads grow geometrically from 64 KiB, so a hostile length field costs memory in proportion
    to the bytes actually present, never to the number it claims. ``offset`` (where the read
    starts) and ``what`` go into the error message. Returns b"" only when ``size`` is 0.
    """
    if size <= _FIRST_CHUNK:
        data = read_up_to(fileobj, size, path, offset)
        if len(data) != size:
            raise RecordFormatError(f"truncated {what}: expected {size} bytes, found {len(data)}",
                                    path, offset)
        return data
    chunks = []
    have = 0
    chunk = _FIRST_CHUNK
    while have < size:
        part = read_up_to(fileobj, min(chunk, size - have), path, offset + have)
        if not part:
            raise RecordFormatError(f"truncated {what}: expected {size} bytes, found {have}",
                                    path, offset)
        chunks.append(part)
        have += len(part)
        chunk = max(chunk, have)
    return b"".join(chunks)


def read_up_to(fileobj: BinaryIO, size: int, path: Optional[str], offset: int) -> bytes:
    """Up to ``size`` bytes (fewer only at end of input); decompression failures -> RecordFormatError."""
    try:
        data = fileobj.read(size)
    except _STREAM_ERRORS as err:
        raise RecordFormatError(f"corrupt compressed stream: {err}", path, offset) from err
    if data is None:  # a non-blocking raw stream with nothing ready; files never do this
        raise RecordFormatError("stream returned no data (non-blocking file object?)", path, offset)
    # A short read from a buffered or gzip file means end of input; loop for raw streams.
    while 0 < len(data) < size:
        try:
            more = fileobj.read(size - len(data))
        except _STREAM_ERRORS as err:
            raise RecordFormatError(f"corrupt compressed stream: {err}", path,
                                    offset + len(data)) from err
        if not more:
            break
        data += more
    return bytes(data)


class PieceReader:
    """Hands out exact-size pieces of a stream, reading it 64 KiB at a time.

    Args:
      fileobj: a binary file object (plain or decompressing).
      path: the file's name, for error messages only.

    Small pieces (frame headers, typical records) come out of one buffered read instead of a
    read call each; a piece larger than the buffer is read with ``read_exactly``. ``offset``
    is the stream position of the next piece.
    """

    def __init__(self, fileobj: BinaryIO, path: Optional[str] = None):
        self.fileobj = fileobj
        self.path = path
        self._buffer = b""
        self._pos = 0
        self._base = 0   # stream offset of _buffer[0]

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def at_end(self) -> bool:
        """True at a clean end of the stream (nothing left at all)."""
        if self._pos < len(self._buffer):
            return False
        self._refill(b"")
        return not self._buffer

    def take(self, size: int, what: str, offset: Optional[int] = None) -> bytes:
        """The next ``size`` bytes; RecordFormatError naming ``what`` (at ``offset``, default the
        piece's start) when the stream ends first."""
        start = self.offset
        pos = self._pos
        if pos + size <= len(self._buffer):
            self._pos = pos + size
            return self._buffer[pos:pos + size]
        head = self._buffer[pos:]
        if size - len(head) <= _FIRST_CHUNK:
            self._refill(head)
            if len(self._buffer) < size:
                raise RecordFormatError(f"truncated {what}: expected {size} bytes, found {len(self._buffer)}",
                                        self.path, start if offset is None else offset)
            self._pos = size
            return self._buffer[:size]
        self._base += len(self._buffer)
        self._buffer, self._pos = b"", 0
        try:
            rest = read_exactly(self.fileobj, size - len(head), self.path, self._base, what)
        except RecordFormatError as err:
            if not err.reason.startswith("truncated"):
                raise
            # name where the piece starts, not where its missing tail would have been
            raise RecordFormatError(f"truncated {what}: the stream ends first", self.path,
                                    start if offset is None else offset) from None
        self._base += len(rest)
        return head + rest

    def _refill(self, head: bytes) -> None:
        """Buffer = ``head`` (the unread tail) + up to 64 KiB more of the stream."""
        self._base += len(self._buffer) - len(head)
        more = read_up_to(self.fileobj, _FIRST_CHUNK, self.path, self._base + len(head))
        self._buffer = head + more if head else more
        self._pos = 0
