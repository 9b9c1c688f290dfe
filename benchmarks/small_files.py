"""Many small uploads at once: files per second at a fixed concurrency.

granite_storage and the raw baselines write the contract's layout
(``bench/document/{i}/file/{uuid}.bin``, one entity per upload), so each
upload creates two directories, a temporary file next to its target and a
rename within that directory. granite-storage 0.1.0 writes its own layout,
every file in place into one directory (``bench/document/{i}-{8 hex}.bin``);
a raw baseline with those operations shows what the layout and atomic
writes cost on the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from benchmarks._context import Context, Job, empty_dir, extra, per_second
from benchmarks._data import random_block
from benchmarks._harness import Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, granite_local_manager, legacy_local_manager

__all__ = ["run"]

_PNG_HEAD = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x02\x00\x00\x00"
)
_PUT: dict[str, Any] = {"storage_key": STORAGE_KEY, "model_name": "document", "field_name": "file"}


async def _run_workers(concurrency: int, count: int, upload: Any) -> None:
    """``concurrency`` tasks that call ``await upload(i)`` until ``count`` are done."""
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            await upload(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _timed_workers(
    timer: Timer, root: str, concurrency: int, count: int, upload: Any
) -> None:
    """Time :func:`_run_workers`, then check the count stored."""
    with timer:
        await _run_workers(concurrency, count, upload)
    _check_count(root, count)


def _check_count(root: str, expected: int) -> None:
    found = sum(len(files) for _, _, files in os.walk(os.path.join(root, "bench")))
    if found != expected:
        raise RuntimeError(f"expected {expected} stored files, found {found}")


async def granite_small(
    timer: Timer, *, root: str, count: int, size: int, concurrency: int, fsync: bool,
    detect: bool = True, png: bool = False,
) -> None:  # fmt: skip
    """``aput_bytes`` from ``concurrency`` tasks; ``detect`` is the policy's
    ``detect_content_type`` (on by default: what users get); ``png`` starts the
    payload with a PNG signature and header chunk (a format detection knows)."""
    manager = granite_local_manager(root, fsync=fsync, detect=detect)
    payload = random_block(size)
    if png:
        payload = (_PNG_HEAD + payload)[:size]
    await manager.aput_bytes(**_PUT, entity_id="warm-up", content=payload)

    async def upload(index: int) -> None:
        await manager.aput_bytes(
            **_PUT, entity_id=index, content=payload, original_filename="f.bin"
        )

    await _timed_workers(timer, root, concurrency, count, upload)


async def legacy_small(
    timer: Timer, *, root: str, count: int, size: int, concurrency: int, fsync: bool
) -> None:
    """0.1.0's sync ``put_bytes`` in worker threads, the way an async app calls it."""
    import anyio.to_thread

    manager = legacy_local_manager(root)
    payload = random_block(size)
    manager.put_bytes(**_PUT, entity_id="warm-up", content=payload)

    def put(index: int) -> Any:
        return manager.put_bytes(
            **_PUT, entity_id=index, content=payload, original_filename="f.bin"
        )

    async def upload(index: int) -> None:
        await anyio.to_thread.run_sync(put, index)

    with timer:
        await _run_workers(concurrency, count, upload)
    found = sum(len(files) for _, _, files in os.walk(os.path.join(root, "bench")))
    if found != count:
        raise RuntimeError(f"expected {count} stored files, found {found}")


