"""The async backend protocol every storage backend implements.

A backend is a subclass of :class:`StorageBackend`. It implements a handful of
primitives on *locations* (``_aopen``, ``_adelete``, ``_aexists``,
``aput_stream``, ``aiter_objects``); the public methods that take refs
validate the location first, so a hostile ref never reaches the backend's
I/O. Readers are :class:`ObjectReader` subclasses that only implement
``_read_chunk``; buffering, iteration and checksum verification are shared.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import anyio

from granite_storage.errors import ChecksumMismatchError, OperationNotSupportedError
from granite_storage.locations import validate_location, validate_prefix
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import DEFAULT_CHUNK_SIZE, Sha256Digest

__all__ = [
    "BatchDeleteResult",
    "BytesReader",
    "ObjectInfo",
    "ObjectReader",
    "PresignedUpload",
    "PutResult",
    "StorageBackend",
]


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a backend learned while writing an object."""

    size: int
    checksum: str
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object found by :meth:`StorageBackend.aiter_objects`."""

    location: str
    size: int
    #: Timezone-aware UTC time of the last write, at the backend's resolution.
    last_modified: datetime


@dataclass(slots=True)
class BatchDeleteResult:
    """The outcome of :meth:`StorageBackend.adelete_many`: what went and what
    failed, with the reason per location. Missing objects count as deleted."""

    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresignedUpload:
    """A presigned request a browser can send to upload one object directly.

    ``method`` is ``"POST"`` (send ``fields`` plus the file as multipart form
    data to ``url``) or ``"PUT"`` (send the body to ``url`` with ``headers``).
    """

    method: str
    url: str
    location: str
    fields: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class ObjectReader(abc.ABC):
    """An open stored object: ``await reader.read(n)`` or ``async for chunk in reader``.

    ``read(n)`` returns exactly ``n`` bytes unless the object ends first;
    ``read()`` returns the rest. With ``verify=True`` the size and sha256 of
    the bytes read are compared with the ref once the end is reached, and
    :class:`~granite_storage.errors.ChecksumMismatchError` is raised on a
    difference.
    """

    def __init__(
        self,
        *,
        size: int | None,
        expected: StoredObjectRef | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        #: The number of bytes this reader will return, when known.
        self.size = size
        self.chunk_size = chunk_size
        self._expected = expected
        self._digest = Sha256Digest() if expected is not None else None
        self._buffer = b""
        self._eof = False

    @abc.abstractmethod
    async def _read_chunk(self, max_bytes: int) -> bytes:
        """Return up to ``max_bytes`` (at least one) or ``b""`` at the end."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the reader holds. Called when the ``async with`` ends."""

    async def _next_chunk(self, max_bytes: int) -> bytes:
        if self._buffer:
            chunk, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
            return chunk
        if self._eof:
            return b""
        raw = await self._read_chunk(max_bytes)
        if self._digest is not None:
            await self._digest.aupdate(raw)
        if not raw:
            self._eof = True
            self._verify()
            return b""
        chunk, self._buffer = raw[:max_bytes], raw[max_bytes:]
        return chunk

    def _verify(self) -> None:
        if self._digest is None or self._expected is None:
            return
        expected, digest = self._expected, self._digest
        if digest.size != expected.size or digest.checksum != expected.checksum:
            raise ChecksumMismatchError(
                f"object {expected.location!r} does not match its ref: expected "
                f"{expected.size} bytes with {expected.checksum}, read {digest.size} bytes "
                f"with {digest.checksum}",
                expected=expected.checksum,
                actual=digest.checksum,
            )

    async def read(self, n: int = -1) -> bytes:
        """Read ``n`` bytes (fewer only at the end), or everything left when ``n < 0``."""
        parts: list[bytes] = []
        remaining = n
        while remaining != 0:
            chunk = await self._next_chunk(self.chunk_size if remaining < 0 else remaining)
            if not chunk:
                break
            parts.append(chunk)
            if remaining > 0:
                remaining -= len(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self._next_chunk(self.chunk_size):
            yield chunk

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


class BytesReader(ObjectReader):
    """A reader over bytes already in memory."""

    def __init__(self, data: bytes, *, expected: StoredObjectRef | None = None) -> None:
        super().__init__(size=len(data), expected=expected)
        self._view = memoryview(data)
        self._pos = 0

    async def _read_chunk(self, max_bytes: int) -> bytes:
        chunk = bytes(self._view[self._pos : self._pos + max_bytes])
        self._pos += len(chunk)
        return chunk


class StorageBackend(abc.ABC):
    """The async protocol of a storage backend.

    Subclasses implement the abstract primitives; everything else has a
    correct default that a backend may override to do better (S3 deletes
    in batches of 1000, for example).
    """

    #: The name written into every ref's ``backend`` field.
    backend_name: str = "custom"
    #: The granularity of :attr:`ObjectInfo.last_modified` (S3 has whole
    #: seconds). The garbage collector widens its age cutoff by this much.
    timestamp_resolution: timedelta = timedelta(0)
    #: How many single deletes :meth:`adelete_many` runs at once by default.
    delete_concurrency: int = 16

    # -- primitives -------------------------------------------------------

    @abc.abstractmethod
    async def aput_stream(
        self,
        *,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str | None = None,
    ) -> PutResult:
        """Store ``chunks`` at location ``key``, all or nothing.

        The object becomes visible only once every chunk was written. If
        ``chunks`` raises (``ContentTooLargeError`` from the size limiter, a
        client that went away), the write fails or the task is cancelled,
        nothing remains at ``key`` and no temporary data is left behind, and
        the original exception propagates.

        :raises ~granite_storage.errors.BackendError: if the backend fails.
        """

    @abc.abstractmethod
    def _aopen(
        self,
        location: str,
        *,
        size: int | None,
        start: int,
        end: int | None,
        expected: StoredObjectRef | None,
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open ``location`` (already validated) for reading bytes ``start``
        to ``end`` (exclusive; ``None`` for the end).

        :raises ~granite_storage.errors.ObjectNotFoundError: if it does not exist.
        """

    @abc.abstractmethod
    async def _adelete(self, location: str) -> None:
        """Delete ``location`` (already validated); no error if it is missing."""

    @abc.abstractmethod
    async def _aexists(self, location: str) -> bool:
        """Whether ``location`` (already validated) exists."""

    @abc.abstractmethod
    def aiter_objects(self, prefix: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every stored object whose location lies under ``prefix`` at a ``/``
        boundary (all objects when ``None``), as bare locations. Never lists
        temporary or incomplete uploads. Order is unspecified."""

    # -- public API on refs ----------------------------------------------

    def aopen(
        self,
        ref: StoredObjectRef,
        *,
        verify: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open the object of ``ref`` for streaming reads.

        :param verify: check size and sha256 against the ref at the end
            (only for whole-object reads).
        :param start: first byte to read.
        :param end: one past the last byte to read; ``None`` reads to the end.
        :raises InvalidLocationError: before any I/O if the location is unsafe.
        :raises ObjectNotFoundError: if the object does not exist.
        """
        location = validate_location(ref.location)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range start={start} end={end}")
        whole = start == 0 and end is None
        return self._aopen(
            location,
            size=ref.size if whole and ref.size else None,
            start=start,
            end=end,
            expected=ref if verify and whole else None,
        )

    async def aget(self, ref: StoredObjectRef, *, verify: bool = False) -> bytes:
        """The whole content of ``ref``'s object. See :meth:`aopen`."""
        async with self.aopen(ref, verify=verify) as reader:
            return await reader.read()

    async def adelete(self, ref: StoredObjectRef) -> None:
        """Delete ``ref``'s object; deleting a missing object is not an error."""
        await self._adelete(validate_location(ref.location))

    async def aexists(self, ref: StoredObjectRef) -> bool:
        """Whether ``ref``'s object exists."""
        return await self._aexists(validate_location(ref.location))

    async def aiter_locations(self, prefix: str | None = None) -> AsyncIterator[str]:
        """The bare location of every object under ``prefix``; see :meth:`aiter_objects`."""
        async for info in self.aiter_objects(validate_prefix(prefix)):
            yield info.location

    async def adelete_many(self, locations: Sequence[str]) -> BatchDeleteResult:
        """Delete many locations; failures are reported per location, not raised.

        The default runs :attr:`delete_concurrency` single deletes at once.
        """
        result = BatchDeleteResult()
        pending = iter(locations)

        async def worker() -> None:
            # A few workers share one iterator: no task per location.
            for location in pending:
                try:
                    await self._adelete(validate_location(location))
                except Exception as exc:  # reported, not raised: one failure must not stop a batch
                    result.failed[location] = f"{type(exc).__name__}: {exc}"
                else:
                    result.deleted.append(location)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.delete_concurrency, len(locations))):
                tg.start_soon(worker)
        return result

    async def acleanup_leftovers(self, *, older_than: datetime, dry_run: bool = True) -> int:
        """Remove incomplete uploads (temporary files, pending multipart
        uploads) started before ``older_than``; return how many there were.
        The default has none to remove."""
        return 0

    async def apresigned_download_url(
        self,
        ref: StoredObjectRef,
        *,
        expires_in: int = 3600,
        content_disposition: str | None = None,
    ) -> str:
        """A URL that downloads ``ref``'s object without credentials.

        :raises ~granite_storage.errors.OperationNotSupportedError: if the
            backend cannot sign URLs (local disk and memory cannot).
        """
        raise OperationNotSupportedError(
            f"backend {self.backend_name!r} cannot presign URLs; stream the object "
            "through your application with aopen() instead"
        )

    async def apresigned_upload(
        self,
        *,
        key: str,
        max_size: int | None,
        content_type: str | None = None,
        expires_in: int = 3600,
    ) -> PresignedUpload:
        """A presigned request for uploading one object straight to ``key``.

        :raises ~granite_storage.errors.OperationNotSupportedError: if the
            backend cannot sign uploads.
        """
        raise OperationNotSupportedError(
            f"backend {self.backend_name!r} cannot presign uploads; upload through "
            "your application with aput_stream() instead"
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and clients. Called by ``StorageManager.aclose``."""
