"""Every source aput_stream accepts, and the size limit leaving nothing behind."""

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator

import aiofiles
import anyio

from granite_storage import ContentTooLargeError, StorageManager, StoragePolicy
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.streams import ByteSource


async def main(tmp: anyio.Path) -> None:
    backend = LocalStorageBackend(tmp / "storage")
    manager = StorageManager(
        backends={"local": backend},
        policies={"videos": StoragePolicy("videos", "local", max_size=1024, key_prefix="videos")},
    )

    async def put(stream: ByteSource) -> int:
        ref = await manager.aput_stream(
            storage_key="videos",
            model_name="lesson",
            entity_id=7,
            field_name="video",
            stream=stream,
            original_filename="intro.mp4",
        )
        return ref.size

    path = tmp / "intro.mp4"
    await path.write_bytes(b"x" * 600)

    # --8<-- [start:sources]
    async def generate() -> AsyncIterator[bytes]:
        yield b"a" * 300
        yield b"b" * 300

    # An async iterable of bytes: a generator, httpx's response.aiter_bytes(), ...
    assert await put(generate()) == 600

    # An object with async read(n): Starlette's UploadFile, aiofiles and anyio files.
    async with aiofiles.open(path, "rb") as afile:
        assert await put(afile) == 600
    async with await anyio.open_file(path, "rb") as anyio_file:
        assert await put(anyio_file) == 600

    # A sync binary file: every read(n) runs in a worker thread.
    file = await anyio.to_thread.run_sync(open, path, "rb")
    try:
        assert await put(file) == 600
    finally:
        await anyio.to_thread.run_sync(file.close)

    # In memory: bytes, io.BytesIO (read inline: it cannot block), a list of chunks.
    assert await put(b"x" * 600) == 600
    assert await put(io.BytesIO(b"x" * 600)) == 600
    assert await put([b"x" * 300, b"y" * 300]) == 600
    # --8<-- [end:sources]

    # --8<-- [start:limit]
    async def endless() -> AsyncIterator[bytes]:
        while True:  # a client that never stops sending
            yield b"z" * 100

    error = None
    try:
        await put(endless())
    except ContentTooLargeError as exc:
        error = exc
        print(exc)  # content is larger than the limit of 1024 bytes (received 1100 bytes so far)
    assert error is not None
    assert error.max_size == 1024
    assert error.status_code == 413
    # Nothing of the refused upload remains: only the seven uploads above are stored.
    assert len([loc async for loc in backend.aiter_locations("videos")]) == 7
    # --8<-- [end:limit]
    print("streaming sources: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(anyio.Path(tmp)))
