"""What only the local backend does: temporary files, atomic rename, symlinks, disk errors."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import shutil
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from granite_storage import InvalidLocationError, StorageManager, StoredObjectRef
from granite_storage._concurrency import Checkpoint, CpuSlots
from granite_storage.backends import local as local_module
from granite_storage.backends.local import TEMP_DIR_NAME, TEMP_PREFIX, LocalStorageBackend
from granite_storage.contracts import PutResult
from granite_storage.errors import BackendError, ContentTooLargeError
from granite_storage.streams import SizeLimiter
from granite_storage.streams import chunks_of as aiter_chunks
from granite_storage.streams import coalesce as acoalesce
from granite_storage.testing import manager_for
from tests.local_temp import temp_files


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_manager(root: Path, *, fsync: bool = False) -> StorageManager:
    return manager_for(LocalStorageBackend(root, fsync=fsync), "docs", backend_key="local")


async def put_stream(manager: StorageManager, stream: object) -> StoredObjectRef:
    return await manager.aput_stream(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=stream
    )  # type: ignore[arg-type]


async def test_upload_is_invisible_until_complete(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    backend = manager.backends["local"]
    halfway, release = anyio.Event(), anyio.Event()
    seen: dict[str, list[str]] = {}

    async def source() -> AsyncIterator[bytes]:
        yield b"a" * (1 << 20)
        yield b"b" * (1 << 20)
        halfway.set()
        await release.wait()
        yield b"c" * 100_000

    async def watch() -> None:
        await halfway.wait()
        with anyio.fail_after(5):  # the writer thread opens its temporary file meanwhile
            while not (files := await anyio.to_thread.run_sync(files_under, tmp_path)):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        seen["files"] = files
        seen["listing"] = [loc async for loc in backend.aiter_locations()]
        release.set()

    refs: list[StoredObjectRef] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        refs.append(await put_stream(manager, source()))
    # The one file was a temporary file next to its target.
    assert len(seen["files"]) == 1
    directory, _, name = seen["files"][0].rpartition("/")
    assert name.startswith(TEMP_PREFIX + ".") and name.endswith(
        f".{refs[0].location.rpartition('/')[2]}.part"
    )
    assert directory == refs[0].location.rpartition("/")[0]
    assert seen["listing"] == []
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == [refs[0].location]


async def test_durable_write_with_fsync(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, fsync=True)
    ref = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"durable"
    )
    assert await anyio.Path(tmp_path / ref.location).read_bytes() == b"durable"


@pytest.mark.parametrize(
    "make_source",
    [
        lambda: [b"x" * (1 << 20), b"y" * (1 << 20), b"z"],  # chunks through the event loop
        lambda: io.BytesIO(b"x" * (2 << 20) + b"z"),  # a file, copied in one worker thread
    ],
    ids=["iterable", "file"],
)
async def test_disk_error_is_a_clear_storage_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_source: Callable[[], object]
) -> None:
    calls = 0
    real_write_all = local_module._write_all

    def write_all_then_fill_the_disk(file: object, chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(file, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(local_module, "_write_all", write_all_then_fill_the_disk)
    manager = make_manager(tmp_path)
    with pytest.raises(BackendError, match="No space left on device") as info:
        await put_stream(manager, make_source())
    assert isinstance(info.value.__cause__, OSError)
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == []


async def test_symlinks_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    await anyio.Path(outside).mkdir()
    await anyio.Path(outside / "secret.txt").write_bytes(b"secret")
    await anyio.Path(root / "docs").mkdir(parents=True)
    await anyio.Path(root / "docs" / "link").symlink_to(outside)
    manager = make_manager(root)
    ref = StoredObjectRef("docs", "local", "docs/link/secret.txt", 6, "sha256:00")
    with pytest.raises(InvalidLocationError, match="outside the storage root"):
        await manager.aget(ref)
    with pytest.raises(InvalidLocationError):
        await manager.adelete(ref)
    assert await anyio.Path(outside / "secret.txt").exists()
    # a listing does not follow the link either
    assert [loc async for loc in manager.backends["local"].aiter_locations()] == []


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def test_relative_root_and_lazy_creation(in_tmp_path: Path) -> None:
    tmp_path = in_tmp_path
    manager = make_manager(Path("var/storage"))
    assert not await anyio.Path(tmp_path / "var").exists()  # no I/O in the constructor
    ref = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"x"
    )
    assert await anyio.Path(tmp_path / "var" / "storage" / ref.location).exists()


async def test_delete_prunes_empty_directories(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    keep = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"keep"
    )
    gone = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=2, field_name="f", content=b"gone"
    )
    await manager.adelete(gone)
    assert not await anyio.Path(tmp_path / "docs" / "m" / "2").exists()
    assert await anyio.Path(tmp_path / keep.location).exists()


async def test_stale_temporary_files_of_earlier_versions_are_leftovers(tmp_path: Path) -> None:
    # Earlier versions wrote every upload in progress to one shared directory.
    backend = LocalStorageBackend(tmp_path)
    temp = anyio.Path(tmp_path / TEMP_DIR_NAME)
    await temp.mkdir(parents=True)
    await (temp / "old.part").write_bytes(b"crashed upload")
    await (temp / "new.part").write_bytes(b"in flight")
    hour_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    await anyio.to_thread.run_sync(
        os.utime, tmp_path / TEMP_DIR_NAME / "old.part", (hour_ago, hour_ago)
    )
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert await backend.acleanup_leftovers(older_than=cutoff, dry_run=True) == 1
    assert await (temp / "old.part").exists()
    assert await backend.acleanup_leftovers(older_than=cutoff, dry_run=False) == 1
    assert not await (temp / "old.part").exists()
    assert await (temp / "new.part").exists()


@pytest.mark.parametrize(
    "location",
    [".granite-tmp/x", "docs/.granite-tmp", "docs/.granite-tmp.0123.a.part", "d/.granite-tmpx/y"],
)
async def test_locations_the_temporary_files_use_are_refused(tmp_path: Path, location: str) -> None:
    backend = LocalStorageBackend(tmp_path, fsync=False)
    ref = StoredObjectRef(
        storage_key="docs", backend="local", location=location, size=1, checksum="sha256:0"
    )
    with pytest.raises(InvalidLocationError, match="keeps for uploads in progress"):
        await backend.aput_stream(key=location, chunks=aiter_chunks(b"x"))
    for call in (backend.aget, backend.adelete, backend.aexists):
        with pytest.raises(InvalidLocationError, match="choose another name"):
            await call(ref)
    deleted = await backend.adelete_many([location])
    assert list(deleted.failed) == [location] and not deleted.deleted
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == []


class BrokenSource(io.RawIOBase):
    """A sync file that fails after 2 MiB, read on the one-thread path."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent >= 2 << 20:
            raise ConnectionResetError("the client went away")
        size = min(len(buffer), 1 << 20)
        buffer[:size] = b"x" * size
        self.sent += size
        return size


