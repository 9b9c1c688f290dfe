"""Large uploads to local disk: one stream (throughput, memory) and several at
once (event-loop lateness).

One stream is uploaded from each kind of source an application hands over
(:mod:`benchmarks._sources`). Every upload also runs a 1 ms ticker to
measure event-loop lateness.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from benchmarks._context import Context, Job, empty_dir, extra, memory_mib, throughput_mib_s
from benchmarks._data import make_source_file
from benchmarks._harness import MIB, Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, Ticker, granite_local_manager, legacy_local_manager
from benchmarks._sources import SOURCES, open_source

__all__ = ["run_concurrent", "run_stream"]

CHUNK = MIB
_PUT: dict[str, Any] = {"storage_key": STORAGE_KEY, "model_name": "document", "field_name": "file"}


def _check(checksum: str, expected: str) -> None:
    if checksum != expected:
        raise RuntimeError(f"stored checksum {checksum} differs from the source's {expected}")


# -- workloads (run in child processes) ----------------------------------------------


async def granite_stream(
    timer: Timer, *, source: str, root: str, fsync: bool, expected: str, kind: str = "file",
    size: int = 0, detect: bool = True,
) -> dict[str, float]:  # fmt: skip
    manager = granite_local_manager(root, fsync=fsync, detect=detect)
    await manager.aput_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
    async with open_source(kind, source, size) as stream:
        # The timer first: its garbage collection must not count as lateness.
        with timer:
            async with Ticker() as ticker:
                ref = await manager.aput_stream(
                    **_PUT, entity_id=1, stream=stream, original_filename="big.bin"
                )
    _check(ref.checksum, expected)
    return {"max_lateness": ticker.max_lateness}


def baseline_stream(
    timer: Timer, *, source: str, root: str, fsync: bool, expected: str, **_: Any
) -> None:
    """Plain Python: read 1 MiB, hash it, write it, repeat."""
    digest = hashlib.sha256()
    with timer, open(source, "rb") as src, open(os.path.join(root, "copy.bin"), "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        if fsync:
            dst.flush()
            os.fsync(dst.fileno())
    _check(f"sha256:{digest.hexdigest()}", expected)


def legacy_stream(
    timer: Timer, *, source: str, root: str, fsync: bool, expected: str, **_: Any
) -> None:
    manager = legacy_local_manager(root)
    manager.put_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
    with open(source, "rb") as file, timer:
        ref = manager.put_stream(**_PUT, entity_id=1, stream=file, original_filename="big.bin")
    _check(ref.checksum, expected)


async def granite_concurrent(
    timer: Timer, *, source: str, root: str, uploads: int, expected: str
) -> dict[str, float]:
    manager = granite_local_manager(root, fsync=True)
    await manager.aput_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
    files = [open(source, "rb") for _ in range(uploads)]  # noqa: ASYNC230, SIM115 - setup
    try:
        # The timer first: its garbage collection must not count as lateness.
        with timer:
            async with Ticker() as ticker:
                refs = await asyncio.gather(
                    *(
                        manager.aput_stream(**_PUT, entity_id=i, stream=f)
                        for i, f in enumerate(files)
                    )
                )
    finally:
        for file in files:
            file.close()
    for ref in refs:
        _check(ref.checksum, expected)
    return {"max_lateness": ticker.max_lateness, "ticks": ticker.ticks}


async def idle_loop(timer: Timer, *, seconds: float) -> dict[str, float]:
    """The ticker alone: the lateness floor of an idle event loop."""
    with timer:
        async with Ticker() as ticker:
            await asyncio.sleep(seconds)
    return {"max_lateness": ticker.max_lateness, "ticks": ticker.ticks}


async def legacy_concurrent(
    timer: Timer, *, source: str, root: str, uploads: int, expected: str
) -> dict[str, float]:
    """0.1.0 is sync: each upload runs in a worker thread, as an async app would do."""
    import anyio.to_thread

    manager = legacy_local_manager(root)

    def upload(index: int) -> Any:
        with open(source, "rb") as file:
            return manager.put_stream(**_PUT, entity_id=index, stream=file)

    with timer:
        async with Ticker() as ticker:
            refs = await asyncio.gather(
                *(anyio.to_thread.run_sync(upload, i) for i in range(uploads))
            )
    for ref in refs:
        _check(ref.checksum, expected)
    return {"max_lateness": ticker.max_lateness, "ticks": ticker.ticks}


# -- scenarios (run in the parent) -----------------------------------------------------


def run_stream(ctx: Context) -> list[Row]:
    size = ctx.sizes.upload_mib * MIB
    scenario = f"local {ctx.sizes.upload_mib} MiB stream upload"
    data = ctx.scratch("stream")
    source = data / "source.bin"
    expected = make_source_file(source, size)
    root = data / "root"
    mod = "benchmarks.local_upload"
    rows = []
    for fsync in (False, True):
        kwargs = {"source": str(source), "root": str(root), "fsync": fsync, "expected": expected,
                  "size": size}  # fmt: skip
        kinds = list(SOURCES) if not fsync else ["file"]
        jobs = {kind: Job(f"{mod}:granite_stream", {**kwargs, "kind": kind}) for kind in kinds}
        jobs["plain"] = Job(f"{mod}:baseline_stream", kwargs)
        if not fsync:
            jobs["0.1.0"] = Job(f"{mod}:legacy_stream", kwargs, legacy=True)
        reset = empty_dir(root, warm=(source,), writes=size)
        out = ctx.compare(jobs, before_each=reset, warmup=True)
        base, old = out["plain"], out.get("0.1.0")
        base_label = "read+sha256+write" + ("+fsync" if fsync else "")
        speed = throughput_mib_s(size)
        for kind in kinds:
            granite = out[kind]
            name = f"{scenario} from {SOURCES[kind]} (fsync={fsync})"
            note = (
                "0.1.0 cannot fsync; compare it in the fsync=False row"
                if fsync
                else "baseline and 0.1.0 do not fsync either; 0.1.0 reads a sync file"
            )
            rows += [
                Row(name, "throughput", "MiB/s", True, granite.figure("granite_storage", speed),
                    [base.figure(base_label, speed, short="plain")],
                    ctx.legacy_figure(old, speed) if old else None,
                    [Target(">= 1.0x plain", 1.0, against=base_label)], note=note),
                Row(name, "CPU seconds", "s", False,
                    granite.figure("granite_storage", extra("cpu_seconds")),
                    [base.figure(base_label, extra("cpu_seconds"), short="plain")],
                    note="user+system CPU of the process over the upload, all threads"),
                Row(name, "peak RSS growth", "MiB", False,
                    granite.figure("granite_storage", memory_mib, worst=True),
                    [base.figure(base_label, memory_mib, worst=True, short="plain")],
                    ctx.legacy_figure(old, memory_mib, worst=True) if old else None,
                    [Target("<= 32 MiB", 32.0)], show_ratios=False),
                Row(name, "event-loop max lateness", "ms", False,
                    granite.figure("granite_storage", extra("max_lateness", 1000.0)),
                    targets=[Target("<= 10 ms", 10.0)], show_ratios=False),
            ]  # fmt: skip
    return rows


def run_concurrent(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    size = sizes.concurrent_mib * MIB
    scenario = f"{sizes.concurrent_uploads} concurrent {sizes.concurrent_mib} MiB local uploads"
    data = ctx.scratch("concurrent")
    source = data / "source.bin"
    expected = make_source_file(source, size)
    root = data / "root"
    reset = empty_dir(root, warm=(source,), writes=size * sizes.concurrent_uploads)
    kwargs = {
        "source": str(source),
        "root": str(root),
        "uploads": sizes.concurrent_uploads,
        "expected": expected,
    }
    mod = "benchmarks.local_upload"
    idle_seconds = max(0.5, size * sizes.concurrent_uploads / (300 * MIB))
    out = ctx.compare(
        {
            "granite": Job(f"{mod}:granite_concurrent", kwargs),
            "idle": Job(f"{mod}:idle_loop", {"seconds": idle_seconds}),
            "0.1.0": Job(f"{mod}:legacy_concurrent", kwargs, legacy=True),
        },
        before_each=reset,
        warmup=True,
    )
    granite, idle, old = out["granite"], out["idle"], out["0.1.0"]
    lateness = extra("max_lateness", 1000.0)
    total = throughput_mib_s(size * sizes.concurrent_uploads)
    return [
        Row(
            scenario,
            "event-loop max lateness",
            "ms",
            False,
            granite.figure("granite_storage", lateness),
            [idle.figure("idle loop", lateness, short="idle")],
            ctx.legacy_figure(old, lateness),
            [Target("<= 10 ms", 10.0)],
            show_ratios=False,
            note="1 ms ticker task; granite_storage with fsync=True; 0.1.0 in worker threads",
        ),
        Row(
            scenario,
            "total throughput",
            "MiB/s",
            True,
            granite.figure("granite_storage", total),
            [],
            ctx.legacy_figure(old, total),
        ),
    ]
