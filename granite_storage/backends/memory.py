"""An in-process backend with the same behaviour as the others: for tests,
fixtures and examples."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from granite_storage._util import DEFAULT_BATCH
from granite_storage.contracts import (
    BytesReader,
    ObjectInfo,
    ObjectReader,
    PutResult,
    StorageBackend,
)
from granite_storage.errors import ObjectNotFoundError
from granite_storage.locations import is_under_prefix
from granite_storage.streams import Sha256Digest

__all__ = ["MemoryStorageBackend"]


@dataclass(frozen=True, slots=True)
class _Entry:
    data: bytes
    last_modified: datetime


class MemoryStorageBackend(StorageBackend):
    """Objects kept in a dict, with atomic puts, listings and timestamps.

    :param clock: returns the current UTC time; tests pass their own to age
        objects without sleeping.
    """

    backend_name = "memory"
    delete_batch_size = DEFAULT_BATCH  # no I/O: a batch deletes one after another

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._objects: dict[str, _Entry] = {}
        self._clock = clock or (lambda: datetime.now(UTC))

    def __len__(self) -> int:
        return len(self._objects)

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        data = b"".join([chunk async for chunk in chunks])
        digest = Sha256Digest()
        await digest.aupdate(data)
        # Only a complete upload becomes visible: nothing was stored before this line.
        self._objects[location] = _Entry(data, self._clock())
        return PutResult(size=digest.size, checksum=digest.checksum)

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[ObjectReader]:
        entry = self._objects.get(location)
        if entry is None:
            raise ObjectNotFoundError(f"no object at {location!r}", location=location)
        yield BytesReader(entry.data[start:end])

    async def _adelete(self, location: str) -> None:
        self._objects.pop(location, None)

    async def _aexists(self, location: str) -> bool:
        return location in self._objects

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        for location, entry in list(self._objects.items()):
            if is_under_prefix(location, prefix):
                yield ObjectInfo(location, len(entry.data), entry.last_modified)
