"""The garbage collector on the memory and local backends."""

from __future__ import annotations

import ast
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import granite_storage.gc
from granite_storage import StorageError, StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import TEMP_DIR_NAME, TEMP_PREFIX
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import BatchDeleteResult, InUse, StorageBackend
from granite_storage.errors import BackendError, ConfigurationError, UnsafeCollectionError
from granite_storage.gc import (
    GarbageCollectionProgress,
    GarbageCollectionReport,
    StorageGarbageCollector,
)
from granite_storage.gc._deletions import adelete_counted, stop_at_cap
from granite_storage.integrations.sqlalchemy import (
    iter_metadata_storage_refs,
    iter_model_storage_refs,
)
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend
from tests.gc_support import (
    OLD,
    Clock,
    GcAttachment,
    GcBase,
    GcDocument,
    ListingBackend,
    Store,
    aset_mtime,
    make_store,
)

if TYPE_CHECKING:
    from granite_storage.backends.s3 import S3StorageBackend

NOW = timedelta(0)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request.param, tmp_path)


def collector(store: Store, refs: Any, **kwargs: Any) -> StorageGarbageCollector:
    """A collector whose reference source returns ``refs`` (any iterable, or a bad value)."""
    return StorageGarbageCollector(store.manager, lambda: refs, **kwargs)


# --------------------------------------------------------------------------- report


async def test_report_counts_and_a_real_run_deletes_only_old_orphans(store: Store) -> None:
    kept = [await store.aput() for _ in range(3)]
    old_orphans = [await store.aput(content=b"x" * 10), await store.aput(content=b"y" * 20)]
    young_orphan = await store.aput(age=NOW)
    refs = [*kept, None]

    dry = await collector(store, refs).acollect(storage_key="docs")

    assert (dry.scanned, dry.referenced, dry.orphaned, dry.deleted) == (6, 3, 3, 0)
    assert dry.skipped_too_young == 1
    assert dry.eligible == 2
    assert dry.references_read == 4
    assert dry.dry_run is True
    assert sorted(dry.orphan_sample) == sorted(ref.location for ref in old_orphans)
    assert await store.alocations() == {ref.location for ref in store.written}

    report = await collector(store, refs).acollect(storage_key="docs", dry_run=False)

    assert (report.scanned, report.referenced, report.orphaned, report.deleted) == (6, 3, 3, 2)
    assert report.bytes_freed == 30
    assert report.failed == 0 and report.ok
    assert report.orphan_sample == []
    remaining = await store.alocations()
    assert remaining == {ref.location for ref in [*kept, young_orphan]}


async def test_dry_run_is_the_default(store: Store) -> None:
    orphan = await store.aput()
    report = await collector(store, []).acollect(storage_key="docs")
    assert report.dry_run is True
    assert report.eligible == 1
    assert report.deleted == 0
    assert await store.alocations() == {orphan.location}


async def test_report_is_readable_and_json_serialisable(store: Store) -> None:
    await store.aput()
    report = await collector(store, []).acollect(storage_key="docs")
    text = str(report)
    assert "dry run" in text
    assert "scanned            1 objects" in text
    assert store.written[0].location in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["orphaned"] == 1
    assert data["storage_key"] == "docs"
    assert data["min_age_seconds"] == 3600.0


def test_report_defaults_keep_the_old_constructor() -> None:
    report = GarbageCollectionReport(1, 2, 3, 4)
    assert (report.scanned, report.referenced, report.orphaned, report.deleted) == (1, 2, 3, 4)
    assert report.failures == [] and report.ok


# --------------------------------------------------------------------------- scope


async def test_prefix_boundary_keeps_the_neighbouring_policy(store: Store) -> None:
    docs_orphan = await store.aput("docs")
    docs2_orphan = await store.aput("docs2")
    docs2_ref = await store.aput("docs2")

    report = await collector(store, [docs2_ref]).acollect(storage_key="docs", dry_run=False)

    assert report.scanned == 1
    assert report.referenced == 0  # the docs2 ref does not count for docs
    assert report.deleted == 1
    assert await store.alocations() == {docs2_orphan.location, docs2_ref.location}
    assert docs_orphan.location not in await store.alocations()


