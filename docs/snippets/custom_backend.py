"""A complete custom backend: objects kept as lists of chunks, as a chunked store would."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from granite_storage import ObjectNotFoundError, StorageManager, StoragePolicy
from granite_storage.contracts import BytesReader, ObjectInfo, PutResult, StorageBackend
from granite_storage.locations import is_under_prefix
from granite_storage.streams import Sha256Digest


# --8<-- [start:backend]
class ChunkStoreBackend(StorageBackend):
    """Every location a primitive receives was validated by StorageBackend."""

    backend_name = "chunkstore"  # written into every ref's "backend" field

    def __init__(self) -> None:
        self._chunks: dict[str, tuple[bytes, ...]] = {}
        self._written: dict[str, datetime] = {}

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        digest, stored = Sha256Digest(), []
        async for chunk in chunks:  # may raise ContentTooLargeError or be cancelled:
            await digest.aupdate(chunk)  # then nothing below runs and nothing is stored
            stored.append(chunk)
        self._chunks[location], self._written[location] = tuple(stored), datetime.now(UTC)
        return PutResult(size=digest.size, checksum=digest.checksum)

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[BytesReader]:
        if not await self._aexists(location):
            raise ObjectNotFoundError(f"no object at {location!r}", location=location)
        yield BytesReader(b"".join(self._chunks[location])[start:end])

    async def _aexists(self, location: str) -> bool:
        return location in self._written

    async def _adelete(self, location: str) -> None:  # a missing object is not an error
        self._written.pop(location, None)
        self._chunks.pop(location, None)

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        for location, written in list(self._written.items()):
            size = sum(map(len, self._chunks[location]))
            if is_under_prefix(location, prefix):  # "docs" matches "docs/...", not "docs2/..."
                yield ObjectInfo(location, size, written)


# --8<-- [end:backend]


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
