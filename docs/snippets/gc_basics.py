"""Garbage collection: dry run, grace period, max deletions, and the shared-backend refusal."""

import asyncio
from datetime import UTC, datetime, timedelta

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import UnsafeCollectionError
from granite_storage.gc import StorageGarbageCollector


async def main() -> None:
    # The memory backend takes a clock, so this script can age objects without sleeping.
    now = datetime.now(UTC)
    clock = [now - timedelta(hours=3)]
    backend = MemoryStorageBackend(clock=lambda: clock[0])
    manager = StorageManager(
        backends={"memory": backend},
        policies={
            "documents": StoragePolicy("documents", "memory", key_prefix="docs"),
            "avatars": StoragePolicy("avatars", "memory", key_prefix="avatars"),
        },
    )

    async def put(storage_key: str) -> StoredObjectRef:
        return await manager.aput_bytes(
            storage_key=storage_key, model_name="m", entity_id=1, field_name="f", content=b"x"
        )

    kept = await put("documents")  # referenced below
    await put("documents")  # three hours old, no reference: an orphan
    await put("documents")  # another
    await put("avatars")  # another policy's object, never touched by this collection
    clock[0] = now
    await put("documents")  # written just now, no reference yet: an upload in flight

    database = [kept, None]  # stands for the rows of your tables

    # --8<-- [start:collect]
    gc = StorageGarbageCollector(
        manager=manager,
        iter_references=lambda: iter(database),  # or an async iterator over your tables
        min_age=timedelta(hours=1),  # the grace period (the default)
    )
    report = await gc.acollect(storage_key="documents")  # dry_run=True is the default
    print(report)
    assert (report.scanned, report.referenced, report.orphaned) == (4, 1, 3)
    assert report.skipped_too_young == 1  # the upload in flight is kept
    assert report.eligible == 2  # would be deleted...
    assert report.deleted == 0  # ...but a dry run deletes nothing

    report = await gc.acollect(storage_key="documents", dry_run=False)
    assert report.deleted == 2
    assert report.ok  # no deletion failed
    # --8<-- [end:collect]
    assert len(backend) == 3  # the referenced object, the young one, the avatar

    # --8<-- [start:cap]
    for _ in range(5):
        clock[0] = now - timedelta(hours=2)
        await put("documents")
    report = await gc.acollect(storage_key="documents", dry_run=False, max_deletions=3)
    assert report.deleted == 3
    assert report.stopped_early
    print(report.stop_reason)  # reached max_deletions=3; more orphans remain
    # --8<-- [end:cap]

    # --8<-- [start:unsafe]
    shared = StorageManager(
        backends={"memory": backend},
        policies={
            "documents": StoragePolicy("documents", "memory"),  # no key_prefix
            "avatars": StoragePolicy("avatars", "memory", key_prefix="avatars"),
        },
    )
    collector = StorageGarbageCollector(shared, lambda: iter(database))
    try:
        await collector.acollect(storage_key="documents", dry_run=False)
    except UnsafeCollectionError as exc:
        print(exc)  # cannot collect policy 'documents': it shares its backend with ...
    else:
        raise AssertionError("a shared backend without prefixes was collected")
    # --8<-- [end:unsafe]
    print("gc basics: ok")


if __name__ == "__main__":
    asyncio.run(main())