async def test_a_ref_of_another_policy_protects_the_object(store: Store) -> None:
    obj = await store.aput("docs")
    foreign = obj.replace(storage_key="docs2")  # e.g. a row copied between models
    report = await collector(store, [foreign]).acollect(storage_key="docs", dry_run=False)
    assert report.referenced == 0
    assert report.orphaned == 0
    assert await store.alocations() == {obj.location}


@pytest.mark.parametrize(
    ("prefix_a", "prefix_b"),
    [(None, "docs"), ("docs", None), (None, None), ("docs", "docs"), ("docs", "docs/sub")],
)
async def test_policies_sharing_a_backend_without_separate_prefixes_are_refused(
    prefix_a: str | None, prefix_b: str | None
) -> None:
    backend = MemoryStorageBackend()
    manager = manager_for(
        backend,
        StoragePolicy("a", "main", key_prefix=prefix_a),
        StoragePolicy("b", "main", key_prefix=prefix_b),
    )
    orphan = await manager.aput_bytes(
        storage_key="b", model_name="m", entity_id=1, field_name="f", content=b"b"
    )
    gc = StorageGarbageCollector(manager, list, min_age=NOW)
    for key in ("a", "b"):
        with pytest.raises(UnsafeCollectionError, match="own key_prefix") as info:
            await gc.acollect(storage_key=key, dry_run=False)
        assert "0.1.0" in str(info.value)
    assert await backend.aexists(orphan)


def unprefixed_a_and_b(one: StorageBackend, two: StorageBackend) -> StorageManager:
    """Policy "a" on backend key "one", "b" on "two", neither with a prefix."""
    policies = (StoragePolicy("a", "one"), StoragePolicy("b", "two"))
    return manager_for(one, *policies, backend_key="one", extra_backends={"two": two})


async def test_one_backend_instance_under_two_backend_keys_is_refused() -> None:
    backend = MemoryStorageBackend()
    manager = unprefixed_a_and_b(backend, backend)
    with pytest.raises(UnsafeCollectionError):
        await StorageGarbageCollector(manager, list).acollect(storage_key="a")


async def test_policies_on_separate_backends_need_no_prefix() -> None:
    second = MemoryStorageBackend()
    manager = unprefixed_a_and_b(MemoryStorageBackend(), second)
    await manager.aput_bytes(
        storage_key="b", model_name="m", entity_id=1, field_name="f", content=b""
    )
    report = await StorageGarbageCollector(manager, list, min_age=NOW).acollect(
        storage_key="a", dry_run=False
    )
    assert report.scanned == 0
    assert len(second) == 1


async def test_a_listing_beyond_the_prefix_is_never_acted_on() -> None:
    clock = Clock()
    backend = ListingBackend(clock=clock, ignore_prefix=True)
    manager = manager_for(backend, "docs", "docs2")
    outside = await manager.aput_bytes(
        storage_key="docs2", model_name="m", entity_id=1, field_name="f", content=b""
    )
    report = await StorageGarbageCollector(manager, list, min_age=NOW).acollect(
        storage_key="docs", dry_run=False
    )
    assert report.scanned == 0
    assert await backend.aexists(outside)


async def test_unknown_storage_key_is_a_storage_error(store: Store) -> None:
    with pytest.raises(StorageError, match="unknown storage key"):
        await collector(store, []).acollect(storage_key="nope")


# --------------------------------------------------------------------------- age


async def test_min_age_keeps_fresh_orphans_and_can_be_overridden(store: Store) -> None:
    fresh = await store.aput(age=timedelta(minutes=10))
    gc = collector(store, [])

    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert (report.orphaned, report.skipped_too_young, report.deleted) == (1, 1, 0)
    assert await store.alocations() == {fresh.location}

    report = await gc.acollect(storage_key="docs", dry_run=False, min_age=timedelta(minutes=5))
    assert (report.skipped_too_young, report.deleted) == (0, 1)
    assert await store.alocations() == set()


async def test_min_age_zero_deletes_what_was_written_before_the_run(store: Store) -> None:
    orphan = await store.aput(age=timedelta(seconds=1))
    report = await collector(store, [], min_age=NOW).acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 1
    assert not await store.backend.aexists(orphan)


