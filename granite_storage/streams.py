"""Any byte source -> ``AsyncIterator[bytes]``; the async size limiter; hashing.

This module is the one place where sync sources are bridged to async:
blocking reads run in worker threads and in-memory sources are read inline.
:class:`Sha256Digest` and :class:`HashingThread` hash large chunks off the
event loop.
"""

from __future__ import annotations

import inspect
import io
import sys
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeAlias, runtime_checkable

import aiofiles.base
import anyio
import anyio.from_thread
import anyio.to_thread

from granite_storage._concurrency import aclose_quietly, aiter_in_thread
from granite_storage._hashing import HashingThread, Sha256Digest
from granite_storage.errors import ContentTooLargeError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AsyncReadable",
    "BlockingPull",
    "ByteSource",
    "Coalescer",
    "HashingThread",
    "Sha256Digest",
    "SizeLimiter",
    "SyncReadable",
    "blocking_pull",
    "check_size_limit",
    "chunks_of",
    "coalesce",
]

#: Default size of the chunks read from sources and written to backends.
DEFAULT_CHUNK_SIZE = 1024 * 1024


@runtime_checkable
class AsyncReadable(Protocol):
    """Anything with ``async read(n)``: Starlette's ``UploadFile``, aiofiles
    and anyio files."""

    def read(self, size: int = ..., /) -> Awaitable[bytes]: ...


@runtime_checkable
class SyncReadable(Protocol):
    """A sync binary file object; read in worker threads."""

    def read(self, size: int = ..., /) -> bytes: ...


#: Takes the next chunk in a worker thread, blocking; ``None`` at the end.
BlockingPull: TypeAlias = Callable[[], bytes | None]

ByteSource: TypeAlias = (
    bytes
    | bytearray
    | memoryview
    | AsyncReadable
    | SyncReadable
    | AsyncIterable[bytes]
    | Iterable[bytes]
)


