"""What a backend trades in: the results of its calls, and readers.

Re-exported by :mod:`granite_storage.contracts`, where users import them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from granite_storage.errors import ChecksumMismatchError
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import DEFAULT_CHUNK_SIZE, Sha256Digest


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


InUse = Callable[[list[str]], Awaitable[Collection[str]]]
"""Given target locations of incomplete uploads, return those still in use
(the object ledger holds their intent): ``acleanup_leftovers`` keeps them."""


async def none_in_use(locations: list[str]) -> Collection[str]:
    """The :data:`InUse` hook that keeps nothing."""
    return ()


@dataclass(frozen=True, slots=True)
class UploadedPart:
    """One part of a multipart upload as the store received it."""

    part_number: int
    size: int
    etag: str


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
        self._expected: StoredObjectRef | None = None
        self._digest: Sha256Digest | None = None
        self._buffer = b""
        self._eof = False
        if expected is not None:
            self._expect(expected)

    def _expect(self, ref: StoredObjectRef) -> None:
        # Compare size and sha256 with ``ref`` once the end is reached.
        self._expected, self._digest = ref, Sha256Digest()

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

    async def __aexit__(self, *exc_info: object) -> None:
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