class CoarseMemoryBackend(MemoryStorageBackend):
    timestamp_resolution = timedelta(seconds=1)


async def test_the_backend_timestamp_resolution_is_allowed_for() -> None:
    start = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    clock = Clock()
    backend = CoarseMemoryBackend(clock=clock)
    manager = manager_for(backend, StoragePolicy("docs", "main"))
    written = {}
    for name, seconds_before_cutoff in (("borderline", 0.5), ("exact", 1.0), ("old", 1.5)):
        clock.now = start - timedelta(minutes=10, seconds=seconds_before_cutoff)
        written[name] = await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=name, field_name="f", content=b""
        )
    gc = StorageGarbageCollector(manager, list, min_age=timedelta(minutes=10), clock=lambda: start)
    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert report.skipped_too_young == 1
    assert report.deleted == 2
    assert await backend.aexists(written["borderline"])
    assert not await backend.aexists(written["exact"])
    assert report.cutoff == start - timedelta(minutes=10)


async def test_an_object_written_during_the_run_is_never_deleted(store: Store) -> None:
    """Its ref is committed after the references were read (so it is not yielded),
    yet the cutoff fixed before reading protects it, even with min_age=0."""
    kept = await store.aput()
    written_during_run: list[StoredObjectRef] = []

    async def references() -> AsyncIterator[StoredObjectRef]:
        yield kept
        written_during_run.append(await store.aput(age=NOW))
        yield kept

    gc = StorageGarbageCollector(store.manager, references, min_age=NOW)
    report = await gc.acollect(storage_key="docs", dry_run=False)

    assert report.deleted == 0
    assert await store.alocations() == {kept.location, written_during_run[0].location}


async def test_a_reference_yielded_mid_run_protects_its_object(store: Store) -> None:
    kept = await store.aput()

    async def references() -> AsyncIterator[StoredObjectRef]:
        yield kept
        yield await store.aput(age=NOW)

    report = await StorageGarbageCollector(store.manager, references, min_age=NOW).acollect(
        storage_key="docs", dry_run=False
    )
    assert report.referenced == 2
    assert report.deleted == 0
    assert len(await store.alocations()) == 2


# --------------------------------------------------------------------------- cap, failures


async def test_max_deletions_stops_the_run_and_says_so(store: Store) -> None:
    for _ in range(5):
        await store.aput()
    gc = collector(store, [], max_deletions=2)

    dry = await gc.acollect(storage_key="docs")
    assert dry.stopped_early and dry.eligible == 2
    assert len(dry.orphan_sample) == 2

    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 2
    assert report.stopped_early is True
    assert report.stop_reason is not None and "max_deletions=2" in report.stop_reason
    assert "stopped early" in str(report)
    assert len(await store.alocations()) == 3

    override = await gc.acollect(storage_key="docs", dry_run=False, max_deletions=3)
    assert override.deleted == 3
    assert override.stopped_early is False  # nothing was left to delete
    assert await store.alocations() == set()


async def test_max_deletions_zero_deletes_nothing(store: Store) -> None:
    await store.aput()
    report = await collector(store, [], max_deletions=0).acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 0
    assert report.stopped_early
    assert len(await store.alocations()) == 1


async def test_a_failing_delete_is_counted_and_the_run_goes_on(store: Store) -> None:
    orphans = [await store.aput() for _ in range(3)]
    store.backend.fail_on.add(orphans[1].location)

    report = await collector(store, []).acollect(storage_key="docs", dry_run=False)

    assert report.deleted == 2
    assert report.failed == 1
    assert not report.ok
    [(location, reason)] = report.failures
    assert location == orphans[1].location
    assert "simulated failure" in reason
    assert await store.alocations() == {orphans[1].location}
    assert "simulated failure" in str(report)


async def test_a_batch_that_raises_counts_every_location_as_failed() -> None:
    class BrokenBatches(MemoryStorageBackend):
        async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
            raise BackendError("the whole request failed")

    backend = BrokenBatches()
    manager = manager_for(backend, StoragePolicy("docs", "main"))
    for i in range(3):
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b""
        )
    report = await StorageGarbageCollector(manager, list, min_age=NOW).acollect(
        storage_key="docs", dry_run=False
    )
    assert (report.deleted, report.failed, len(report.failures)) == (0, 3, 3)
    assert len(backend) == 3


