"""A bounded pipe from the task reading a request body into the task storing it.

The task that reads the request pushes bytes with :meth:`ObjectPipe.write`;
a second task runs the store function (``StorageManager.aput_stream``, or a
model's ``aset_content_from_stream``) over the other end of a bounded anyio
memory object stream. Reading the network and writing the backend overlap,
memory stays at a few chunks, and a slow backend slows the reader down
(``send`` waits while the stream is full): backpressure all the way to the
client's TCP window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from granite_storage.refs import StoredObjectRef
from granite_storage.streams import check_size_limit
from granite_storage.validation import HEAD_SIZE

# Chunks queued between the two tasks, on top of the one being gathered and
# the one the backend is writing: memory stays at about (2 + this) chunks.
_QUEUED_CHUNKS = 1


class UploadStore(Protocol):
    """Stores an upload: reads ``stream`` to its end and returns the new ref.

    ``StoredContentMixin.aset_content_from_stream`` (bound to a model
    instance) fits, and so does any ``async def store(stream, *, filename,
    content_type)`` around ``StorageManager.aput_stream``. If iterating
    ``stream`` raises, the store must let the error propagate and keep
    nothing (``aput_stream`` does both).
    """

    def __call__(
        self,
        stream: AsyncIterator[bytes],
        /,
        *,
        filename: str | None,
        content_type: str | None,
    ) -> Awaitable[StoredObjectRef]: ...


class ObjectPipe:
    """One object being stored from bytes that another task pushes in.

    :param store: what stores the bytes.
    :param max_size: the upload limit. The manager enforces its policy's
        limit too; checking here as well refuses an oversized body the moment
        it passes the limit, not once a whole chunk has been gathered.
    :param chunk_size: the size of the chunks handed to ``store``.
    """

    def __init__(self, store: UploadStore, *, max_size: int | None, chunk_size: int) -> None:
        self._store_fn = store
        self._max_size = max_size
        self._chunk_size = chunk_size
        self._total = 0
        self._send, self._receive = anyio.create_memory_object_stream[bytes](_QUEUED_CHUNKS)
        self._pending = bytearray()
        self._task_group: TaskGroup | None = None
        self.started = False
        self.finished = False
        #: The stored object's ref, once ``store`` returned.
        self.ref: StoredObjectRef | None = None
        #: What ``store`` raised (``ContentTooLargeError``, a backend error).
        self.error: Exception | None = None

    def start(self, *, filename: str | None, content_type: str | None) -> None:
        """Start ``store`` in a task; call it from inside :meth:`arun`."""
        if self._task_group is None:
            raise RuntimeError("ObjectPipe.start() must be called from inside arun()")
        self.started = True
        self._task_group.start_soon(self._store, filename, content_type)

    async def _store(self, filename: str | None, content_type: str | None) -> None:
        assert self._task_group is not None
        try:
            async with self._receive:
                self.ref = await self._store_fn(
                    self._chunks(), filename=filename, content_type=content_type
                )
        except Exception as exc:  # handed to arun(), never lost in an exception group
            self.error = exc
            self._task_group.cancel_scope.cancel()  # stop reading the request at once

    async def _chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._receive:
            yield chunk

    async def write(self, data: bytes) -> None:
        """Queue ``data``; waits while the store is behind. Chunks of
        ``chunk_size`` are handed on (the first one only as large as the head
        the manager checks), so small network reads do not turn into many
        small backend writes.

        :raises ContentTooLargeError: once more than ``max_size`` bytes came.
        """
        first = self._total == len(self._pending)  # nothing handed on yet
        self._total += len(data)
        check_size_limit(self._total, self._max_size)
        self._pending += data
        # The first chunk is the head the manager checks (type, validators):
        # handing it on early lets a refused upload be answered after it.
        size = min(HEAD_SIZE, self._chunk_size) if first else self._chunk_size
        while len(self._pending) >= size:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            await self._send.send(chunk)
            size = self._chunk_size

    async def finish(self) -> None:
        """Hand on the rest and end the stream: the object is complete.

        Call it only once the whole request was read and found valid; on any
        error, let :meth:`arun` cancel the store instead, and nothing is kept.
        """
        self.finished = True
        if self._pending:
            await self._send.send(bytes(self._pending))
            self._pending.clear()
        await self._send.aclose()

    async def arun(self, produce: Callable[[], Awaitable[None]]) -> StoredObjectRef:
        """Run ``produce`` (which reads the body into this pipe and ends with
        :meth:`finish`) next to the store task; return the stored object's ref.

        Errors are raised as themselves, never wrapped in an exception group:
        the store's error first (it is the cause when both fail), else the
        reader's. Either way the store is cancelled before the end of the
        stream, so it keeps nothing.

        :raises RuntimeError: if ``produce`` returned without finishing the pipe.
        """
        produce_error: Exception | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                try:
                    await produce()
                    if not (self.started and self.finished):
                        raise RuntimeError("the request body was read without storing an object")
                except Exception as exc:
                    produce_error = exc
                    task_group.cancel_scope.cancel()
        finally:
            self._send.close()
            self._receive.close()
        if self.error is not None:
            raise self.error
        if produce_error is not None:
            raise produce_error
        if self.ref is None:  # pragma: no cover - the store returned a ref or raised
            raise RuntimeError("the upload was not stored")
        return self.ref
