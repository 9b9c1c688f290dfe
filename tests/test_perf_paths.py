"""The fast upload paths are the ones taken, and they keep every guarantee.

An async file that wraps a sync one is copied by one worker-thread call; a
truly async source is written by one writer thread the event loop feeds. An
error of the source, a failed write, a cancellation or the size limit leave
nothing behind, at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
import random
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from starlette.datastructures import UploadFile

from granite_storage import StorageManager, StoredObjectRef
from granite_storage import _detect as detect_module
from granite_storage._concurrency import Checkpoint, Pull, run_fed
from granite_storage.backends import local as local_module
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.errors import ContentTooLargeError
from granite_storage.streams import blocking_pull, chunks_of, coalesce
from granite_storage.testing import manager_for
from tests.local_temp import temp_files

MIB = 1 << 20


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_manager(root: Path, *, max_size: int | None = None) -> StorageManager:
    return manager_for(
        LocalStorageBackend(root, fsync=False), "docs", backend_key="local", max_size=max_size
    )


async def put(manager: StorageManager, stream: object) -> StoredObjectRef:
    return await manager.aput_stream(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=stream
    )  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions run in worker threads, by name: through anyio, and the
    local backend's copies (``run_stoppable``, as "copy")."""
    calls: list[str] = []

    def counting(real: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
        async def run(func: Callable[..., object], *args: object, **kw: object) -> object:
            called = func.func if isinstance(func, functools.partial) else func
            calls.append(name or getattr(called, "__name__", repr(func)))
            return await real(func, *args, **kw)

        return run

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting(anyio.to_thread.run_sync))
    monkeypatch.setattr(detect_module, "run_job", counting(detect_module.run_job))
    monkeypatch.setattr(local_module, "run_stoppable", counting(local_module.run_stoppable, "copy"))
    return calls


def copy_calls(calls: list[str]) -> list[str]:
    """The calls of an upload but libmagic's look at the head, a file's close,
    and the thread ``run_stoppable`` runs its copy in ("target")."""
    return [call for call in calls if call not in ("libmagic_type", "close", "target")]


