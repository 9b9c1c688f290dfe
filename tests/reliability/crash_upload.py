"""The child process of the crash test: start one large upload and get killed in its middle.

``python -m tests.reliability.crash_upload '{"backend": "local", "root": ...,
"size": 67108864, "report_at": 33554432}'`` (or ``"backend": "s3"`` with
``"endpoint_url"`` and ``"bucket"``) streams ``size`` bytes through a
``StorageManager`` into policy ``docs``. Once ``report_at`` bytes have been
handed to the backend it prints ``MIDWAY <location>`` and keeps streaming
slowly, so that the parent's SIGKILL lands while bytes are moving. ``DONE``
is printed only if the upload ever finishes, which the parent treats as a
failure of the test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.testing import manager_for

_CHUNK = 1024 * 1024
#: After the report, one chunk per this many seconds: the kill comes long before the end.
_SLOW_DOWN = 0.2


def make_backend(config: dict[str, Any]) -> StorageBackend:
    """The backend the config names: ``local`` (``root``) or ``s3``
    (``endpoint_url``, ``bucket``; 5 MiB parts)."""
    if config["backend"] == "local":
        return LocalStorageBackend(config["root"], fsync=False)
    from granite_storage.backends.s3 import S3StorageBackend

    return S3StorageBackend(
        bucket=config["bucket"],
        client_kwargs={"endpoint_url": config["endpoint_url"], "region_name": "us-east-1"},
        part_size=5 * _CHUNK,
    )


async def _written(root: str | None, location: str) -> None:
    """Wait (up to 10 s) until the upload's temporary file, next to its
    target under ``root``, has bytes: the local backend's writer thread
    writes what the source yields a little later, so "handed over" is not
    yet "on disk"."""
    if root is None:
        return
    directory = os.path.join(root, os.path.dirname(location))
    with anyio.move_on_after(10):
        while True:
            entries = await anyio.to_thread.run_sync(_entries, directory)
            if any(entry.stat().st_size for entry in entries):
                return
            await anyio.sleep(0.01)  # polling a directory another thread writes to


def _entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:  # not made yet
        return []


async def _chunks(
    size: int, report_at: int, location: list[str], root: str | None
) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (_CHUNK // 256)
    sent = 0
    while sent < size:
        if sent >= report_at:
            if location:
                await _written(root, location[-1])
                print("MIDWAY", location.pop(), flush=True)
            await anyio.sleep(_SLOW_DOWN)
        chunk = block[: min(_CHUNK, size - sent)]
        sent += len(chunk)
        yield chunk


async def main(config: dict[str, Any]) -> None:
    backend = make_backend(config)
    manager = manager_for(backend, "docs", backend_key="store")
    async with manager:
        # The location is random: learn it from the backend's first call.
        location: list[str] = []
        put = backend.aput_stream

        async def aput_stream(*, key: str, chunks: AsyncIterator[bytes], **kwargs: Any) -> Any:
            location.append(key)
            return await put(key=key, chunks=chunks, **kwargs)

        backend.aput_stream = aput_stream  # type: ignore[method-assign]
        root = config["root"] if config["backend"] == "local" else None
        await manager.aput_stream(
            storage_key="docs",
            model_name="crash",
            entity_id=1,
            field_name="file",
            stream=_chunks(config["size"], config["report_at"], location, root),
        )
    print("DONE", flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
