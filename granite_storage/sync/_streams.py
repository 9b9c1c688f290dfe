"""``SizeLimitedStream``: granite-storage 0.1.0's size-checking file wrapper."""

from __future__ import annotations

import io
from typing import BinaryIO

from granite_storage.streams import DEFAULT_CHUNK_SIZE, check_size_limit


class SizeLimitedStream(io.BufferedIOBase):
    """A read-only binary file that raises ``ContentTooLargeError`` as soon
    as more than ``max_size`` bytes were read from ``stream``.

    ``StorageManager.put_stream`` needs no wrapper (it enforces the policy's
    ``max_size`` itself); this is for code that checked sizes with it in 0.1.0.
    Iteration yields chunks of ``chunk_size`` bytes, ``read()`` reads the rest
    in such chunks (0.1.0 returned only the first one), and closing it closes
    ``stream``.
    """

    def __init__(
        self, stream: BinaryIO, max_size: int | None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        super().__init__()
        self.stream = stream
        self.max_size = max_size
        self.chunk_size = chunk_size
        self.total_read = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return self._count(self.stream.read(size))
        parts = []
        while chunk := self._count(self.stream.read(self.chunk_size)):
            parts.append(chunk)
        return b"".join(parts)

    read1 = read

    def _count(self, chunk: bytes) -> bytes:
        self.total_read += len(chunk)
        check_size_limit(self.total_read, self.max_size)
        return chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.stream.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()

    def __iter__(self) -> SizeLimitedStream:
        return self

    def __next__(self) -> bytes:
        chunk = self.read(self.chunk_size)
        if not chunk:
            raise StopIteration
        return chunk
