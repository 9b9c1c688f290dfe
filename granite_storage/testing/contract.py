"""The backend contract suite, exported so that any backend can run it.

Subclass :class:`BackendContractTests` in your test suite and provide a
``backend`` fixture that yields a fresh, empty backend::

    import pytest
    from granite_storage.testing.contract import BackendContractTests

    class TestMyBackend(BackendContractTests):
        @pytest.fixture
        async def backend(self):
            backend = MyBackend(...)
            yield backend
            await backend.aclose()

The tests are async and need an async pytest plugin (pytest-asyncio in auto
mode, or anyio's plugin). granite_storage runs the same class against its
memory, local and S3 backends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from granite_storage import (
    ChecksumMismatchError,
    ContentTooLargeError,
    InvalidLocationError,
    ObjectNotFoundError,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
)
from granite_storage.contracts import CHECKED_METHODS, StorageBackend

__all__ = ["MAX_SIZE", "BackendContractTests"]

#: The ``max_size`` of the ``docs`` policy the suite writes through.
MAX_SIZE = 64 * 1024
_FAR_FUTURE = datetime.now(UTC) + timedelta(days=365)
_HOSTILE = [
    "../outside",
    "docs/../../etc/passwd",
    "/etc/passwd",
    "docs/a\x00b",
    "docs//x",
    "docs\\..\\x",
]
_PRIMITIVES = ["_aput", "_aopen", "_adelete", "_adelete_batch", "_aexists", "_aiter_objects"]
_PRIMITIVES += ["_apresign_download", "_apresign_upload"]


def _record_primitive_calls(backend: StorageBackend) -> list[str]:
    """Record (on this instance) the name of every primitive called from now on."""
    calls: list[str] = []

    def recording(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return method(*args, **kwargs)

        return record

    for name in _PRIMITIVES:
        setattr(backend, name, recording(name, getattr(backend, name)))
    return calls


async def _never() -> AsyncIterator[bytes]:
    raise AssertionError("the chunks of a refused upload were read")  # pragma: no cover
    yield b""  # pragma: no cover


async def _put(manager: StorageManager, content: bytes, **kwargs: object) -> StoredObjectRef:
    return await manager.aput_bytes(
        storage_key=str(kwargs.pop("storage_key", "docs")),
        model_name="document",
        entity_id=kwargs.pop("entity_id", 1),
        field_name="file",
        content=content,
        original_filename=kwargs.pop("original_filename", "report.pdf"),  # type: ignore[arg-type]
    )


async def _all_locations(backend: StorageBackend) -> list[str]:
    return sorted([location async for location in backend.aiter_locations()])


async def _assert_nothing_left(backend: StorageBackend) -> None:
    assert await _all_locations(backend) == []
    assert await backend.acleanup_leftovers(older_than=_FAR_FUTURE, dry_run=True) == 0


class BackendContractTests:
    """Behaviour every :class:`~granite_storage.contracts.StorageBackend` promises.

    Requires a ``backend`` fixture yielding a fresh, empty backend. The suite
    writes through a manager with two policies on it: ``docs`` (prefix
    ``docs``, ``max_size`` :data:`MAX_SIZE`) and ``docs2`` (prefix ``docs2``).
    """

    @pytest.fixture
    async def manager(self, backend: StorageBackend) -> AsyncIterator[StorageManager]:
        async with StorageManager(
            backends={"main": backend},
            policies={
                "docs": StoragePolicy("docs", "main", max_size=MAX_SIZE, key_prefix="docs"),
                "docs2": StoragePolicy("docs2", "main", key_prefix="docs2"),
            },
        ) as manager:
            yield manager

    async def test_round_trip(self, manager: StorageManager) -> None:
        content = b"%PDF-1.7\n" + os.urandom(3000)  # the type is detected from the bytes
        ref = await _put(manager, content)
        assert ref.size == len(content)
        assert ref.checksum == "sha256:" + hashlib.sha256(content).hexdigest()
        assert ref.storage_key == "docs"
        assert ref.backend == manager.backends["main"].backend_name
        assert ref.location.startswith("docs/document/1/file/") and ref.location.endswith(".pdf")
        assert ref.content_type == "application/pdf"
        assert await manager.aget(ref) == content
        assert await manager.aget(ref, verify=True) == content
        assert await manager.aexists(ref)

    async def test_empty_object(self, manager: StorageManager) -> None:
        ref = await _put(manager, b"")
        assert ref.size == 0
        assert ref.checksum == "sha256:" + hashlib.sha256(b"").hexdigest()
        assert await manager.aget(ref, verify=True) == b""
        async with manager.aopen(ref) as reader:
            assert [chunk async for chunk in reader] == []

    async def test_exact_limit_is_accepted(self, manager: StorageManager) -> None:
        content = os.urandom(MAX_SIZE)
        ref = await manager.aput_stream(
            storage_key="docs",
            model_name="m",
            entity_id=1,
            field_name="f",
            stream=[content[:1000], content[1000:]],
        )
        assert ref.size == MAX_SIZE
        assert await manager.aget(ref, verify=True) == content

    @pytest.mark.parametrize("chunking", [1, 7, 4096, MAX_SIZE + 1])
    async def test_one_byte_over_the_limit_leaves_nothing(
        self, manager: StorageManager, backend: StorageBackend, chunking: int
    ) -> None:
        content = os.urandom(MAX_SIZE + 1)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(content), chunking):
                yield content[start : start + chunking]

        with pytest.raises(ContentTooLargeError) as info:
            await manager.aput_stream(
                storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=chunks()
            )
        assert info.value.max_size == MAX_SIZE
        assert info.value.status_code == 413
        await _assert_nothing_left(backend)

    async def test_oversized_bytes_are_refused_before_any_io(
        self, manager: StorageManager, backend: StorageBackend
    ) -> None:
        with pytest.raises(ContentTooLargeError):
            await _put(manager, b"x" * (MAX_SIZE + 1))
        await _assert_nothing_left(backend)

    async def test_limit_stops_reading_the_source(self, manager: StorageManager) -> None:
        pulled = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 1
                yield b"x" * 1024

        with pytest.raises(ContentTooLargeError):
            await manager.aput_stream(
                storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=endless()
            )
        assert pulled == MAX_SIZE // 1024 + 1

    async def test_cancellation_mid_stream_leaves_nothing(
        self, manager: StorageManager, backend: StorageBackend
    ) -> None:
        halfway = anyio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield os.urandom(4096)
            halfway.set()
            await anyio.sleep_forever()
            yield b""  # pragma: no cover

        async def upload() -> None:
            await manager.aput_stream(
                storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=stalls()
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            await halfway.wait()
            tg.cancel_scope.cancel()
        await _assert_nothing_left(backend)

    async def test_failing_source_leaves_nothing(
        self, manager: StorageManager, backend: StorageBackend
    ) -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield b"x" * 5000
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError):
            await manager.aput_stream(
                storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=broken()
            )
        await _assert_nothing_left(backend)

    async def test_every_write_gets_a_unique_location(self, manager: StorageManager) -> None:
        first = await _put(manager, b"same")
        second = await _put(manager, b"same")
        assert first.location != second.location
        await manager.adelete(first)
        assert await manager.aget(second) == b"same"

    async def test_delete_is_idempotent(self, manager: StorageManager) -> None:
        ref = await _put(manager, b"bye")
        await manager.adelete(ref)
        assert not await manager.aexists(ref)
        await manager.adelete(ref)
        assert not await manager.aexists(ref)

    async def test_missing_object_errors(self, manager: StorageManager) -> None:
        ref = await _put(manager, b"gone")
        await manager.adelete(ref)
        with pytest.raises(ObjectNotFoundError) as info:
            await manager.aget(ref)
        assert info.value.status_code == 404
        with pytest.raises(ObjectNotFoundError):
            async with manager.aopen(ref):
                pass  # pragma: no cover

    async def test_listing_by_prefix_at_a_slash_boundary(
        self, manager: StorageManager, backend: StorageBackend
    ) -> None:
        docs = await _put(manager, b"a", storage_key="docs")
        docs2 = await _put(manager, b"b", storage_key="docs2")
        assert [x async for x in backend.aiter_locations("docs")] == [docs.location]
        assert [x async for x in backend.aiter_locations("docs/")] == [docs.location]
        assert [x async for x in backend.aiter_locations("docs2")] == [docs2.location]
        assert [x async for x in backend.aiter_locations("doc")] == []
        assert await _all_locations(backend) == sorted([docs.location, docs2.location])
        infos = [info async for info in backend.aiter_objects("docs")]
        assert [(i.location, i.size) for i in infos] == [(docs.location, 1)]
        age = datetime.now(UTC) - infos[0].last_modified
        assert timedelta(0) - backend.timestamp_resolution <= age < timedelta(minutes=5)

    async def test_ranged_reads(self, manager: StorageManager) -> None:
        content = bytes(range(256)) * 40
        ref = await _put(manager, content)
        async with manager.aopen(ref, start=100, end=300) as reader:
            assert await reader.read() == content[100:300]
        async with manager.aopen(ref, start=10000) as reader:
            assert await reader.read() == content[10000:]

    async def test_read_n_and_iteration(self, manager: StorageManager) -> None:
        content = os.urandom(10_000)
        ref = await _put(manager, content)
        async with manager.aopen(ref) as reader:
            assert reader.size == len(content)
            assert await reader.read(3) == content[:3]
            assert await reader.read(4000) == content[3:4003]
            assert await reader.read() == content[4003:]
            assert await reader.read(10) == b""
        async with manager.aopen(ref) as reader:
            assert b"".join([chunk async for chunk in reader]) == content

    async def test_verify_detects_a_mismatch(self, manager: StorageManager) -> None:
        ref = await _put(manager, b"original")
        tampered = ref.replace(checksum="sha256:" + hashlib.sha256(b"other").hexdigest())
        assert await manager.aget(tampered) == b"original"
        with pytest.raises(ChecksumMismatchError) as info:
            await manager.aget(tampered, verify=True)
        assert info.value.expected == tampered.checksum
        assert info.value.actual == ref.checksum

    @pytest.mark.parametrize("location", _HOSTILE)
    async def test_hostile_refs_are_rejected_before_io(
        self, manager: StorageManager, location: str
    ) -> None:
        ref = StoredObjectRef("docs", "any", location, 1, "sha256:00")
        for call in (manager.aget(ref), manager.adelete(ref), manager.aexists(ref)):
            with pytest.raises(InvalidLocationError):
                await call

    async def test_ref_outside_its_policy_prefix_is_rejected(self, manager: StorageManager) -> None:
        other = await _put(manager, b"docs2 data", storage_key="docs2")
        forged = other.replace(storage_key="docs")
        with pytest.raises(InvalidLocationError):
            await manager.aget(forged)
        with pytest.raises(InvalidLocationError):
            await manager.adelete(forged)
        assert await manager.aget(other) == b"docs2 data"

    async def test_concurrent_uploads(self, manager: StorageManager) -> None:
        contents = [os.urandom(1000 + i) for i in range(20)]
        refs: list[StoredObjectRef] = []

        async def upload(content: bytes) -> None:
            refs.append(await _put(manager, content))

        async with anyio.create_task_group() as tg:
            for content in contents:
                tg.start_soon(upload, content)
        assert len({ref.location for ref in refs}) == 20
        for ref in refs:
            assert len(await manager.aget(ref, verify=True)) == ref.size

    async def test_delete_many_reports_per_location(
        self, manager: StorageManager, backend: StorageBackend
    ) -> None:
        refs = [await _put(manager, b"x") for _ in range(3)]
        result = await backend.adelete_many([r.location for r in refs] + ["docs/never/written"])
        assert sorted(result.deleted) == sorted([r.location for r in refs] + ["docs/never/written"])
        assert result.failed == {}
        assert await _all_locations(backend) == []

    @pytest.mark.parametrize("location", _HOSTILE)
    async def test_a_hostile_location_never_reaches_a_primitive(
        self, backend: StorageBackend, location: str
    ) -> None:
        calls = _record_primitive_calls(backend)
        ref = StoredObjectRef("docs", "any", location, 1, "sha256:00")
        with pytest.raises(InvalidLocationError):
            backend.aopen(ref)
        for attempt in (
            backend.aput_stream(key=location, chunks=_never()),
            backend.aget(ref),
            backend.adelete(ref),
            backend.aexists(ref),
            backend.apresigned_download_url(ref),
            backend.apresigned_upload(key=location, max_size=None),
        ):
            with pytest.raises(InvalidLocationError):
                await attempt
        if location.strip("/") == location:  # a prefix may start or end with "/"
            with pytest.raises(InvalidLocationError):
                await anext(backend.aiter_locations(location))
        result = await backend.adelete_many([location])
        assert result.deleted == [] and list(result.failed) == [location]
        assert "InvalidLocationError" in result.failed[location]
        assert calls == []

    @pytest.mark.parametrize("method", sorted(CHECKED_METHODS))
    async def test_a_subclass_cannot_override_a_checked_method(
        self, backend: StorageBackend, method: str
    ) -> None:
        with pytest.raises(TypeError, match=f"implement {CHECKED_METHODS[method]}\\(\\)"):
            type("Sneaky", (type(backend),), {method: lambda self, *args, **kwargs: None})
