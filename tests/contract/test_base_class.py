"""What StorageBackend does once for every backend: batching, the error edge,
listing filters and argument checks, seen through a small backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime

import anyio
import pytest

from granite_storage import StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import BatchDeleteResult, ObjectInfo
from granite_storage.errors import BackendError, OperationNotSupportedError


class StoreDown(Exception):
    """A foreign error, as a store's client library would raise."""


@contextmanager
def _store_errors(action: str, location: str | None) -> Iterator[None]:
    try:
        yield
    except StoreDown as exc:
        raise BackendError(f"could not {action} {location}") from exc


class Batching(MemoryStorageBackend):
    delete_batch_size = 3
    delete_concurrency = 2

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.in_flight = self.max_in_flight = 0
        self.down = False

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        return _store_errors(action, location)

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        self.batches.append(list(locations))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.01)
            if "bad/batch" in locations:
                raise StoreDown("the whole request failed")
            return await super()._adelete_batch(locations)
        finally:
            self.in_flight -= 1

    async def _aexists(self, location: str) -> bool:
        if self.down:
            raise StoreDown
        return await super()._aexists(location)

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        yield ObjectInfo("folder/", 0, datetime.now(UTC))  # a console's folder marker
        async for info in super()._aiter_objects(prefix):
            yield info
        if self.down:
            raise StoreDown


async def _put(backend: MemoryStorageBackend, location: str) -> StoredObjectRef:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    result = await backend.aput_stream(key=location, chunks=chunks())
    return StoredObjectRef("docs", "memory", location, result.size, result.checksum)


async def test_deletions_are_cut_into_batches_run_a_few_at_once() -> None:
    backend = Batching()
    locations = [f"docs/{i}" for i in range(8)]
    for location in locations:
        await _put(backend, location)
    result = await backend.adelete_many([*locations, "docs/0", "../escape", "bad/batch"])
    assert sorted(len(batch) for batch in backend.batches) == [3, 3, 3]  # 9 distinct, valid
    assert backend.max_in_flight == 2
    assert "InvalidLocationError" in result.failed["../escape"]
    failed_batch = next(batch for batch in backend.batches if "bad/batch" in batch)
    assert set(result.failed) == {"../escape", *failed_batch}
    assert all("BackendError: could not delete 3 objects" in result.failed[x] for x in failed_batch)
    assert sorted(result.deleted) == sorted(set(locations) - set(failed_batch))


async def test_foreign_errors_are_translated_at_the_backend_edge() -> None:
    backend = Batching()
    ref = await _put(backend, "docs/a")
    backend.down = True
    with pytest.raises(BackendError, match="could not check docs/a") as info:
        await backend.aexists(ref)
    assert isinstance(info.value.__cause__, StoreDown)
    with pytest.raises(BackendError, match="could not list docs"):
        [x async for x in backend.aiter_locations("docs")]


async def test_listings_skip_keys_that_are_not_locations() -> None:
    backend = Batching()
    await _put(backend, "docs/a")
    assert [x async for x in backend.aiter_locations()] == ["docs/a"]


async def test_leftover_clean_up_needs_an_aware_time() -> None:
    backend = MemoryStorageBackend()
    with pytest.raises(ValueError, match="aware datetime"):
        await backend.acleanup_leftovers(older_than=datetime(2030, 1, 1))
    assert await backend.acleanup_leftovers(older_than=datetime(2030, 1, 1, tzinfo=UTC)) == 0


async def test_presign_arguments_are_checked_before_the_backend_is_asked() -> None:
    backend = MemoryStorageBackend()
    ref = StoredObjectRef("docs", "memory", "docs/a", 1, "sha256:00")
    for expires_in in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expires_in"):
            await backend.apresigned_download_url(ref, expires_in=expires_in)
        with pytest.raises(ValueError, match="expires_in"):
            await backend.apresigned_upload(key="docs/a", max_size=None, expires_in=expires_in)
    with pytest.raises(OperationNotSupportedError, match="aopen"):
        await backend.apresigned_download_url(ref)
    with pytest.raises(OperationNotSupportedError, match="aput_stream"):
        await backend.apresigned_upload(key="docs/a", max_size=None)


def test_the_refusal_names_the_primitive_to_implement() -> None:
    with pytest.raises(
        TypeError, match=r"overrides StorageBackend\.adelete_many\(\).*_adelete_batch"
    ):

        class Sneaky(MemoryStorageBackend):
            async def adelete_many(self, locations: Sequence[str]) -> BatchDeleteResult:
                raise NotImplementedError

    class Unchecked:
        async def aexists(self, ref: StoredObjectRef) -> bool:
            return True

    with pytest.raises(TypeError, match=r"StorageBackend\.aexists\(\).*implement _aexists"):

        class ThroughAMixin(Unchecked, MemoryStorageBackend):
            pass