def _raw_put(
    root: str, payload: bytes, fsync: bool, writes: str = "atomic"
) -> Callable[[int], str]:
    """One upload's file operations, as the local backend does them
    (``writes="atomic"``): hash, directories, a temporary file next to the
    target, write, (fsync), rename within the directory, (fsync dir).

    ``"in-place"``: the same directories, the file written in place (no
    temporary file, no rename). ``"0.1.0"``: 0.1.0's operations and layout,
    every file written in place into one directory
    (``bench/document/{i}-{8 hex}.bin``: no directory made per upload).
    """

    def put(index: int) -> str:
        checksum = hashlib.sha256(payload).hexdigest()
        if writes == "0.1.0":
            parent = os.path.join(root, "bench", "document")
            os.makedirs(parent, exist_ok=True)
            with open(os.path.join(parent, f"{index}-{uuid.uuid4().hex[:8]}.bin"), "xb") as file:
                file.write(payload)
            return checksum
        parent = os.path.join(root, "bench", "document", str(index), "file")
        os.makedirs(parent, exist_ok=True)
        name = f"{uuid.uuid4().hex}.bin"
        if writes == "in-place":
            with open(os.path.join(parent, name), "xb", buffering=0) as file:
                file.write(payload)
            return checksum
        temp = os.path.join(parent, f".tmp.{uuid.uuid4().hex}.{name}.part")
        with open(temp, "xb", buffering=0) as file:
            file.write(payload)
            if fsync:
                os.fsync(file.fileno())
        os.replace(temp, os.path.join(parent, name))
        if fsync:
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return checksum

    return put


async def raw_async_small(
    timer: Timer, *, root: str, count: int, size: int, concurrency: int, fsync: bool,
    writes: str = "atomic", hop: str = "anyio",
) -> None:  # fmt: skip
    """The same file operations driven from the event loop, one worker-thread
    call per upload from ``concurrency`` tasks: the floor of any async library.
    ``writes``: see :func:`_raw_put`. ``hop``: ``"anyio"`` (``to_thread.run_sync``),
    ``"executor"`` (asyncio's ``run_in_executor`` on a pool of 40 threads: how
    a hand-written asyncio program hands work to threads) or ``"job-pool"``
    (granite_storage's own job pool, which its local uploads use)."""
    import anyio.to_thread

    put = _raw_put(root, random_block(size), fsync, writes)
    loop = asyncio.get_running_loop()
    if hop == "executor":
        pool = ThreadPoolExecutor(40)

        async def upload(index: int) -> None:
            await loop.run_in_executor(pool, put, index)

    elif hop == "job-pool":
        from granite_storage._jobs import job_pool

        jobs = job_pool()

        async def upload(index: int) -> None:
            await jobs.submit(loop, partial(put, index))

    else:

        async def upload(index: int) -> None:
            await anyio.to_thread.run_sync(put, index)

    await upload(-1)  # warm-up (the reset deletes it)
    try:
        await _timed_workers(timer, root, concurrency, count, upload)
    finally:
        if hop == "executor":
            pool.shutdown(wait=False)


