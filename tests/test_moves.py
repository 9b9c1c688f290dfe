"""Refs resolve to the backend they name; the collector during a move between backends."""

from __future__ import annotations

from datetime import timedelta

import pytest

from granite_storage import StorageManager, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import ConfigurationError, InvalidLocationError, ObjectNotFoundError
from granite_storage.gc import StorageGarbageCollector
from granite_storage.testing import manager_for


class NamedMemory(MemoryStorageBackend):
    backend_name = "store"  # two S3 buckets share one backend_name the same way


def two_backend_manager(policy_backend: str = "old") -> StorageManager:
    backends = {"old": NamedMemory(), "new": NamedMemory(), "store": MemoryStorageBackend()}
    own = backends.pop(policy_backend)  # the policy's, under its key
    return manager_for(own, "docs", backend_key=policy_backend, extra_backends=backends)


async def put(manager: StorageManager, content: bytes = b"data") -> StoredObjectRef:
    return await manager.aput_bytes(
        storage_key="docs", model_name="doc", entity_id=1, field_name="file", content=content
    )


async def test_new_writes_go_to_the_policy_backend_and_record_its_name() -> None:
    manager = two_backend_manager()
    ref = await put(manager)
    assert ref.backend == "store"  # the backend_name, as 0.1.0 wrote
    assert await manager.backends["old"].aexists(ref)
    assert not await manager.backends["new"].aexists(ref)
    # "store" is also a key, but it is the policy backend's own name: the policy wins.
    assert manager.get_backend_for_ref(ref) is manager.backends["old"]
    assert await manager.aget(ref) == b"data"


async def test_a_ref_naming_a_backend_key_resolves_there() -> None:
    manager = two_backend_manager()
    ref = await put(manager)
    await manager.backends["new"].aput_stream(key=ref.location, chunks=_chunks(b"moved"))
    moved = ref.replace(backend="new")

    assert manager.get_backend_for_ref(moved) is manager.backends["new"]
    assert await manager.aget(moved) == b"moved"
    assert await manager.aexists(moved)
    async with manager.aopen(moved, start=1, end=3) as reader:
        assert await reader.read() == b"ov"
    await manager.adelete(moved)
    assert not await manager.backends["new"].aexists(ref)
    assert await manager.backends["old"].aexists(ref)  # only the named backend


async def test_unknown_backend_names_fall_back_to_the_policy_backend() -> None:
    manager = two_backend_manager()
    ref = await put(manager)
    for legacy in ("local", "", "s3"):  # 0.1.0 rows, renamed backends
        assert await manager.aget(ref.replace(backend=legacy)) == b"data"
    # After switching the policy, unmoved refs follow the policy: migrate first.
    switched = two_backend_manager("new")
    switched.backends["old"] = manager.backends["old"]
    with pytest.raises(ObjectNotFoundError):
        await switched.aget(ref)
    assert await switched.aget(ref.replace(backend="old")) == b"data"


async def test_location_checks_stay_against_the_policy_prefix() -> None:
    manager = two_backend_manager()
    outside = StoredObjectRef("docs", "new", "other/doc/1/x", 1, "")
    for call in (manager.aget, manager.aexists, manager.adelete, manager.apresigned_url):
        with pytest.raises(InvalidLocationError):
            await call(outside)
    with pytest.raises(InvalidLocationError):
        manager.aopen(outside.replace(location="docs/../x"))