async def test_deletions_run_in_bounded_concurrent_batches() -> None:
    backend = ListingBackend(clock=Clock())
    manager = manager_for(backend, StoragePolicy("docs", "main"))
    for i in range(23):
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b"ab"
        )
    gc = StorageGarbageCollector(manager, list, min_age=NOW, batch_size=5, delete_concurrency=2)
    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 23
    assert report.bytes_freed == 46
    assert sorted(backend.deleted_batches) == [3, 5, 5, 5, 5]
    assert backend.max_in_flight == 2
    assert len(backend) == 0


# --------------------------------------------------------------------------- counting deletions
# granite_storage.gc._deletions: how every collector (this package's and the object
# ledger's) counts a batch.


async def test_a_batch_result_is_counted_in_the_report(caplog: pytest.LogCaptureFixture) -> None:
    async def partly(locations: list[str]) -> BatchDeleteResult:
        assert locations == ["a", "b", "c", "d"]
        return BatchDeleteResult(deleted=["a", "c"], failed={"b": "denied"})

    report = GarbageCollectionReport()
    with caplog.at_level(logging.WARNING, logger="granite_storage.gc"):
        deleted = await adelete_counted(report, partly, {"a": 10, "b": 20, "c": None, "d": 5})

    assert deleted == ["a", "c"]
    assert (report.deleted, report.bytes_freed, report.failed) == (2, 10, 1)
    assert report.failures == [("b", "denied")]
    assert report.skipped_in_use == 1  # "d": neither deleted nor failed
    assert "could not delete 1 of 4 objects, e.g. 'b': denied" in caplog.text


async def test_a_batch_that_raises_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(locations: list[str]) -> BatchDeleteResult:
        raise BackendError("the whole request failed")

    report = GarbageCollectionReport()
    with caplog.at_level(logging.WARNING, logger="granite_storage.gc"):
        assert await adelete_counted(report, broken, {"a": 1, "b": None}) == []

    reason = "BackendError: the whole request failed"
    assert report.failures == [("a", reason), ("b", reason)]
    assert (report.deleted, report.failed, report.skipped_in_use) == (0, 2, 0)
    assert f"deleting a batch of 2 objects failed: {reason}" in caplog.text


def test_stop_at_cap_says_why() -> None:
    report = GarbageCollectionReport()
    stop_at_cap(report, 3)
    assert report.stopped_early
    assert report.stop_reason == "reached max_deletions=3; more orphans remain"