def chunks_of(source: ByteSource, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Turn ``source`` into an async iterator of non-empty chunks of at most
    ``chunk_size`` bytes.

    Accepted sources, in the order they are recognised:

    * ``bytes``, ``bytearray``, ``memoryview``: sliced in memory;
    * an object with a ``read`` method, async or sync: read with
      ``read(chunk_size)`` and never iterated (files iterate by lines). Sync
      reads run in a worker thread unless the object is an ``io.BytesIO``.
      An async file that wraps a sync one (an anyio ``AsyncFile``, an
      aiofiles file, a Starlette ``UploadFile``) is read through the file it
      wraps, as a sync file: the same bytes, without a hop to the event loop
      per chunk;
    * an async iterable of bytes;
    * an iterable of bytes: lists and tuples are walked inline, any other
      iterator is advanced in a worker thread (it may block).

    :raises TypeError: for ``str`` or a source that yields text.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if isinstance(source, str):
        raise TypeError("a byte source cannot be str: encode the text first, e.g. text.encode()")
    if isinstance(source, bytes | bytearray | memoryview):
        return _BytesChunks(source, chunk_size)
    source = _wrapped_file(source) or source
    read = getattr(source, "read", None)
    if callable(read):
        if inspect.iscoroutinefunction(read):
            return _from_async_read(read, chunk_size)
        return _SyncReadChunks(read, chunk_size, inline=_in_memory(source))
    if isinstance(source, AsyncIterable):
        return _split(aiter(source), chunk_size)
    if isinstance(source, Iterable):
        if isinstance(source, list | tuple):
            return _split(_from_sequence(source), chunk_size)
        return _split(_from_iterator(iter(source)), chunk_size)
    raise TypeError(
        f"cannot stream from {type(source).__name__}: pass bytes, a binary file, an object "
        "with async read(n), or a (async) iterable of bytes"
    )


def _wrapped_file(source: object) -> SyncReadable | None:
    """The sync file that an async file object reads with worker threads:
    ``AsyncFile.wrapped`` (anyio), the ``_file`` an aiofiles object was
    made with (it has no public name), and an ``UploadFile``'s ``file`` (a
    spooled temporary file; Starlette is only looked for once imported)."""
    wrapped: object = None
    starlette = sys.modules.get("starlette.datastructures")
    if isinstance(source, anyio.AsyncFile):
        wrapped = source.wrapped
    elif isinstance(source, aiofiles.base.AsyncBase):
        wrapped = getattr(source, "_file", None)
    elif starlette is not None and isinstance(source, starlette.UploadFile):
        wrapped = source.file
    return wrapped if isinstance(wrapped, SyncReadable) else None


def _in_memory(file: object) -> bool:
    """Whether reading ``file`` never blocks: an ``io.BytesIO``, or a spooled
    temporary file that has not rolled over to disk (as Starlette tells)."""
    return isinstance(file, io.BytesIO) or (
        isinstance(file, tempfile.SpooledTemporaryFile) and not getattr(file, "_rolled", True)
    )


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(
        f"byte source produced {type(chunk).__name__}, not bytes: "
        "open files in binary mode ('rb') and encode text"
    )


class _BytesChunks:
    """Chunks of an in-memory object (copied once if it is mutable), sliced
    on demand: by the event loop, or by a worker thread through
    :attr:`blocking_pull`. An object that fits in one chunk is not copied."""

    def __init__(self, data: bytes | bytearray | memoryview, chunk_size: int) -> None:
        self._data = data if isinstance(data, bytes) else bytes(data)
        self._chunk_size = chunk_size
        self._offset = 0
        self.blocking_pull: BlockingPull | None = self._pull

    def __aiter__(self) -> _BytesChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = self._pull()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _pull(self) -> bytes | None:
        start, size = self._offset, len(self._data)
        if start >= size:
            return None
        self._offset = min(start + self._chunk_size, size)
        if start == 0 and self._offset == size:
            return self._data
        return self._data[start : self._offset]


async def _from_async_read(
    read: Callable[[int], Awaitable[Any]], chunk_size: int
) -> AsyncIterator[bytes]:
    while chunk := _as_bytes(await read(chunk_size)):
        yield chunk


class _SyncReadChunks:
    """Chunks of a sync binary file: each ``read`` in a worker thread (inline
    for an in-memory file), or all of them from one worker thread through
    :attr:`blocking_pull`."""

    def __init__(self, read: Callable[[int], Any], chunk_size: int, *, inline: bool) -> None:
        self._read = read
        self._chunk_size = chunk_size
        self._inline = inline
        self.blocking_pull: BlockingPull | None = self._pull

    def __aiter__(self) -> _SyncReadChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._inline:
            result = self._read(self._chunk_size)
        else:
            result = await anyio.to_thread.run_sync(self._read, self._chunk_size)
        if inspect.isawaitable(result):  # a read() that is async without being a coroutine function
            result = await result
        chunk = _chunk_or_none(result)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _pull(self) -> bytes | None:
        result = self._read(self._chunk_size)
        if inspect.isawaitable(result):
            result = anyio.from_thread.run(_await, result)
        return _chunk_or_none(result)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _chunk_or_none(result: object) -> bytes | None:
    """The chunk a ``read`` returned, or ``None`` at the end (``b""`` or ``None``)."""
    return (_as_bytes(result) or None) if result is not None else None


async def _from_sequence(chunks: list[Any] | tuple[Any, ...]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield _as_bytes(chunk)


async def _from_iterator(iterator: Any) -> AsyncIterator[bytes]:
    async for chunk in aiter_in_thread(iterator):
        yield _as_bytes(chunk)


async def _split(chunks: AsyncIterator[Any], chunk_size: int) -> AsyncIterator[bytes]:
    try:
        async for raw in chunks:
            chunk = _as_bytes(raw)
            if len(chunk) <= chunk_size:
                if chunk:
                    yield chunk
                continue
            view = memoryview(chunk)
            for start in range(0, len(chunk), chunk_size):
                yield bytes(view[start : start + chunk_size])
    finally:
        await aclose_quietly(chunks)


def blocking_pull(chunks: AsyncIterator[bytes]) -> BlockingPull | None:
    """The blocking twin of ``anext(chunks)``, if ``chunks`` has one: a
    function that a worker thread calls to take the next chunk (``None`` at
    the end), so one thread can copy a whole sync source without a hand-off
    to the event loop per chunk. ``None`` for sources that need the loop
    (async reads, async iterables).

    Sync files (:func:`chunks_of`), :class:`SizeLimiter` and
    :func:`coalesce` pass it on; a backend may use it or iterate ``chunks``
    as usual, but not both at once.
    """
    pull = getattr(chunks, "blocking_pull", None)
    return pull if callable(pull) else None


def coalesce(chunks: AsyncIterator[bytes], chunk_size: int = DEFAULT_CHUNK_SIZE) -> Coalescer:
    """Merge small chunks into chunks of ``chunk_size`` bytes (the last may
    be shorter), so a source that sends many tiny pieces does not cost one
    write, hash or hand-off per piece. Chunks of at least a quarter of
    ``chunk_size`` arriving on an empty buffer pass through uncopied; smaller
    ones are copied once on the way (merging 64 KiB pieces costs less than
    handing each on: measured in ``benchmarks/local_upload.py``).
    """
    return Coalescer(chunks, chunk_size)


class Coalescer:
    """The iterator :func:`coalesce` returns."""

    def __init__(self, chunks: AsyncIterator[bytes], chunk_size: int) -> None:
        self._chunks = chunks
        self._chunk_size = chunk_size
        self._passthrough = max(chunk_size // 4, 1)
        self._pieces: list[bytes] = []  # joined once a chunk's worth is in
        self._buffered = 0
        self._ready: bytes | None = None
        self._ended = False
        self._inner_pull = blocking_pull(chunks)
        self.blocking_pull: BlockingPull | None = self._pull if self._inner_pull else None

    def __aiter__(self) -> Coalescer:
        return self

    async def __anext__(self) -> bytes:
        while (chunk := self._take()) is None:
            if self._ended:
                raise StopAsyncIteration
            self._add(await anext(self._chunks, None))
        return chunk

    def _pull(self) -> bytes | None:
        assert self._inner_pull is not None
        while (chunk := self._take()) is None:
            if self._ended:
                return None
            self._add(self._inner_pull())
        return chunk

    def _add(self, chunk: bytes | None) -> None:
        if chunk is None:
            self._ended = True
        elif not self._pieces and len(chunk) >= self._passthrough:
            self._ready = chunk
        else:
            self._pieces.append(chunk)
            self._buffered += len(chunk)

    def _take(self) -> bytes | None:
        """The next chunk to hand on, if one is complete."""
        if self._ready is not None:
            chunk, self._ready = self._ready, None
            return chunk
        size = self._chunk_size if not self._ended else self._buffered
        if not self._buffered or self._buffered < size:
            return None
        pieces, extra = self._pieces, self._buffered - size
        if extra:  # only the piece that crosses the boundary is cut
            last = pieces[-1]
            pieces[-1] = last[: len(last) - extra]
            self._pieces, self._buffered = [last[len(last) - extra :]], extra
        else:
            self._pieces, self._buffered = [], 0
        return b"".join(pieces)

    async def aclose(self) -> None:
        await aclose_quietly(self._chunks)


def check_size_limit(total: int, max_size: int | None) -> None:
    """The one size check: raise once ``total`` bytes exceed ``max_size``.

    :raises ContentTooLargeError: if ``max_size`` is set and ``total`` is larger.
    """
    if max_size is not None and total > max_size:
        raise ContentTooLargeError(
            f"content is larger than the limit of {max_size} bytes (received {total} bytes so far)",
            max_size=max_size,
        )


class SizeLimiter:
    """Pass chunks through, raising :class:`ContentTooLargeError` as soon as
    more than ``max_size`` bytes went by, whatever the chunking.

    The chunk that passes the limit is never handed on. ``total`` counts the
    bytes seen so far.
    """

    def __init__(self, chunks: AsyncIterator[bytes], max_size: int | None) -> None:
        self._chunks = chunks
        self.max_size = max_size
        self.total = 0
        self._inner_pull = blocking_pull(chunks)
        self.blocking_pull: BlockingPull | None = self._pull if self._inner_pull else None

    def __aiter__(self) -> SizeLimiter:
        return self

    async def __anext__(self) -> bytes:
        return self._count(await anext(self._chunks))

    def _pull(self) -> bytes | None:
        assert self._inner_pull is not None
        chunk = self._inner_pull()
        return None if chunk is None else self._count(chunk)

    def _count(self, chunk: bytes) -> bytes:
        self.total += len(chunk)
        check_size_limit(self.total, self.max_size)
        return chunk

    async def aclose(self) -> None:
        await aclose_quietly(self._chunks)