async def test_each_backend_is_collected_in_its_own_scope_and_keeps_every_referenced_object() -> (
    None
):
    manager = two_backend_manager()
    old, new = manager.backends["old"], manager.backends["new"]
    on_old = await put(manager, b"a")
    moved = await put(manager, b"b")
    orphan_old = await put(manager, b"c")
    # `moved` was copied to "new" and its ref rewritten; "new" also holds an orphan.
    await new.aput_stream(key=moved.location, chunks=_chunks(b"b"))
    await new.aput_stream(key="docs/doc/9/orphan", chunks=_chunks(b"z"))
    refs = [on_old, moved.replace(backend="new")]
    gc = StorageGarbageCollector(manager, lambda: refs, min_age=timedelta(0))

    report_old = await gc.acollect(storage_key="docs", dry_run=False)
    report_new = await gc.acollect(storage_key="docs", dry_run=False, backend_key="new")

    assert (report_old.scanned, report_old.deleted) == (3, 1)
    assert (report_new.scanned, report_new.deleted) == (2, 1)
    assert not await old.aexists(orphan_old)
    assert not await new.aexists(StoredObjectRef("docs", "new", "docs/doc/9/orphan", 1, ""))
    # A ref protects its location on every backend, whichever it names: the
    # source copy of `moved` stays until its deletion is asked for.
    for backend, ref in ((old, on_old), (old, moved), (new, moved)):
        assert await backend.aexists(ref)
    assert await manager.aget(refs[1]) == b"b"


async def test_delete_source_collects_the_copies_of_moved_refs_only() -> None:
    manager = two_backend_manager()
    old, new = manager.backends["old"], manager.backends["new"]
    moved, unmoved, legacy, orphan = [await put(manager, bytes([n])) for n in range(4)]
    for ref in (moved, unmoved, legacy):  # all three are on "new" too, say by a mirror
        await new.aput_stream(key=ref.location, chunks=_chunks(b"x"))
    refs = [moved.replace(backend="new"), unmoved, legacy.replace(backend="local")]
    switched = two_backend_manager("new")
    switched.backends.update(manager.backends)  # the same stores, policy on "new"
    gc = StorageGarbageCollector(switched, lambda: refs, min_age=timedelta(0))

    dry = await gc.acollect(storage_key="docs", backend_key="old", delete_source=True)
    done = await gc.acollect(
        storage_key="docs", backend_key="old", delete_source=True, dry_run=False
    )

    assert (dry.orphaned, dry.deleted, done.deleted) == (2, 0, 2)
    # Only a ref that names a backend by its key (what migrate writes after
    # verifying the copy) releases the source; a backend_name protects as before.
    assert not await old.aexists(moved) and not await old.aexists(orphan)
    assert await old.aexists(unmoved) and await old.aexists(legacy)
    assert all([await new.aexists(ref) for ref in (moved, unmoved, legacy)])
    assert await switched.aget(refs[0]) == b"x"


async def test_delete_source_refuses_what_could_delete_the_moved_copies() -> None:
    from granite_storage.backends.mirror import MirrorBackend

    manager = two_backend_manager()
    gc = StorageGarbageCollector(manager, list, min_age=timedelta(0))
    with pytest.raises(ConfigurationError, match="needs backend_key="):
        await gc.acollect(storage_key="docs", delete_source=True)
    with pytest.raises(ConfigurationError, match="switch the policy"):
        await gc.acollect(storage_key="docs", backend_key="old", delete_source=True)
    # Step 1 of a move: "old" is a mirror that also writes to "new".
    new = NamedMemory()
    mirror = MirrorBackend(NamedMemory(), new)
    mirrored = manager_for(new, "docs", backend_key="new", extra_backends={"old": mirror})
    await mirrored.backends["old"].aput_stream(key="docs/doc/1/a", chunks=_chunks(b"a"))
    gc = StorageGarbageCollector(mirrored, list, min_age=timedelta(0))
    with pytest.raises(ConfigurationError, match="writes to the same storage as 'new'"):
        await gc.acollect(storage_key="docs", backend_key="old", delete_source=True, dry_run=False)
    assert await new.aexists(StoredObjectRef("docs", "new", "docs/doc/1/a", 1, ""))


async def test_collecting_an_unknown_backend_is_a_configuration_error() -> None:
    gc = StorageGarbageCollector(two_backend_manager(), list, min_age=timedelta(0))
    with pytest.raises(ConfigurationError, match="unknown backend 'nope'"):
        await gc.acollect(storage_key="docs", backend_key="nope")


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data