def test_the_gc_package_and_the_cli_import_no_integration() -> None:
    """Core never imports an integration: the ledger's collector plugs into gc, not the reverse."""
    package = Path(granite_storage.gc.__file__).parent
    for path in [*package.glob("*.py"), package.parent / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                assert not module.startswith("granite_storage.integrations"), (path, module)


# --------------------------------------------------------------------------- references


async def test_references_from_a_sync_iterable_are_read_in_one_worker_thread(store: Store) -> None:
    kept = [await store.aput() for _ in range(3)]
    orphan = await store.aput()
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def references() -> Iterator[StoredObjectRef | None]:
        for i in range(2500):  # several batches
            threads.add(threading.get_ident())
            yield kept[i % 3] if i % 2 else None

    report = await StorageGarbageCollector(store.manager, references).acollect(
        storage_key="docs", dry_run=False
    )
    assert len(threads) == 1 and loop_thread not in threads
    assert report.references_read == 2500
    assert report.referenced == 1250
    assert report.deleted == 1
    assert await store.alocations() == {ref.location for ref in kept}
    assert orphan.location not in await store.alocations()


async def test_references_from_an_async_iterable(store: Store) -> None:
    kept = await store.aput()
    await store.aput()

    async def references() -> AsyncIterator[StoredObjectRef | None]:
        yield None
        await anyio.lowlevel.checkpoint()
        yield kept

    report = await StorageGarbageCollector(store.manager, references).acollect(
        storage_key="docs", dry_run=False
    )
    assert (report.referenced, report.orphaned, report.deleted) == (1, 1, 1)
    assert await store.alocations() == {kept.location}


async def test_references_are_read_while_the_listing_waits_in_a_bounded_buffer() -> None:
    backend = ListingBackend(clock=Clock())
    manager = manager_for(backend, StoragePolicy("docs", "main"))
    refs = [
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b""
        )
        for i in range(200)
    ]
    produced_when_references_were_read: list[int] = []

    async def references() -> AsyncIterator[StoredObjectRef]:
        for ref in refs:
            await anyio.lowlevel.checkpoint()  # give the listing every chance to run ahead
            yield ref
        produced_when_references_were_read.append(backend.produced)

    gc = StorageGarbageCollector(manager, references, listing_buffer=10, min_age=NOW)
    report = await gc.acollect(storage_key="docs", dry_run=False)
    # The listing started at once but stopped once the buffer was full: one chunk
    # of listing_buffer objects in the stream, one more waiting to be sent.
    assert 0 < produced_when_references_were_read[0] <= 2 * 10
    assert report.scanned == 200 and report.deleted == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cancelled_run_stops_an_endless_reference_source(store: Store, kind: str) -> None:
    await store.aput()
    closed: list[bool] = []

    def endless() -> Iterator[None]:
        try:
            while True:
                yield None
        finally:
            closed.append(True)

    async def aendless() -> AsyncIterator[None]:
        try:
            while True:
                yield None
        finally:
            closed.append(True)

    gc = StorageGarbageCollector(store.manager, endless if kind == "sync" else aendless)
    with anyio.move_on_after(0.2) as scope:
        await gc.acollect(storage_key="docs", dry_run=False, min_age=NOW)
    assert scope.cancelled_caught
    assert closed == [True]  # the source was closed, in its thread for a sync one
    assert len(await store.alocations()) == 1


async def test_a_failing_reference_source_deletes_nothing(store: Store) -> None:
    await store.aput()

    async def references() -> AsyncIterator[StoredObjectRef]:
        yield store.written[0]
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError, match="database went away"):
        await StorageGarbageCollector(store.manager, references, min_age=NOW).acollect(
            storage_key="docs", dry_run=False
        )
    assert len(await store.alocations()) == 1


async def test_a_failing_listing_raises_its_error_and_deletes_nothing() -> None:
    backend = ListingBackend(clock=Clock(), fail_after=1)
    manager = manager_for(backend, StoragePolicy("docs", "main"))
    for i in range(3):
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b""
        )
    with pytest.raises(BackendError, match="simulated listing failure"):
        await StorageGarbageCollector(manager, list, min_age=NOW).acollect(
            storage_key="docs", dry_run=False
        )
    assert len(backend) == 3


@pytest.mark.parametrize(
    "items", [[("docs", "a")], [{"storage_key": "docs"}], ["docs/document/0/file/x"]]
)
async def test_items_that_are_not_refs_are_refused(store: Store, items: list[object]) -> None:
    await store.aput()
    with pytest.raises(ConfigurationError, match="must yield StoredObjectRef or None"):
        await collector(store, items, min_age=NOW).acollect(storage_key="docs", dry_run=False)
    assert len(await store.alocations()) == 1


async def test_a_source_returning_an_awaitable_is_refused(store: Store) -> None:
    async def references() -> list[StoredObjectRef]:
        return []

    gc = StorageGarbageCollector(store.manager, references)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="awaitable"):
        await gc.acollect(storage_key="docs")


# --------------------------------------------------------------------------- leftovers