def raw_small(
    timer: Timer, *, root: str, count: int, size: int, concurrency: int, fsync: bool
) -> None:
    """The same file operations as granite_storage's local backend, from plain
    threads: see :func:`_raw_put`."""
    put = _raw_put(root, random_block(size), fsync)
    with ThreadPoolExecutor(concurrency) as pool:
        pool.submit(put, -1).result()  # warm-up, as for the others (the reset deletes it)
        with timer:
            list(pool.map(put, range(count)))
    _check_count(root, count)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    n, kib, conc = sizes.small_count, sizes.small_kib, sizes.small_concurrency
    scenario = f"{n:,} x {kib} KiB uploads at concurrency {conc}"
    root = ctx.scratch("small") / "root"
    mod = "benchmarks.small_files"
    rows = []
    for fsync in (False, True):
        kwargs = {"root": str(root), "count": n, "size": kib * 1024, "concurrency": conc,
                  "fsync": fsync}  # fmt: skip
        jobs = {
            "granite": Job(f"{mod}:granite_small", kwargs),
            "no-detect": Job(f"{mod}:granite_small", {**kwargs, "detect": False}),
            "raw": Job(f"{mod}:raw_small", kwargs),
            "raw-async": Job(f"{mod}:raw_async_small", kwargs),
            "raw-executor": Job(f"{mod}:raw_async_small", {**kwargs, "hop": "executor"}),
            "raw-pool": Job(f"{mod}:raw_async_small", {**kwargs, "hop": "job-pool"}),
        }
        if not fsync:
            jobs["0.1.0"] = Job(f"{mod}:legacy_small", kwargs, legacy=True)
            jobs["png"] = Job(f"{mod}:granite_small", {**kwargs, "png": True})
            # What atomic writes and the contract's layout (a directory per
            # entity and field) cost: the same loop-driven raw operations
            # without the rename, and with 0.1.0's flat layout too.
            jobs["raw-inplace"] = Job(f"{mod}:raw_async_small", {**kwargs, "writes": "in-place"})
            jobs["raw-0.1.0"] = Job(f"{mod}:raw_async_small", {**kwargs, "writes": "0.1.0"})
        out = ctx.compare(jobs, before_each=empty_dir(root, writes=n * kib * 1024))
        rate = per_second(n)
        cpu_per_file = extra("cpu_seconds", 1e6 / n)
        raw_label = f"raw file ops, {conc} threads" + (" +fsync" if fsync else "")
        async_label = f"raw file ops, one anyio thread call each from {conc} tasks" + (
            " +fsync" if fsync else ""
        )
        executor_label = f"raw file ops, one asyncio executor call each from {conc} tasks" + (
            " +fsync" if fsync else ""
        )
        pool_label = f"raw file ops through granite_storage's job pool, from {conc} tasks" + (
            " +fsync" if fsync else ""
        )
        old = out.get("0.1.0")
        # The raw: the same file operations through a pool of the same
        # 40 threads, handed each upload by the loop as an asyncio program
        # does it by hand. granite_storage hands its jobs over more cheaply
        # (its job pool): the same operations through that pool are shown too.
        targets = [Target(">= 0.9x raw, 40-thread pool", 0.9, against=executor_label)]
        if not fsync:
            targets.insert(0, Target(">= 1.0x 0.1.0", 1.0, against="granite-storage 0.1.0"))
        variants = [("granite", "policy defaults"), ("no-detect", "detect_content_type=False")]
        if "png" in out:
            variants.append(("png", "policy defaults, PNG payloads"))
        inplace_label = f"raw async, written in place (no rename), from {conc} tasks"
        flat_label = f"raw async, 0.1.0's writes and flat layout, from {conc} tasks"
        for key, variant in variants:
            name = f"{scenario} (fsync={fsync}, {variant})"
            rates = [out["raw"].figure(raw_label, rate, short="raw"),
                     out["raw-async"].figure(async_label, rate, short="raw async"),
                     out["raw-executor"].figure(executor_label, rate,
                                                short="raw executor"),
                     out["raw-pool"].figure(pool_label, rate, short="raw job pool")]  # fmt: skip
            if "raw-inplace" in out:
                rates.append(out["raw-inplace"].figure(inplace_label, rate, short="raw in place"))
                rates.append(out["raw-0.1.0"].figure(flat_label, rate, short="raw 0.1.0 ops"))
            rows += [
                Row(name, "files per second", "files/s", True,
                    out[key].figure("granite_storage", rate), rates,
                    ctx.legacy_figure(old, rate) if old else None, targets,
                    note=("0.1.0 put_bytes via anyio.to_thread.run_sync (it never fsyncs)"
                          if not fsync else
                          "LocalStorageBackend's default; raw fsyncs file and directory too")),
                Row(name, "CPU per file", "us", False,
                    out[key].figure("granite_storage", cpu_per_file),
                    [out["raw"].figure(raw_label, cpu_per_file, short="raw"),
                     out["raw-async"].figure(async_label, cpu_per_file, short="raw async"),
                     out["raw-executor"].figure(executor_label, cpu_per_file,
                                                short="raw executor"),
                     out["raw-pool"].figure(pool_label, cpu_per_file, short="raw job pool")],
                    note="user+system CPU of the process over the run, all threads, per file"),
            ]  # fmt: skip
    return rows