@pytest.mark.parametrize("kind", ["async-oversized", "sync-failing"])
async def test_a_failed_upload_leaves_no_file_and_no_directory(tmp_path: Path, kind: str) -> None:
    manager = manager_for(
        LocalStorageBackend(tmp_path, fsync=False), "docs", max_size=5 << 20, chunk_size=1 << 20
    )
    kept = await put_stream(manager, b"kept")  # its directories stay

    async def oversized() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * (1 << 20)

    with pytest.raises(ContentTooLargeError if kind == "async-oversized" else ConnectionResetError):
        await manager.aput_stream(
            storage_key="docs", model_name="m", entity_id="new", field_name="f",
            stream=oversized() if kind == "async-oversized" else BrokenSource(),
        )  # fmt: skip
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == [kept.location]
    dirs = await anyio.to_thread.run_sync(lambda: [p for p in tmp_path.rglob("*") if p.is_dir()])
    assert sorted(str(d.relative_to(tmp_path)) for d in dirs) == [
        "docs", "docs/m", "docs/m/1", "docs/m/1/f"
    ]  # fmt: skip


async def test_a_name_too_long_to_record_in_the_temporary_name_still_uploads(
    tmp_path: Path,
) -> None:
    backend = LocalStorageBackend(tmp_path, fsync=False)
    location = "docs/" + "n" * 250  # fits a file name, not with the temporary name's parts
    result = await backend.aput_stream(key=location, chunks=aiter_chunks(b"abc" * 100_000))
    assert result.size == 300_000
    assert [loc async for loc in backend.aiter_locations()] == [location]
    assert await anyio.to_thread.run_sync(temp_files, tmp_path) == []