async def test_stale_temporary_files_are_leftovers(tmp_path: Path) -> None:
    store = make_store("local", tmp_path)
    await store.aput()  # creates the root

    def temp(directory: str, target: str | None) -> Path:
        name = ".".join(filter(None, [TEMP_PREFIX, uuid.uuid4().hex, target, "part"]))
        return store.path(f"{directory}/{name}")

    # Temporary files lie next to their target and name it.
    stale, fresh = temp("docs/m/1", "a"), temp("docs/m/1", "b")
    other = temp("docs2/m/1", "c")  # policy docs2's upload
    unnamed = temp("docs/m/2", None)  # a target name too long to record
    # The shared temporary directory of earlier versions is still swept.
    legacy_dir = store.path(TEMP_DIR_NAME)
    legacy, legacy_other = legacy_dir / "1.docs%2Fm%2F3%2Fd.part", legacy_dir / "3.docs2%2Fe.part"
    unknown = legacy_dir / "4.part"  # no target in the name: kept
    every = (stale, fresh, other, unnamed, legacy, legacy_other, unknown)
    for path in every:
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(path).write_bytes(b"half an upload")
    for path in (stale, other, unnamed, legacy, legacy_other, unknown):
        await aset_mtime(path, datetime.now(UTC) - OLD)
    gc = collector(store, store.written, leftover_min_age=timedelta(hours=1))

    dry = await gc.acollect(storage_key="docs")
    assert dry.leftovers_removed == 3
    assert all([await anyio.Path(path).exists() for path in every])

    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert report.leftovers_removed == 3
    assert report.scanned == 1  # temporary files are never listed as objects
    for gone in (stale, unnamed, legacy):
        assert not await anyio.Path(gone).exists()
    assert not await anyio.Path(unnamed.parent).exists()  # the directory it left empty
    for kept in (fresh, other, legacy_other, unknown):  # fresh; another policy's; unknown
        assert await anyio.Path(kept).exists()

    skipped = await collector(store, [], cleanup_leftovers=False).acollect(storage_key="docs")
    assert skipped.leftovers_removed == 0
    default = await collector(store, []).acollect(storage_key="docs2", dry_run=False)
    assert default.leftovers_removed == 0  # idle 2 h: younger than the default 24 h
    assert await anyio.Path(other).exists()


async def test_leftovers_get_the_cutoff_and_the_dry_run_flag() -> None:
    calls: list[tuple[str | None, datetime, bool]] = []

    class WithLeftovers(CoarseMemoryBackend):
        async def _acleanup_leftovers(
            self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
        ) -> int:
            calls.append((prefix, older_than, dry_run))
            return 4

    start = datetime(2030, 1, 1, tzinfo=UTC)
    manager = manager_for(WithLeftovers(), "docs")
    gc = StorageGarbageCollector(manager, list, clock=lambda: start)
    assert (await gc.acollect(storage_key="docs")).leftovers_removed == 4
    report = await gc.acollect(storage_key="docs", dry_run=False, min_age=NOW)
    assert report.leftovers_removed == 4
    long = await gc.acollect(storage_key="docs", min_age=timedelta(hours=30))
    short = await gc.acollect(storage_key="docs", leftover_min_age=timedelta(minutes=5))
    assert (long.leftovers_removed, short.leftovers_removed) == (4, 4)
    # Idle for the longer of min_age and leftover_min_age (24 h by default),
    # less S3's one-second timestamp resolution; only under the policy's prefix.
    assert calls == [
        ("docs", start - timedelta(hours=24, seconds=1), True),
        ("docs", start - timedelta(hours=24, seconds=1), False),
        ("docs", start - timedelta(hours=30, seconds=1), True),
        ("docs", start - timedelta(hours=1, seconds=1), True),
    ]


async def test_a_failing_leftover_cleanup_is_reported_not_raised() -> None:
    class BrokenLeftovers(MemoryStorageBackend):
        async def _acleanup_leftovers(
            self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
        ) -> int:
            raise BackendError("permission denied")

    manager = manager_for(BrokenLeftovers(), StoragePolicy("docs", "main"))
    report = await StorageGarbageCollector(manager, list).acollect(storage_key="docs")
    assert report.failed == 1
    assert "permission denied" in report.failures[0][1]


# --------------------------------------------------------------------------- progress, scale


async def test_progress_reports_each_phase(store: Store) -> None:
    kept = await store.aput()
    await store.aput()
    seen: list[GarbageCollectionProgress] = []
    gc = StorageGarbageCollector(
        store.manager, lambda: [kept], progress=seen.append, progress_every=1
    )
    await gc.acollect(storage_key="docs", dry_run=False)
    phases = [p.phase for p in seen]
    assert phases[0] == "references"
    assert phases[-2:] == ["leftovers", "done"]
    assert "sweep" in phases
    last = seen[-1]
    assert (last.references_read, last.scanned, last.orphaned, last.deleted) == (1, 2, 1, 1)
    assert "1 deleted" in str(last)


