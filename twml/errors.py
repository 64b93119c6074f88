"""The one exception type that every twml reader and decoder raises on bad bytes."""
from __future__ import annotations

from typing import Optional

__all__ = ["RecordFormatError"]


class RecordFormatError(ValueError):
    """Bytes that are not a valid record, frame or block.

    Raised by the DataRecord decoders and by the TFRecord and block readers for truncated,
    corrupted or random input. ``path`` is the file (None for in-memory bytes) and ``offset``
    the byte offset in it (or in the buffer) where the problem was found.
    """

    def __init__(self, message: str, path: Optional[str] = None, offset: Optional[int] = None):
        self.reason = message
        self.path = path
        self.offset = offset
        where = []
        if path is not None:
            where.append(str(path))
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")

    def __reduce__(self):  # keep path and offset across pickling (Beam ships exceptions)
        return (type(self), (self.reason, self.path, self.offset))