async def test_256_mib_upload_keeps_memory_bounded(tmp_path: Path) -> None:
    chunk = os.urandom(1 << 20)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(256):
            yield chunk

    manager = make_manager(tmp_path)
    tracemalloc.start()
    try:
        ref = await put_stream(manager, source())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == 256 << 20
    assert peak < 32 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("size", [10, 3 << 20])  # one-chunk and streamed writes
@pytest.mark.parametrize("in_chunks", [False, True], ids=["bytes", "async-chunks"])
async def test_writes_cannot_follow_a_symlinked_directory(
    tmp_path: Path, size: int, in_chunks: bool
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    await anyio.Path(outside).mkdir()
    await anyio.Path(root / "docs").mkdir(parents=True)
    await anyio.Path(root / "docs" / "m").symlink_to(outside)
    manager = make_manager(root)
    data = b"x" * size

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, size, 1 << 20):
            yield data[start : start + (1 << 20)]

    with pytest.raises(InvalidLocationError, match="symlink"):
        await put_stream(manager, chunks() if in_chunks else data)
    assert await anyio.to_thread.run_sync(files_under, outside) == []
    assert await anyio.to_thread.run_sync(temp_files, root) == []


async def test_delete_many_in_batches_reports_unsafe_locations(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    manager = make_manager(root)
    backend = manager.backends["local"]
    refs = [
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b"x"
        )
        for i in range(600)  # more than two batches
    ]
    await anyio.Path(outside / "f").mkdir(parents=True)
    await anyio.Path(outside / "f" / "secret").write_bytes(b"keep")
    await anyio.Path(root / "docs" / "link").symlink_to(outside)
    result = await backend.adelete_many(
        [r.location for r in refs] + ["docs/link/f/secret", "../escape"]
    )
    assert sorted(result.deleted) == sorted(r.location for r in refs)
    assert set(result.failed) == {"docs/link/f/secret", "../escape"}
    assert "InvalidLocationError" in result.failed["docs/link/f/secret"]
    assert await anyio.Path(outside / "f" / "secret").read_bytes() == b"keep"
    assert await anyio.to_thread.run_sync(files_under, root / "docs") == []
    assert [p.name async for p in anyio.Path(root / "docs").iterdir()] == ["link"]


async def test_a_file_is_copied_by_one_worker_thread_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(8 << 20)
    backend = LocalStorageBackend(tmp_path, fsync=False)
    await backend.aput_stream(key="warm/up", chunks=aiter_chunks(b"x"))  # creates the root
    calls: list[str] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(func: Callable[..., object], *args: object, **kw: object) -> object:
        calls.append(getattr(func, "__name__", repr(func)))
        return await real_run_sync(func, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    real_job_hop = local_module.run_stoppable

    async def counting_job_hop(job: Callable[[Checkpoint], PutResult]) -> PutResult:
        calls.append("job")
        return await real_job_hop(job)

    monkeypatch.setattr(local_module, "run_stoppable", counting_job_hop)
    chunks = acoalesce(SizeLimiter(aiter_chunks(io.BytesIO(data)), None))
    result = await backend.aput_stream(key="docs/big.bin", chunks=chunks)
    assert result.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert calls == ["job"]  # not one or more per 1 MiB chunk
    assert await anyio.Path(tmp_path / "docs" / "big.bin").read_bytes() == data


class EndlessFile(io.RawIOBase):
    """A sync file that never ends: 64 KiB every 5 ms."""

    def __init__(self) -> None:
        self.reads = 0
        self.first_read = threading.Event()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        time.sleep(0.005)
        self.reads += 1
        self.first_read.set()
        return b"x" * 65536


class EndlessAsyncSource:
    """An async iterator that never ends: 64 KiB every 2 ms (fed to a writer thread)."""

    def __init__(self) -> None:
        self.reads = 0
        self.first_read = threading.Event()

    def __aiter__(self) -> EndlessAsyncSource:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0.002)
        self.reads += 1
        if self.reads > 20:  # past the first chunks: the writer thread is copying
            self.first_read.set()
        return b"x" * 65536


