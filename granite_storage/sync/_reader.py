"""A sync binary file over an open object of the async core."""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from functools import partial

from granite_storage.contracts import ObjectReader
from granite_storage.sync._portal import Portal


class PortalReader(io.BufferedIOBase):
    """A read-only binary file whose reads pull bytes from an
    :class:`~granite_storage.contracts.ObjectReader` on a portal's loop.

    ``read(n)`` asks the object for ``n`` bytes and returns what it got
    without copying it; after a full read of ``n`` bytes the next ``n`` are
    read ahead on the loop while the caller works, so memory stays bounded
    by twice what the caller reads at once. ``read()`` returns everything
    left. ``peek`` keeps at most one chunk, which makes ``readline`` and line
    iteration work as for any binary file. :meth:`close` closes the object on the loop.
    """

    def __init__(self, portal: Portal, opened: AbstractAsyncContextManager[ObjectReader]) -> None:
        super().__init__()
        self._portal = portal
        self._context: AbstractContextManager[ObjectReader] | None = None
        self._pending = b""
        self._ahead: Future[bytes] | None = None
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

    def _call(self, size: int) -> bytes:
        return self._portal.call(partial(self._reader.read, size))

    def _settle(self) -> None:
        """Wait for the read ahead, if one runs, and keep its bytes."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._pending += ahead.result()  # b"" + data is data, not a copy

    def read(self, size: int | None = -1) -> bytes:
        self._settle()
        pending = self._pending
        if size is None or size < 0:
            self._pending = b""
            return pending + self._call(-1)
        if len(pending) >= size:
            data, self._pending = pending[:size], pending[size:]
        else:
            self._pending = b""
            data = pending + self._call(size - len(pending))
        if size and len(data) == size and not self._pending:
            # Read the next piece of the same size while the caller uses this one.
            self._ahead = self._portal.submit(partial(self._reader.read, size))
        return data

    def read1(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._reader.chunk_size
        return self.read(size)

    def peek(self, size: int = 0, /) -> bytes:
        self._settle()
        if not self._pending:
            self._pending = self._call(max(size, self._reader.chunk_size))
        return self._pending

    def close(self) -> None:
        context, self._context = self._context, None
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None:
                # A read past the end (the caller stopped before it) may have
                # raised, e.g. a checksum mismatch: not the caller's concern.
                with contextlib.suppress(Exception):
                    ahead.result()
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            self._pending = b""
            super().close()
