"""A sync binary file over an open object of the async core."""

from __future__ import annotations

import io
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from functools import partial
from typing import Any

from granite_storage.contracts import ObjectReader
from granite_storage.sync._portal import Portal


class PortalReader(io.RawIOBase):
    """A read-only raw file whose reads pull bytes from an
    :class:`~granite_storage.contracts.ObjectReader` on a portal's loop.

    Each ``readinto`` asks for at most the buffer's size, so memory stays
    bounded by what the caller reads at once. :meth:`close` closes the object
    on the loop. Wrap it in ``io.BufferedReader`` for ``peek``, ``read1`` and
    fast small reads (``StorageManager.open`` does).
    """

    def __init__(self, portal: Portal, opened: AbstractAsyncContextManager[ObjectReader]) -> None:
        super().__init__()
        self._portal = portal
        self._context: AbstractContextManager[ObjectReader] | None = None
        # Entered now, so that a missing object raises from open(), as in 0.1.0.
        context = portal.wrap_async_context_manager(opened)
        self._reader = context.__enter__()
        self._context = context

    #: The object's size in bytes, when the backend reported it.
    @property
    def size(self) -> int | None:
        return self._reader.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.closed:
            raise ValueError("I/O operation on closed file")
        data = self._portal.call(partial(self._reader.read, len(view)))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._portal.call(self._reader.read)

    def close(self) -> None:
        context, self._context = self._context, None
        try:
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            super().close()