@pytest.mark.parametrize("kind", [EndlessFile, EndlessAsyncSource], ids=["file", "async"])
@pytest.mark.parametrize("how", ["anyio", "task.cancel", "asyncio.timeout"])
async def test_a_cancelled_upload_leaves_no_file_once_cancelled(
    tmp_path: Path, how: str, kind: Callable[[], EndlessFile | EndlessAsyncSource]
) -> None:
    manager = make_manager(tmp_path)
    source = kind()
    if how == "anyio":
        with anyio.move_on_after(0.2):
            await put_stream(manager, source)
    elif how == "task.cancel":
        task = asyncio.create_task(put_stream(manager, source))
        await anyio.to_thread.run_sync(source.first_read.wait)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await put_stream(manager, source)
    assert source.reads > 1
    # At once, not eventually: the copying thread has already stopped.
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == []
    reads = source.reads
    await asyncio.sleep(0.05)
    assert source.reads == reads
    assert not any(t.name == "granite-writer" for t in threading.enumerate())


@pytest.mark.parametrize("source", [b"small", io.BytesIO(b"x" * (3 << 20))], ids=["bytes", "file"])
async def test_uploads_work_after_the_storage_directory_was_emptied(
    tmp_path: Path, source: object
) -> None:
    manager = make_manager(tmp_path)
    await put_stream(manager, b"first")
    await anyio.to_thread.run_sync(shutil.rmtree, tmp_path)
    ref = await put_stream(manager, source)
    assert await anyio.to_thread.run_sync(files_under, tmp_path) == [ref.location]


async def test_a_file_copy_keeps_memory_bounded(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    block = os.urandom(1 << 20)

    def write_source() -> None:
        with source.open("wb") as file:
            for _ in range(64):
                file.write(block)

    await anyio.to_thread.run_sync(write_source)
    manager = make_manager(tmp_path / "root")
    file = await anyio.to_thread.run_sync(source.open, "rb")
    tracemalloc.start()
    try:
        ref = await put_stream(manager, file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await anyio.to_thread.run_sync(file.close)
    assert ref.size == 64 << 20
    # a chunk being read, one being written, at most four waiting to be hashed
    assert peak < 10 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"


async def test_concurrent_file_copies_write_one_slot_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "copy_slots", CpuSlots(1, patience=10))
    real_write_all = local_module._write_all
    inside, most = 0, 0
    lock = threading.Lock()

    def counting_write_all(file: object, chunk: bytes) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.001)
        real_write_all(file, chunk)  # type: ignore[arg-type]
        with lock:
            inside -= 1

    monkeypatch.setattr(local_module, "_write_all", counting_write_all)
    manager = make_manager(tmp_path)
    data = os.urandom(4 << 20)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(put_stream, manager, io.BytesIO(data))
    assert most == 1
    assert len(await anyio.to_thread.run_sync(files_under, tmp_path)) == 4


class BlockedFile(io.RawIOBase):
    """A file whose reads wait until released, and that records its close."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()
        self.reads_ended = 0
        self.closed_during_a_read = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reading.set()
        self.release.wait(5)
        self.reads_ended += 1
        return b"x" * max(size, 0)

    def close(self) -> None:
        if self.reading.is_set() and not self.reads_ended:
            self.closed_during_a_read = True
        super().close()


async def test_a_reader_is_not_closed_under_a_read_its_cancelled_caller_left() -> None:
    """``task.cancel()`` leaves the read running in its worker thread; the
    close must wait for it (or a descriptor reused meanwhile could be read)."""
    file = BlockedFile()
    reader = local_module.FileReader(file, size=100)  # type: ignore[arg-type]
    task = asyncio.create_task(reader.read(10))
    await anyio.to_thread.run_sync(file.reading.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    threading.Timer(0.1, file.release.set).start()
    await reader.aclose()  # waits for the read, in a worker thread
    assert file.reads_ended == 1
    assert file.closed and not file.closed_during_a_read
