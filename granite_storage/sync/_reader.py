"""A sync binary file over an open object of the async core."""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from functools import partial

from granite_storage.contracts import ObjectReader
from granite_storage.sync._portal import Portal

#: Pieces read ahead of the caller, at most.
_AHEAD = 2


class PortalReader(io.BufferedIOBase):
    """A read-only binary file whose reads pull bytes from an
    :class:`~granite_storage.contracts.ObjectReader` on a portal's loop.

    From the first ``read(n)`` on, a task on the loop reads the object in
    pieces of ``n`` bytes, at most two pieces ahead of the caller, so the
    hand-over between threads overlaps the reading, and memory stays bounded
    by three times what the caller reads at once. A piece is handed over
    uncopied when the caller reads the same size again. ``read()`` returns
    everything left; ``peek`` makes ``readline`` and line iteration work as
    for any binary file. :meth:`close` stops the task and closes the object
    on the loop.
    """

    def __init__(self, portal: Portal, opened: AbstractAsyncContextManager[ObjectReader]) -> None:
        super().__init__()
        self._portal = portal
        self._context: AbstractContextManager[ObjectReader] | None = None
        self._pending = b""
        self._pieces: queue.SimpleQueue[bytes | Exception] | None = None
        self._room = asyncio.Semaphore(_AHEAD)
        self._producer: asyncio.Task[None] | None = None
        self._ended = False
        # Entered now, so that a missing object raises from open(), as in 0.1.0.
        context = portal.wrap_async_context_manager(opened)
        self._reader = context.__enter__()
        self._context = context

    @property
    def size(self) -> int | None:
        """The object's size in bytes, when the backend reported it."""
        return self._reader.size

    def readable(self) -> bool:
        return True

    def _next_piece(self, size: int) -> bytes:
        """The next piece read ahead (``b""`` at the end); the first call starts
        the reading, in pieces of ``size`` bytes."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._ended:
            return b""
        if self._pieces is None:
            self._pieces = queue.SimpleQueue()
            start = partial(_start, self._reader, size, self._pieces, self._room)
            self._producer = self._portal.call(start)
        piece = self._pieces.get()  # taken in this thread: no round trip to the loop
        self._portal.call_soon(self._room.release)
        if isinstance(piece, Exception):
            self._ended = True
            raise piece
        self._ended = not piece
        return piece

    def read(self, size: int | None = -1) -> bytes:
        pending = self._pending
        if size is not None and 0 <= size <= len(pending):
            data, self._pending = pending[:size], pending[size:]
            return data
        self._pending = b""
        if not pending and size is not None and size > 0:
            piece = self._next_piece(size)
            if len(piece) == size or not piece:
                return piece  # the usual case: no copy
            pending = piece
        parts = [pending]
        have = len(pending)
        while (size is None or size < 0 or have < size) and (
            piece := self._next_piece(size if size and size > 0 else self._reader.chunk_size)
        ):
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        if size is None or size < 0 or have <= size:
            return data
        self._pending = data[size:]
        return data[:size]

    def read1(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._reader.chunk_size
        return self.read(size)

    def peek(self, size: int = 0, /) -> bytes:
        if not self._pending:
            self._pending = self._next_piece(max(size, self._reader.chunk_size))
        return self._pending

    def close(self) -> None:
        context, self._context = self._context, None
        producer, self._producer = self._producer, None
        try:
            if producer is not None:
                self._portal.call(partial(_stop, producer))
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            self._pending = b""
            super().close()


async def _start(
    reader: ObjectReader,
    size: int,
    pieces: queue.SimpleQueue[bytes | Exception],
    room: asyncio.Semaphore,
) -> asyncio.Task[None]:
    return asyncio.create_task(_produce(reader, size or reader.chunk_size, pieces, room))


async def _produce(
    reader: ObjectReader,
    size: int,
    pieces: queue.SimpleQueue[bytes | Exception],
    room: asyncio.Semaphore,
) -> None:
    """Put ``size``-byte pieces into ``pieces``, while there is ``room``, until
    the end (``b""``) or an error (handed over in place of the next piece)."""
    try:
        while True:
            await room.acquire()
            piece = await reader.read(size)
            pieces.put(piece)
            if not piece:
                return
    except Exception as exc:
        pieces.put(exc)


async def _stop(producer: asyncio.Task[None]) -> None:
    producer.cancel()
    # A read past where the caller stopped may have failed (a checksum
    # mismatch at the end, say): not the caller's concern.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await producer
