"""Every kind of source an application hands to ``aput_stream``, over one
file: what the large-upload scenarios (local disk and S3) upload from.

The files are in the page cache (as the baselines' are); the generators make
their chunks in memory, one fresh copy per MiB (what a read from the page
cache costs), with the same bytes and checksum as the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiofiles
import anyio
import anyio.to_thread

from benchmarks._data import random_block
from benchmarks._harness import MIB

__all__ = ["SOURCES", "open_source"]

#: The kinds of source, by the name rows use.
SOURCES = {
    "file": "a sync file",
    "anyio": "an anyio file",
    "aiofiles": "an aiofiles file",
    "uploadfile": "an UploadFile on disk",
    "agen-1m": "async generator, 1 MiB chunks",
    "agen-64k": "async generator, 64 KiB chunks",
}


async def _generate(size: int, chunk: int, block: bytes) -> AsyncIterator[bytes]:
    """The bytes of :func:`~benchmarks._data.make_source_file`, made one MiB
    at a time (one copy each, as a read would) from its random ``block``
    (made before the measurement: computing it holds the loop ~15 ms) and
    yielded in pieces of ``chunk`` bytes."""
    for start in range(0, size, MIB):
        data = (start.to_bytes(8, "little") + block[8:])[: size - start]
        if chunk >= len(data):
            yield data
        else:
            view = memoryview(data)
            for offset in range(0, len(data), chunk):
                yield bytes(view[offset : offset + chunk])


@asynccontextmanager
async def open_source(kind: str, path: str, size: int) -> AsyncIterator[Any]:
    """Set up one kind of source (a key of :data:`SOURCES`) over the file at
    ``path`` of ``size`` bytes (not measured)."""
    if kind == "file":
        with open(path, "rb") as file:  # noqa: ASYNC230 - setup, not measured
            yield file
    elif kind == "anyio":
        async with await anyio.open_file(path, "rb") as afile:
            yield afile
    elif kind == "aiofiles":
        async with aiofiles.open(path, "rb") as aiofile:
            yield aiofile
    elif kind == "uploadfile":
        from starlette.datastructures import UploadFile

        # As Starlette's form parser makes it: spooled, rolled over past 1 MiB.
        spooled = tempfile.SpooledTemporaryFile(max_size=MIB)  # noqa: SIM115 - closed by the UploadFile

        def fill() -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, spooled, MIB)
            # Written back before the measurement, whose own writes (a file,
            # moto's spooled objects) would otherwise queue behind it.
            spooled.flush()
            os.fsync(spooled.fileno())
            spooled.seek(0)

        await anyio.to_thread.run_sync(fill)
        upload = UploadFile(spooled, size=size, filename="big.bin")
        try:
            yield upload
        finally:
            await upload.close()
    elif kind in ("agen-1m", "agen-64k"):
        yield _generate(size, MIB if kind == "agen-1m" else 64 * 1024, random_block(MIB))
    else:
        raise ValueError(f"unknown source kind {kind!r}: one of {', '.join(SOURCES)}")
