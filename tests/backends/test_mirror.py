"""MirrorBackend: fan-out with bounded memory, all-or-nothing writes, reads with fallback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import pytest

from granite_storage import StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.backends.mirror import MirrorBackend
from granite_storage.contracts import PutResult
from granite_storage.errors import BackendError, ObjectNotFoundError, OperationNotSupportedError


def ref(location: str) -> StoredObjectRef:
    return StoredObjectRef("docs", "mirror", location, 0, "")


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class SlowMemory(MemoryStorageBackend):
    """Reads one chunk per ``step`` of the test."""

    def __init__(self) -> None:
        super().__init__()
        self.step = anyio.Event()

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        async def gated() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                await self.step.wait()
                yield chunk

        return await super()._aput(location, gated(), content_type)


class FailsAtTheEnd(MemoryStorageBackend):
    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        async for _ in chunks:
            pass
        raise BackendError("disk full")


async def test_a_write_reaches_every_backend_and_reads_come_from_the_primary() -> None:
    primary, mirror = MemoryStorageBackend(), MemoryStorageBackend()
    backend = MirrorBackend(primary, mirror)
    result = await backend.aput_stream(key="docs/a", chunks=chunks_of(b"ab", b"cd"))
    assert result.size == 4
    assert await primary.aget(ref("docs/a")) == await mirror.aget(ref("docs/a")) == b"abcd"
    await mirror.adelete(ref("docs/a"))
    assert await backend.aget(ref("docs/a")) == b"abcd"
    assert [loc async for loc in backend.aiter_locations("docs")] == ["docs/a"]


async def test_the_source_is_read_once_with_bounded_read_ahead() -> None:
    slow = SlowMemory()
    backend = MirrorBackend(MemoryStorageBackend(), slow)
    pulled = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"x" * 10

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: backend.aput_stream(key="docs/big", chunks=source()))
        await anyio.wait_all_tasks_blocked()
        # The slow mirror has read nothing: at most its buffer, plus the
        # chunk being handed over, plus one in each consumer, were pulled.
        assert pulled <= backend.buffer_chunks + 3
        slow.step.set()
    assert pulled == 100
    assert await slow.aget(ref("docs/big")) == b"x" * 1000


async def test_a_failed_backend_leaves_nothing_anywhere() -> None:
    primary, mirror = MemoryStorageBackend(), FailsAtTheEnd()
    backend = MirrorBackend(primary, mirror)
    with pytest.raises(BackendError, match="disk full"):
        await backend.aput_stream(key="docs/a", chunks=chunks_of(b"ab", b"cd"))
    assert len(primary) == len(mirror) == 0


async def test_a_failing_source_leaves_nothing_and_its_error_passes_unchanged() -> None:
    primary, mirror = MemoryStorageBackend(), MemoryStorageBackend()

    async def broken() -> AsyncIterator[bytes]:
        yield b"ab"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await MirrorBackend(primary, mirror).aput_stream(key="docs/a", chunks=broken())
    assert len(primary) == len(mirror) == 0


async def test_a_missing_object_is_read_from_a_mirror_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, mirror = MemoryStorageBackend(), MemoryStorageBackend()
    backend = MirrorBackend(primary, mirror)
    await mirror.aput_stream(key="docs/old", chunks=chunks_of(b"history"))
    with caplog.at_level(logging.WARNING, logger="granite_storage.mirror"):
        assert await backend.aget(ref("docs/old")) == b"history"
        async with backend.aopen(ref("docs/old"), start=2, end=4) as reader:
            assert await reader.read() == b"st"
    assert "docs/old is missing on the primary" in caplog.text
    assert await backend.aexists(ref("docs/old"))
    with pytest.raises(ObjectNotFoundError):
        await backend.aget(ref("docs/none"))


async def test_deletes_go_to_every_backend() -> None:
    primary, mirror = MemoryStorageBackend(), MemoryStorageBackend()
    backend = MirrorBackend(primary, mirror)
    for name in ("a", "b", "c"):
        await backend.aput_stream(key=f"docs/{name}", chunks=chunks_of(b"x"))
    await backend.adelete(ref("docs/a"))
    result = await backend.adelete_many(["docs/b", "docs/c"])
    assert sorted(result.deleted) == ["docs/b", "docs/c"]
    assert len(primary) == len(mirror) == 0


async def test_presigned_uploads_are_refused_and_a_mirror_is_required() -> None:
    backend = MirrorBackend(MemoryStorageBackend(), MemoryStorageBackend())
    with pytest.raises(OperationNotSupportedError, match="primary only"):
        await backend.apresigned_upload(key="docs/a", max_size=None)
    with pytest.raises(ValueError, match="at least one mirror"):
        MirrorBackend(MemoryStorageBackend())
