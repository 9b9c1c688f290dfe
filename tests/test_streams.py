"""Every accepted byte source becomes bounded chunks; the size limiter; coalescing."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiofiles
import anyio
import pytest

from granite_storage import ContentTooLargeError
from granite_storage.streams import (
    HashingThread,
    Sha256Digest,
    SizeLimiter,
    blocking_pull,
    chunks_of,
    coalesce,
)

DATA = os.urandom(10_000)


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


class AsyncReader:
    """Like Starlette's UploadFile: async read(n), no iteration."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)
        self.sizes: list[int] = []

    async def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        return self._file.read(size)


class LineIteratingFile(io.BytesIO):
    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        raise AssertionError("files must be read with read(n), never iterated by lines")


def generator() -> Iterator[bytes]:
    yield DATA[:3]
    yield DATA[3:]


async def agenerator() -> AsyncIterator[bytes]:
    yield DATA[:5000]
    yield DATA[5000:]


@pytest.mark.parametrize(
    "make_source",
    [
        lambda: DATA,
        lambda: bytearray(DATA),
        lambda: memoryview(DATA),
        lambda: io.BytesIO(DATA),
        lambda: LineIteratingFile(DATA),
        lambda: AsyncReader(DATA),
        lambda: [DATA[:10], DATA[10:]],
        lambda: (DATA[:10], bytearray(DATA[10:])),
        generator,
        agenerator,
    ],
    ids=[
        "bytes",
        "bytearray",
        "memoryview",
        "BytesIO",
        "file-no-iter",
        "async-read",
        "list",
        "tuple",
        "generator",
        "async-generator",
    ],
)
async def test_every_source_round_trips_in_bounded_chunks(make_source: object) -> None:
    chunks = await collect(chunks_of(make_source(), chunk_size=4096))  # type: ignore[operator]
    assert b"".join(chunks) == DATA
    assert all(0 < len(chunk) <= 4096 for chunk in chunks)


async def test_async_read_is_called_with_the_chunk_size() -> None:
    reader = AsyncReader(DATA)
    await collect(chunks_of(reader, chunk_size=4096))
    assert set(reader.sizes) == {4096}


async def test_sync_file_is_read_in_a_worker_thread(tmp_path: Path) -> None:
    # blockbuster (autouse) fails this test if the file were read on the loop
    path = tmp_path / "data.bin"
    await anyio.Path(path).write_bytes(DATA)
    file = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        assert b"".join(await collect(chunks_of(file, chunk_size=1000))) == DATA
    finally:
        await anyio.to_thread.run_sync(file.close)


async def test_aiofiles_and_anyio_files_are_read_not_iterated_by_lines(tmp_path: Path) -> None:
    lines = b"line\n" * 5000
    path = tmp_path / "lines.txt"
    await anyio.Path(path).write_bytes(lines)
    async with aiofiles.open(path, "rb") as afile:
        chunks = await collect(chunks_of(afile, chunk_size=8192))
    assert b"".join(chunks) == lines
    assert max(len(c) for c in chunks) == 8192
    async with await anyio.open_file(path, "rb") as anyfile:
        chunks = await collect(chunks_of(anyfile, chunk_size=8192))
    assert b"".join(chunks) == lines and len(chunks) == 4


@pytest.mark.parametrize("bad", ["text", ["text"], 42, io.StringIO("text")])
async def test_text_and_unknown_sources_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        await collect(chunks_of(bad))  # type: ignore[arg-type]


async def test_size_limiter_counts_every_byte_whatever_the_chunking() -> None:
    async def tiny() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"x"

    limiter = SizeLimiter(tiny(), max_size=10)
    seen = []
    with pytest.raises(ContentTooLargeError):
        async for chunk in limiter:
            seen.append(chunk)
    assert len(seen) == 10  # the chunk that passed the limit is never handed on
    assert limiter.total == 11


async def test_size_limiter_accepts_exactly_the_limit() -> None:
    limiter = SizeLimiter(chunks_of(b"x" * 10, chunk_size=3), max_size=10)
    assert b"".join(await collect(limiter)) == b"x" * 10


async def test_coalesce_merges_small_chunks() -> None:
    async def tiny() -> AsyncIterator[bytes]:
        for byte in DATA:
            yield bytes([byte])

    chunks = await collect(coalesce(tiny(), chunk_size=4096))
    assert b"".join(chunks) == DATA
    assert [len(c) for c in chunks] == [4096, 4096, len(DATA) - 8192]


