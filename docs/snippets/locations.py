"""What a location looks like, and why no input can make it escape."""

import asyncio

from granite_storage import InvalidLocationError, StorageManager, StoragePolicy
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.locations import build_location, sanitize_segment


async def main() -> None:
    # --8<-- [start:build]
    location = build_location(
        key_prefix="tenant-1/docs",
        model_name="Document",
        entity_id="Résumé 2024/../../etc",
        field_name="file",
        original_filename="../../passwd\x00.PDF",
    )
    print(location)
    # tenant-1/docs/Document/Resume-2024-..-..-etc/file/5d0c...e1.pdf
    # --8<-- [end:build]
    segments = location.split("/")
    assert segments[:5] == ["tenant-1", "docs", "Document", "Resume-2024-..-..-etc", "file"]
    assert segments[5].endswith(".pdf")
    assert len(segments) == 6

    # --8<-- [start:sanitize]
    assert sanitize_segment("Résumé") == "Resume"
    assert sanitize_segment("a b/c") == "a-b-c"
    assert sanitize_segment(".hidden") == "hidden"
    for hostile in ("..", "/", "\x00", "???"):
        try:
            sanitize_segment(hostile)
        except InvalidLocationError as exc:
            print(exc)  # segment '..' has no safe characters left for a storage location; ...
        else:
            raise AssertionError(f"{hostile!r} was accepted")
    # --8<-- [end:sanitize]

    # --8<-- [start:refs]
    manager = StorageManager(
        backends={"memory": MemoryStorageBackend()},
        policies={"docs": StoragePolicy("docs", "memory", key_prefix="docs")},
    )
    ref = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"x"
    )
    # A ref read from the database is checked before any I/O:
    for bad in ("../../etc/passwd", "/etc/passwd", "docs/../../x", "avatars/m/1/f/x"):
        try:
            await manager.aget(ref.replace(location=bad))
        except InvalidLocationError as exc:
            print(exc.status_code, exc)  # 400 location '../../etc/passwd' has an empty, ...
        else:
            raise AssertionError(f"{bad!r} was read")
    # --8<-- [end:refs]
    print("locations: ok")


if __name__ == "__main__":
    asyncio.run(main())