@pytest.fixture
def writer_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that wrote chunks of a multi-chunk upload."""
    names: list[str] = []
    real_write_all = local_module._write_all

    def recording(file: object, chunk: bytes) -> None:
        names.append(threading.current_thread().name)
        real_write_all(file, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(local_module, "_write_all", recording)
    return names


# -- async files that wrap a sync file: the one-thread path ---------------------------


async def _source_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "source.bin"
    await anyio.Path(path).write_bytes(data)
    return path, data


async def test_an_anyio_file_is_copied_by_one_worker_thread_call(
    tmp_path: Path, thread_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = await _source_file(tmp_path, 5 * MIB + 7)
    manager = make_manager(tmp_path / "root")
    await put(manager, b"warm-up")  # creates the root
    async with await anyio.open_file(path, "rb") as afile:
        monkeypatch.setattr(anyio.AsyncFile, "read", None)  # never read through the wrapper
        assert blocking_pull(chunks_of(afile)) is not None
        thread_calls.clear()
        ref = await put(manager, afile)
    assert (ref.size, ref.checksum) == (len(data), sha256(data))
    # The head's read (for libmagic), then one copy: not a call per chunk.
    assert copy_calls(thread_calls) == ["read", "copy"], thread_calls


async def test_an_aiofiles_file_is_copied_by_one_worker_thread_call(
    tmp_path: Path, thread_calls: list[str]
) -> None:
    path, data = await _source_file(tmp_path, 3 * MIB)
    manager = make_manager(tmp_path / "root")
    await put(manager, b"warm-up")
    async with aiofiles.open(path, "rb") as afile:
        await afile.read(100)  # the copy starts where the file is, as read() would
        assert blocking_pull(chunks_of(afile)) is not None
        thread_calls.clear()
        ref = await put(manager, afile)
    assert (ref.size, ref.checksum) == (len(data) - 100, sha256(data[100:]))
    assert copy_calls(thread_calls) == ["read", "copy"], thread_calls


@pytest.mark.parametrize("rolled", [True, False], ids=["on-disk", "in-memory"])
async def test_an_upload_file_is_read_through_its_spooled_file(
    tmp_path: Path, rolled: bool, thread_calls: list[str]
) -> None:
    data = os.urandom(3 * MIB if rolled else 100_000)
    # As Starlette's form parser makes it; closed by the UploadFile.
    spooled = tempfile.SpooledTemporaryFile(max_size=MIB)  # noqa: SIM115
    await anyio.to_thread.run_sync(spooled.write, data)
    spooled.seek(0)
    upload = UploadFile(spooled, filename="a.bin")
    assert upload._in_memory is not rolled
    manager = make_manager(tmp_path)
    await put(manager, b"warm-up")
    thread_calls.clear()
    try:
        ref = await put(manager, upload)
        calls = copy_calls(thread_calls)
    finally:
        await upload.close()
    assert (ref.size, ref.checksum) == (len(data), sha256(data))
    # Read in memory (no thread) until the spooled file rolled over to disk.
    assert calls == (["read", "copy"] if rolled else ["copy"]), calls


async def test_a_text_mode_wrapper_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "source.txt"
    await anyio.Path(path).write_text("text, not bytes")
    async with await anyio.open_file(path, "r") as afile:
        with pytest.raises(TypeError, match="binary mode"):
            await put(make_manager(tmp_path / "root"), afile)


# -- truly async sources: one writer thread, fed by the event loop ----------------------


async def chunks_from(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await anyio.lowlevel.checkpoint()
        yield data[start : start + size]


@pytest.mark.parametrize("chunk", [MIB, 64 * 1024, 1000], ids=["1MiB", "64KiB", "1000B"])
async def test_an_async_generator_is_written_by_one_writer_thread(
    tmp_path: Path, chunk: int, thread_calls: list[str], writer_threads: list[str]
) -> None:
    data = os.urandom(4 * MIB + 3)
    manager = make_manager(tmp_path)
    await put(manager, b"warm-up")
    thread_calls.clear()
    writer_threads.clear()
    ref = await put(manager, chunks_from(data, chunk))
    # No worker-thread call per chunk: only libmagic's look at the head.
    assert thread_calls == ["libmagic_type"], thread_calls
    assert set(writer_threads) == {"granite-writer"}
    assert (ref.size, ref.checksum) == (len(data), sha256(data))
    assert await anyio.Path(tmp_path / ref.location).read_bytes() == data
    assert await anyio.to_thread.run_sync(temp_files, tmp_path) == []


async def test_an_async_source_that_fails_mid_stream_leaves_no_file(tmp_path: Path) -> None:
    class ClientWentAway(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield os.urandom(MIB)
        raise ClientWentAway

    manager = make_manager(tmp_path)
    with pytest.raises(ClientWentAway):  # unchanged, not wrapped in a group
        await put(manager, failing())
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == []


async def test_the_size_limit_trips_on_an_async_source(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, max_size=3 * MIB)
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield os.urandom(MIB)

    with pytest.raises(ContentTooLargeError):
        await put(manager, endless())
    assert pulled <= 5  # stopped as soon as the limit was passed
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == []


# -- run_fed itself ----------------------------------------------------------------------


async def test_run_fed_keeps_at_most_depth_items_waiting() -> None:
    gate = threading.Event()
    produced = 0

    async def items() -> AsyncIterator[int]:
        nonlocal produced
        for index in range(50):
            produced = index + 1
            yield index

    def job(pull: Pull[int], checkpoint: Checkpoint) -> list[int]:
        gate.wait()
        return list(iter(pull, None))

    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            assert await run_fed(job, items(), depth=3) == list(range(50))

        tg.start_soon(consume)
        await asyncio.sleep(0.05)
        assert produced == 3  # the job takes nothing yet: the loop waits for room
        gate.set()
    assert produced == 50


async def test_run_fed_returns_the_jobs_error_and_stops_reading() -> None:
    # (A failed write on the local backend: tests/backends/test_local.py, "iterable".)
    produced = 0

    def job(pull: Pull[int], checkpoint: Checkpoint) -> None:
        pull()
        raise LookupError("from the job")

    async def items() -> AsyncIterator[int]:
        nonlocal produced
        for index in range(1000):
            produced += 1
            await anyio.lowlevel.checkpoint()
            yield index

    with pytest.raises(LookupError, match="from the job"):  # as it is, not in a group
        await run_fed(job, items())
    assert produced < 20  # the loop stopped feeding once the job failed


async def test_run_fed_lets_other_tasks_run_between_items_of_a_source_that_never_suspends() -> None:
    # An async generator of bytes in memory never awaits; with room in the
    # queue, the loop would otherwise feed the job without a break.
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async def items() -> AsyncIterator[int]:
        for index in range(20):
            seen.append(ticks)
            yield index

    def job(pull: Pull[int], checkpoint: Checkpoint) -> int:
        return sum(1 for _ in iter(pull, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        assert await run_fed(job, items(), depth=1000) == 20
        tg.cancel_scope.cancel()
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), seen


async def test_run_fed_can_be_cancelled_while_a_source_that_never_suspends_feeds_it() -> None:
    produced = 0

    async def items() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < 100_000:
            produced += 1
            yield b"x"

    def job(pull: Pull[bytes], checkpoint: Checkpoint) -> None:
        while pull() is not None:
            pass

    with anyio.move_on_after(0.02) as scope:
        await run_fed(job, items(), depth=1_000_000)
    assert scope.cancelled_caught
    assert produced < 100_000


# -- coalescing: one copy per merged chunk, exact sizes --------------------------------


@pytest.mark.parametrize("seed", range(5))
async def test_coalesce_cuts_exact_chunks_whatever_the_pieces(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [os.urandom(rng.choice([1, 100, 1000, 4096, 5000, 20_000])) for _ in range(60)]
    merged = [chunk async for chunk in coalesce(chunks_of(list(pieces)), 4096)]
    assert b"".join(merged) == b"".join(pieces)
    # Every chunk is whole but the last, or a large piece passed on as it came.
    for chunk in merged[:-1]:
        assert len(chunk) == 4096 or (len(chunk) >= 1024 and chunk in pieces)