async def test_coalesce_passes_large_chunks_through_uncopied() -> None:
    big = os.urandom(4096)

    async def one() -> AsyncIterator[bytes]:
        yield big

    (chunk,) = await collect(coalesce(one(), chunk_size=4096))
    assert chunk is big


async def test_digest_matches_hashlib_for_small_and_large_chunks() -> None:
    chunks = [b"a", os.urandom(200_000), b""]
    digest = Sha256Digest()
    for chunk in chunks:
        await digest.aupdate(chunk)
    assert digest.size == 200_001
    assert digest.checksum == "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()


class ShortReads(io.RawIOBase):
    """A raw file that returns at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._file = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._file.read(min(size, self._step) if size >= 0 else self._step)


def drain(pull: Callable[[], bytes | None]) -> list[bytes]:
    chunks = []
    while (chunk := pull()) is not None:
        chunks.append(chunk)
    return chunks


async def test_a_sync_file_can_be_pulled_whole_from_one_worker_thread() -> None:
    chunks = coalesce(
        SizeLimiter(chunks_of(ShortReads(DATA, 100), chunk_size=4096), None), chunk_size=4096
    )
    pull = blocking_pull(chunks)
    assert pull is not None
    pulled = await anyio.to_thread.run_sync(drain, pull)
    assert b"".join(pulled) == DATA
    # the short reads are merged as on the async path
    assert [len(c) for c in pulled] == [4096, 4096, len(DATA) - 8192]


async def test_the_blocking_pull_enforces_the_size_limit() -> None:
    limiter = SizeLimiter(chunks_of(io.BytesIO(DATA), chunk_size=1000), max_size=2500)
    pull = blocking_pull(limiter)
    assert pull is not None
    assert pull() is not None and pull() is not None
    with pytest.raises(ContentTooLargeError):
        pull()
    assert limiter.total == 3000


@pytest.mark.parametrize("make_source", [lambda: AsyncReader(DATA), agenerator, generator])
async def test_sources_that_need_the_loop_have_no_blocking_pull(make_source: object) -> None:
    chunks = coalesce(SizeLimiter(chunks_of(make_source()), None))  # type: ignore[operator]
    assert blocking_pull(chunks) is None
    assert b"".join(await collect(chunks)) == DATA


def test_hashing_thread_matches_hashlib_and_bounds_its_queue() -> None:
    chunks = [os.urandom(100_000) for _ in range(20)]
    digest = Sha256Digest()
    with HashingThread(digest, depth=2) as hasher:
        for chunk in chunks:
            hasher.update(chunk)
            assert hasher._queue.qsize() <= 2
    assert digest.size == 2_000_000
    assert digest.checksum == "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()


@pytest.mark.parametrize("kind", [bytes, bytearray])
async def test_bytes_in_memory_can_be_pulled_from_a_worker_thread(kind: type) -> None:
    source = kind(DATA)
    pull = blocking_pull(SizeLimiter(chunks_of(source, chunk_size=4096), None))
    assert pull is not None
    if kind is bytearray:
        source[0] ^= 0xFF  # copied up front: later changes by the caller do not leak in
    assert [len(c) for c in await anyio.to_thread.run_sync(drain, pull)] == [4096, 4096, 1808]
    assert b"".join(drain(blocking_pull(chunks_of(DATA)) or (lambda: None))) == DATA
    (whole,) = drain(blocking_pull(chunks_of(DATA)) or (lambda: None))
    assert whole is DATA  # one chunk: not copied


class AwaitableRead:
    """``read`` is a plain method that returns an awaitable (as wrappers and
    mocks of async files do): it is awaited, on either path."""

    def __init__(self, data: bytes) -> None:
        self._inner = AsyncReader(data)

    def read(self, size: int = -1) -> Awaitable[bytes]:
        return self._inner.read(size)


async def test_a_read_that_returns_an_awaitable_is_awaited_on_both_paths() -> None:
    assert b"".join(await collect(chunks_of(AwaitableRead(DATA), chunk_size=4096))) == DATA
    pull = blocking_pull(chunks_of(AwaitableRead(DATA), chunk_size=4096))
    assert pull is not None
    assert b"".join(await anyio.to_thread.run_sync(drain, pull)) == DATA
