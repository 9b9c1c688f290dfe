"""The sync entry point against the async core it runs on, in the same run.

``granite_storage.sync.StorageManager`` runs every call on an event loop in a
thread of its own; this measures what that costs over awaiting the async
manager from async code (the target: at most 10% slower), for many small
files one after the other (the cost per call; through the manager, and
through the model mixin's blocking methods against its async ones) and for
one large stream in
each direction (the cost per chunk), and the memory of a 1 GiB upload from a
generator. Both sides write to local disk without fsync, so the per-call
cost is not hidden behind the disk. granite-storage 0.1.0, sync too, is
shown where it has the same operation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._context import Context, Job, empty_dir, memory_mib, per_second, throughput_mib_s
from benchmarks._data import make_source_file, random_block
from benchmarks._harness import MIB, Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, granite_local_manager, legacy_local_manager

__all__ = ["run"]

_PUT: dict[str, Any] = {"storage_key": STORAGE_KEY, "model_name": "document", "field_name": "file"}
_MOD = "benchmarks.sync_facade"
_ASYNC = "async core, awaited"
_ASYNC_MIXIN = "StoredContentMixin, awaited"
_TARGET = Target(">= 0.9x async", 0.9, against=_ASYNC)


def _sync_manager(root: str) -> Any:
    from granite_storage.backends.local import LocalStorageBackend
    from granite_storage.policy import StoragePolicy
    from granite_storage.sync import StorageManager

    return StorageManager(
        backends={"local": LocalStorageBackend(root, fsync=False)},
        policies={STORAGE_KEY: StoragePolicy(STORAGE_KEY, "local", key_prefix="bench")},
    )


def _document_model(manager: Any) -> Any:
    """A model with the mixin, configured with ``manager`` (async or sync)."""
    from sqlalchemy import Integer
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    from granite_storage import StoredContentMixin, StoredObjectRefType

    class Base(DeclarativeBase):
        pass

    class Document(StoredContentMixin, Base):
        __tablename__ = "document"
        __stored_content_field_name__ = "file_ref"
        __stored_content_storage_key__ = STORAGE_KEY
        id = mapped_column(Integer, primary_key=True)
        file_ref = mapped_column(StoredObjectRefType(), nullable=True)

    Document.configure_storage_manager(manager)
    return Document


def _check(data: bytes, payload: bytes) -> None:
    if data != payload:
        raise RuntimeError("read back different bytes")


# -- workloads (run in child processes) ----------------------------------------------


async def async_small(timer: Timer, *, root: str, count: int, size: int) -> None:
    manager = granite_local_manager(root, fsync=False)
    payload = random_block(size)
    await manager.aget(await manager.aput_bytes(**_PUT, entity_id="warm-up", content=payload))
    with timer:
        for index in range(count):
            ref = await manager.aput_bytes(**_PUT, entity_id=index, content=payload)
            data = await manager.aget(ref)
    _check(data, payload)
    await manager.aclose()


def _round_trips(timer: Timer, manager: Any, count: int, size: int) -> None:
    """``put_bytes`` + ``get`` ``count`` times with a sync manager (0.1.0's or ours)."""
    payload = random_block(size)
    manager.get(manager.put_bytes(**_PUT, entity_id="warm-up", content=payload))
    with timer:
        for index in range(count):
            ref = manager.put_bytes(**_PUT, entity_id=index, content=payload)
            data = manager.get(ref)
    _check(data, payload)


def sync_small(timer: Timer, *, root: str, count: int, size: int) -> None:
    with _sync_manager(root) as manager:
        _round_trips(timer, manager, count, size)


def legacy_small(timer: Timer, *, root: str, count: int, size: int) -> None:
    _round_trips(timer, legacy_local_manager(root), count, size)


async def async_mixin(timer: Timer, *, root: str, count: int, size: int) -> None:
    manager = granite_local_manager(root, fsync=False)
    document = _document_model(manager)
    payload = random_block(size)
    await document(id=-1).aset_content(payload)
    with timer:
        for index in range(count):
            doc = document(id=index)
            await doc.aset_content(payload)
            data = await doc.aget_content()
    _check(data, payload)
    await manager.aclose()


def sync_mixin(timer: Timer, *, root: str, count: int, size: int) -> None:
    with _sync_manager(root) as manager:
        document = _document_model(manager)
        payload = random_block(size)
        document(id=-1).set_content(payload)
        with timer:
            for index in range(count):
                doc = document(id=index)
                doc.set_content(payload)
                data = doc.get_content()
    _check(data, payload)


async def async_upload(timer: Timer, *, source: str, root: str, expected: str) -> None:
    manager = granite_local_manager(root, fsync=False)
    await manager.aput_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
    with open(source, "rb") as file, timer:  # noqa: ASYNC230 - setup, not measured
        ref = await manager.aput_stream(**_PUT, entity_id=1, stream=file)
    if ref.checksum != expected:
        raise RuntimeError("stored checksum differs from the source's")
    await manager.aclose()


def sync_upload(timer: Timer, *, source: str, root: str, expected: str) -> None:
    with _sync_manager(root) as manager:
        manager.put_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
        with open(source, "rb") as file, timer:
            ref = manager.put_stream(**_PUT, entity_id=1, stream=file)
    if ref.checksum != expected:
        raise RuntimeError("stored checksum differs from the source's")


def legacy_upload(timer: Timer, *, source: str, root: str, expected: str) -> None:
    manager = legacy_local_manager(root)
    with open(source, "rb") as file, timer:
        ref = manager.put_stream(**_PUT, entity_id=1, stream=file)
    if ref.checksum != expected:
        raise RuntimeError("stored checksum differs from the source's")


async def async_read(timer: Timer, *, source: str, root: str, expected: str) -> None:
    manager = granite_local_manager(root, fsync=False)
    with open(source, "rb") as file:  # noqa: ASYNC230 - setup, not measured
        ref = await manager.aput_stream(**_PUT, entity_id=1, stream=file)
    total = 0
    with timer:
        async with manager.aopen(ref) as reader:
            while chunk := await reader.read(MIB):
                total += len(chunk)
    if total != ref.size:
        raise RuntimeError(f"read {total} bytes of {ref.size}")
    await manager.aclose()


def sync_read(timer: Timer, *, source: str, root: str, expected: str) -> None:
    with _sync_manager(root) as manager:
        with open(source, "rb") as file:
            ref = manager.put_stream(**_PUT, entity_id=1, stream=file)
        total = 0
        with timer, manager.open(ref) as reader:
            while chunk := reader.read(MIB):
                total += len(chunk)
    if total != ref.size:
        raise RuntimeError(f"read {total} bytes of {ref.size}")


def _generated(size: int) -> Iterator[bytes]:
    block = random_block(MIB)
    for index in range(size // MIB):
        yield index.to_bytes(8, "little") + block[8:]  # a new 1 MiB object each time


def sync_generator_upload(timer: Timer, *, root: str, size: int) -> None:
    with _sync_manager(root) as manager:
        manager.put_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
        with timer:
            ref = manager.put_stream(**_PUT, entity_id=1, stream=_generated(size))
    if ref.size != size:
        raise RuntimeError(f"stored {ref.size} bytes of {size}")


# -- the scenario (runs in the parent) -------------------------------------------------


def _remover(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    rows = []
    data = ctx.scratch("sync")
    root = data / "root"
    reset = empty_dir(root)

    count, kib = min(500, sizes.small_count), sizes.small_kib
    kwargs: dict[str, Any] = {"root": str(root), "count": count, "size": kib * 1024}
    out = ctx.compare(
        {
            "sync": Job(f"{_MOD}:sync_small", kwargs),
            "async": Job(f"{_MOD}:async_small", kwargs),
            "0.1.0": Job(f"{_MOD}:legacy_small", kwargs, legacy=True),
        },
        before_each=reset,
    )
    rate = per_second(count)
    rows.append(
        Row(
            f"{count} x {kib} KiB put_bytes + get, one after the other",
            "files per second",
            "files/s",
            True,
            out["sync"].figure("granite_storage.sync", rate, short="sync"),
            [out["async"].figure(_ASYNC, rate, short="async")],
            ctx.legacy_figure(out["0.1.0"], rate),
            [_TARGET],
            note="two portal round trips per file; local disk, no fsync",
        )
    )

    out = ctx.compare(
        {
            "sync": Job(f"{_MOD}:sync_mixin", kwargs),
            "async": Job(f"{_MOD}:async_mixin", kwargs),
        },
        before_each=reset,
    )
    rows.append(
        Row(
            f"{count} x {kib} KiB set_content + get_content (the mixin), one after the other",
            "files per second",
            "files/s",
            True,
            out["sync"].figure("StoredContentMixin, blocking", rate, short="sync"),
            [out["async"].figure(_ASYNC_MIXIN, rate, short="async")],
            None,
            [Target(">= 0.9x async", 0.9, against=_ASYNC_MIXIN)],
            note="rows outside a session: the facade's cost, not a database's",
        )
    )

    mib = sizes.upload_mib
    source = data / "source.bin"
    expected = make_source_file(source, mib * MIB)
    kwargs = {"source": str(source), "root": str(root), "expected": expected}
    throughput = throughput_mib_s(mib * MIB)
    for name, what, legacy in (
        ("upload", f"{mib} MiB put_stream from a file", True),
        ("read", f"{mib} MiB read through open(), 1 MiB reads", False),
    ):
        jobs = {
            "sync": Job(f"{_MOD}:sync_{name}", kwargs),
            "async": Job(f"{_MOD}:async_{name}", kwargs),
        }
        if legacy:
            jobs["0.1.0"] = Job(f"{_MOD}:legacy_{name}", kwargs, legacy=True)
        # A read run reads what it wrote before its timer: the root is emptied
        # by the parent, not when the timer starts.
        before: Any = _remover(root)
        if name == "upload":
            before = empty_dir(root, warm=(source,), writes=mib * MIB)
        out = ctx.compare(jobs, before_each=before, warmup=True)
        rows.append(
            Row(
                what,
                "throughput",
                "MiB/s",
                True,
                out["sync"].figure("granite_storage.sync", throughput, short="sync"),
                [out["async"].figure(_ASYNC, throughput, short="async")],
                ctx.legacy_figure(out["0.1.0"], throughput) if legacy else None,
                [_TARGET],
                note="the source file is in the page cache; local disk, no fsync",
            )
        )

    big = 2 * mib
    out = ctx.compare(
        {"sync": Job(f"{_MOD}:sync_generator_upload", {"root": str(root), "size": big * MIB})},
        before_each=reset,
        runs=1,
    )
    rows.append(
        Row(
            f"{big} MiB put_stream from a generator of 1 MiB chunks",
            "peak RSS growth",
            "MiB",
            False,
            out["sync"].figure("granite_storage.sync", memory_mib, worst=True, short="sync"),
            targets=[Target("< 32 MiB", 32)],
            show_ratios=False,
            note="issue 18: a 1 GiB copy through put_stream grows memory by under 32 MiB",
        )
    )
    return rows
