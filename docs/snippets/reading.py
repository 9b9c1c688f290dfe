"""Reading objects back: whole, streamed, by byte range, verified; and the errors."""

import asyncio
import tempfile

import anyio

from granite_storage import (
    ChecksumMismatchError,
    ObjectNotFoundError,
    StorageManager,
    StoragePolicy,
)
from granite_storage.backends.local import LocalStorageBackend


async def main(root: anyio.Path) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(root, fsync=False)},
        policies={"docs": StoragePolicy("docs", "local", key_prefix="docs")},
    )
    ref = await manager.aput_bytes(
        storage_key="docs",
        model_name="document",
        entity_id=1,
        field_name="file",
        content=b"0123456789" * 100,
    )

    # --8<-- [start:read]
    data = await manager.aget(ref)  # the whole object in memory: small objects only

    async with manager.aopen(ref) as reader:
        header = await reader.read(4)  # exactly 4 bytes, unless the object is shorter
        rest = [chunk async for chunk in reader]  # chunks of at most 1 MiB
    assert header + b"".join(rest) == data

    async with manager.aopen(ref, start=10, end=15) as reader:  # bytes 10..14
        assert await reader.read() == b"01234"
        assert reader.size == 5
    # --8<-- [end:read]

    # --8<-- [start:verify]
    # Someone edits the file behind the library's back...
    await (root / ref.location).write_bytes(b"tampered")

    error = None
    try:
        await manager.aget(ref, verify=True)
    except ChecksumMismatchError as exc:
        error = exc
    assert error is not None
    print(error.expected[:15], "!=", error.actual[:15])
    # --8<-- [end:verify]

    # --8<-- [start:missing]
    await manager.adelete(ref)
    await manager.adelete(ref)  # deleting twice is fine

    missing = None
    try:
        await manager.aget(ref)
    except ObjectNotFoundError as exc:
        missing = exc
    assert missing is not None
    assert missing.status_code == 404
    assert missing.location == ref.location
    # --8<-- [end:missing]
    print("reading: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(anyio.Path(tmp)))
