"""A complete custom backend: objects kept as lists of chunks, as a chunked store would."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from granite_storage import ObjectNotFoundError, StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.contracts import ObjectInfo, ObjectReader, PutResult, StorageBackend
from granite_storage.locations import is_under_prefix
from granite_storage.streams import Sha256Digest


@dataclass(frozen=True)
class _Blob:
    chunks: tuple[bytes, ...]
    size: int
    last_modified: datetime


class _ChunkReader(ObjectReader):
    """Reads bytes ``start`` to ``end`` of a blob, one stored chunk at a time."""

    def __init__(self, blob: _Blob, *, start: int, end: int | None, **kwargs: object) -> None:
        stop = blob.size if end is None else min(end, blob.size)
        super().__init__(size=max(stop - start, 0), **kwargs)  # type: ignore[arg-type]
        self._chunks = iter(blob.chunks)
        self._skip, self._left = start, max(stop - start, 0)
        self._pending = b""

    async def _read_chunk(self, max_bytes: int) -> bytes:
        while not self._pending and self._left > 0:
            chunk = next(self._chunks)  # a real store would await a network read here
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            self._pending = chunk[skipped:]
        piece = self._pending[: min(max_bytes, self._left)]
        self._pending = self._pending[len(piece) :]
        self._left -= len(piece)
        return piece


class ChunkStoreBackend(StorageBackend):
    backend_name = "chunkstore"  # written into every ref's "backend" field

    def __init__(self) -> None:
        self._blobs: dict[str, _Blob] = {}

    async def aput_stream(
        self, *, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> PutResult:
        digest = Sha256Digest()
        parts: list[bytes] = []
        async for chunk in chunks:  # may raise ContentTooLargeError or be cancelled:
            await digest.aupdate(chunk)  # then nothing below runs and nothing is stored
            parts.append(chunk)
        self._blobs[key] = _Blob(tuple(parts), digest.size, datetime.now(UTC))
        return PutResult(size=digest.size, checksum=digest.checksum)

    @asynccontextmanager
    async def _aopen(
        self,
        location: str,
        *,
        size: int | None,
        start: int,
        end: int | None,
        expected: StoredObjectRef | None,
    ) -> AsyncIterator[ObjectReader]:
        blob = self._blobs.get(location)
        if blob is None:
            raise ObjectNotFoundError(f"no object at {location!r}", location=location)
        yield _ChunkReader(blob, start=start, end=end, expected=expected)

    async def _adelete(self, location: str) -> None:
        self._blobs.pop(location, None)  # a missing object is not an error

    async def _aexists(self, location: str) -> bool:
        return location in self._blobs

    async def aiter_objects(self, prefix: str | None = None) -> AsyncIterator[ObjectInfo]:
        for location, blob in list(self._blobs.items()):
            if is_under_prefix(location, prefix):  # "docs" matches "docs/...", not "docs2/..."
                yield ObjectInfo(location, blob.size, blob.last_modified)


async def main() -> None:
    manager = StorageManager(
        backends={"chunks": ChunkStoreBackend()},
        policies={"docs": StoragePolicy("docs", "chunks", key_prefix="docs")},
    )
    ref = await manager.aput_stream(
        storage_key="docs",
        model_name="document",
        entity_id=1,
        field_name="file",
        stream=[b"hello ", b"chunked ", b"world"],
    )
    assert ref.backend == "chunkstore"
    assert await manager.aget(ref, verify=True) == b"hello chunked world"
    async with manager.aopen(ref, start=6, end=13) as reader:
        assert await reader.read() == b"chunked"
    print("custom backend: ok")


if __name__ == "__main__":
    asyncio.run(main())