async def test_many_objects_and_references() -> None:
    """Linear work: 10,000 objects against 5,000 refs."""
    backend = MemoryStorageBackend()
    manager = manager_for(backend, StoragePolicy("docs", "main", key_prefix="d"))
    refs = [
        await manager.aput_bytes(
            storage_key="docs", model_name="m", entity_id=i, field_name="f", content=b""
        )
        for i in range(10_000)
    ]
    gc = StorageGarbageCollector(manager, lambda: iter(refs[::2]), min_age=NOW)
    report = await gc.acollect(storage_key="docs", dry_run=False)
    assert (report.scanned, report.referenced, report.deleted) == (10_000, 5_000, 5_000)
    assert len(backend) == 5_000
    assert all([await backend.aexists(ref) for ref in refs[::2][:100]])
    assert not any([await backend.aexists(ref) for ref in refs[1::2][:100]])


async def test_a_naive_clock_is_refused(store: Store) -> None:
    gc = StorageGarbageCollector(store.manager, list, clock=datetime.now)
    with pytest.raises(ValueError, match="aware datetime"):
        await gc.acollect(storage_key="docs")


@pytest.mark.parametrize("bad", [{"min_age": timedelta(seconds=-1)}, {"max_deletions": -1}])
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    manager = manager_for(MemoryStorageBackend(), StoragePolicy("docs", "main"))
    with pytest.raises(ValueError, match="must not be negative"):
        StorageGarbageCollector(manager, list, **bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- databases


async def test_references_streamed_from_a_database(db_engine: AsyncEngine) -> None:
    """Refs from SQLite and PostgreSQL, streamed in batches by iter_model_storage_refs."""
    async with db_engine.begin() as conn:
        await conn.run_sync(GcBase.metadata.create_all)
    store = make_store("memory", Path("unused"))
    kept = [await store.aput(content=b"kept") for _ in range(25)]
    orphans = [await store.aput(content=b"orphan") for _ in range(5)]
    young = await store.aput(age=timedelta(minutes=1))
    async with AsyncSession(db_engine) as session:
        session.add_all(GcDocument(file_ref=ref) for ref in kept)
        session.add_all(GcDocument(file_ref=None) for _ in range(3))
        await session.commit()

    async with AsyncSession(db_engine) as session:
        gc = StorageGarbageCollector(
            store.manager,
            lambda: iter_model_storage_refs(session, GcDocument, "file_ref", batch_size=4),
        )
        dry = await gc.acollect(storage_key="docs")
        report = await gc.acollect(storage_key="docs", dry_run=False)

    assert (dry.referenced, dry.eligible, dry.deleted) == (25, 5, 0)
    assert (report.scanned, report.referenced, report.orphaned) == (31, 25, 6)
    assert (report.deleted, report.skipped_too_young) == (5, 1)
    assert await store.alocations() == {ref.location for ref in [*kept, young]}
    assert not any([await store.backend.aexists(ref) for ref in orphans])


async def test_every_ref_column_of_a_metadata_protects(db_engine: AsyncEngine) -> None:
    """iter_metadata_storage_refs: refs of other policies and other tables are read too;
    a copy of a docs ref held under another storage key still protects its object."""
    async with db_engine.begin() as conn:
        await conn.run_sync(GcBase.metadata.create_all)
    store = make_store("memory", Path("unused"))
    in_document = await store.aput("docs")
    copied = await store.aput("docs")
    orphan = await store.aput("docs")
    docs2_kept = await store.aput("docs2")
    async with AsyncSession(db_engine) as session:
        session.add(GcDocument(file_ref=in_document))
        session.add(GcAttachment(ref=copied.replace(storage_key="docs2")))
        session.add(GcAttachment(ref=docs2_kept))
        await session.commit()

    async with AsyncSession(db_engine) as session:
        gc = StorageGarbageCollector(
            store.manager, lambda: iter_metadata_storage_refs(session, GcBase.metadata)
        )
        report = await gc.acollect(storage_key="docs", dry_run=False)

    assert (report.references_read, report.referenced, report.deleted) == (3, 1, 1)
    assert await store.alocations() == {
        in_document.location,
        copied.location,
        docs2_kept.location,
    }
    assert orphan.location not in await store.alocations()


# --------------------------------------------------------------------------- S3


@asynccontextmanager
async def s3_store(
    endpoint_url: str, bucket: str, session: Any
) -> AsyncIterator[tuple[S3StorageBackend, StorageManager]]:
    async with open_s3_backend(endpoint_url, bucket, session=session) as backend:
        manager = manager_for(backend, "docs", "docs2", backend_key="s3")
        yield backend, manager


async def s3_put(manager: StorageManager, storage_key: str = "docs") -> StoredObjectRef:
    return await manager.aput_bytes(
        storage_key=storage_key, model_name="m", entity_id=1, field_name="f", content=b"s3!"
    )


def two_seconds_later() -> datetime:
    """A collector clock for objects written just now: S3's LastModified has whole
    seconds, so only an object at least a second older than the cutoff may go."""
    return datetime.now(UTC) + timedelta(seconds=2)


@pytest.mark.s3
async def test_s3_orphans_are_deleted_in_batches_within_the_prefix(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with s3_store(s3_endpoint_url, s3_bucket, aioboto3_session) as (backend, manager):
        kept = await s3_put(manager)
        orphans = [await s3_put(manager) for _ in range(3)]
        neighbour = await s3_put(manager, "docs2")
        batches: list[list[str]] = []
        delete_many = backend.adelete_many

        async def spy(locations: Sequence[str]) -> BatchDeleteResult:
            batches.append(list(locations))
            return await delete_many(locations)

        backend.adelete_many = spy  # type: ignore[method-assign]
        gc = StorageGarbageCollector(manager, lambda: [kept], min_age=NOW, clock=two_seconds_later)

        dry = await gc.acollect(storage_key="docs")
        assert (dry.scanned, dry.eligible, dry.deleted, batches) == (4, 3, 0, [])

        report = await gc.acollect(storage_key="docs", dry_run=False)
        assert (report.scanned, report.referenced, report.deleted) == (4, 1, 3)
        assert report.bytes_freed == 9
        assert [sorted(batch) for batch in batches] == [sorted(ref.location for ref in orphans)]
        assert {loc async for loc in backend.aiter_locations()} == {
            kept.location,
            neighbour.location,
        }


@pytest.mark.s3
async def test_s3_min_age_against_last_modified(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with s3_store(s3_endpoint_url, s3_bucket, aioboto3_session) as (backend, manager):
        orphan = await s3_put(manager)
        gc = StorageGarbageCollector(manager, list, clock=two_seconds_later)

        report = await gc.acollect(storage_key="docs", dry_run=False)  # default: one hour
        assert (report.orphaned, report.skipped_too_young, report.deleted) == (1, 1, 0)
        assert await backend.aexists(orphan)

        report = await gc.acollect(storage_key="docs", dry_run=False, min_age=NOW)
        assert (report.skipped_too_young, report.deleted) == (0, 1)
        assert not await backend.aexists(orphan)


@pytest.mark.s3
async def test_s3_abandoned_multipart_upload_is_a_leftover(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with (
        s3_store(s3_endpoint_url, s3_bucket, aioboto3_session) as (_, manager),
        aioboto3_session.client(
            "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
        ) as client,
    ):
        # moto 5.2 lists every multipart upload as initiated on 2010-11-10
        # (moto/s3/responses.py), so only the "old enough" side can be shown here;
        # the cutoff the backend receives is checked on memory above.
        await client.create_multipart_upload(Bucket=s3_bucket, Key="docs/m/1/f/crashed")
        gc = StorageGarbageCollector(manager, list, clock=two_seconds_later)

        dry = await gc.acollect(storage_key="docs", min_age=NOW)
        assert dry.leftovers_removed == 1
        assert len((await client.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads", [])) == 1

        report = await gc.acollect(storage_key="docs", dry_run=False, min_age=NOW)
        assert report.leftovers_removed == 1
        assert report.scanned == 0  # an incomplete upload is not an object
        assert (await client.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads", []) == []
