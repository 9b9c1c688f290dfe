"""StoredObjectRef: JSON round trip, immutability, cleaned names, 0.1.0 rows."""

import asyncio
import dataclasses
import json

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend


async def main() -> None:
    manager = StorageManager(
        backends={"memory": MemoryStorageBackend()},
        policies={"docs": StoragePolicy("docs", "memory", key_prefix="docs")},
    )
    # --8<-- [start:roundtrip]
    ref = await manager.aput_bytes(
        storage_key="docs",
        model_name="document",
        entity_id=1,
        field_name="file",
        content=b"hello",
        original_filename="notes\x00.txt",  # NUL: PostgreSQL's JSONB cannot store it
    )
    assert ref.original_filename == "notes.txt"
    assert ref.content_type == "text/plain"

    text = json.dumps(ref.to_dict())  # what the JSON column holds
    assert StoredObjectRef.from_dict(json.loads(text)) == ref

    try:
        ref.size = 0  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass  # refs are immutable...
    else:
        raise AssertionError("a ref was changed in place")
    renamed = ref.replace(original_filename="renamed.txt")  # ...replace() returns a new one
    assert renamed.location == ref.location
    assert renamed != ref
    # --8<-- [end:roundtrip]

    # --8<-- [start:legacy]
    # A row written by granite-storage 0.1.0 (unknown keys are ignored):
    old = StoredObjectRef.from_dict(
        {
            "storage_key": "docs",
            "backend": "memory",
            "location": "docs/document/1-3f2a9c0e.txt",
            "size": 5,
            "checksum": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "content_type": "text/plain",
            "original_filename": "notes.txt",
            "created_at": "2024-05-01T10:00:00+00:00",
            "extra": None,
        }
    )
    assert old.location == "docs/document/1-3f2a9c0e.txt"

    # A row of 0.1.0's documented text-to-ref migration holds the text itself:
    inline = StoredObjectRef.from_dict({"legacy_inline_text": "# Title\n"})
    assert inline.legacy_inline_text == "# Title\n"
    assert await manager.aget(inline) == b"# Title\n"  # read without any backend I/O
    # --8<-- [end:legacy]
    print("refs: ok")


if __name__ == "__main__":
    asyncio.run(main())
