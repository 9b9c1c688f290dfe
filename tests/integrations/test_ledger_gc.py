"""LedgerGarbageCollector: listing-free collections and the listing audit."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import MetaData, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import BackendError, ConfigurationError
from granite_storage.gc import GarbageCollectionProgress
from granite_storage.integrations.sqlalchemy import drain_pending_deletions, ref_rewriter
from granite_storage.migrate import amigrate
from granite_storage.testing import memory_manager
from tests.integrations.ledger_support import (
    MIN_AGE,
    TABLE,
    Copy,
    CountingBackend,
    Doc,
    LedgerBase,
    LedgerEnv,
    amake_env,
)

OLD = MIN_AGE * 10


@pytest.fixture
async def lenv(db_engine: AsyncEngine) -> AsyncIterator[LedgerEnv]:
    env = await amake_env(db_engine)
    env.backend = CountingBackend(env.backend)
    env.configure(ledger=env.ledger)
    yield env
    await env.adrain()


def _counting(env: LedgerEnv) -> CountingBackend:
    assert isinstance(env.backend, CountingBackend)
    return env.backend


async def test_a_crash_orphan_is_deleted_without_listing(lenv: LedgerEnv) -> None:
    orphan = await lenv.aorphan_intent()
    _, kept = await lenv.acommitted_doc()
    lenv.clock.advance(OLD)
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.scanned, report.eligible, report.deleted, report.failed) == (1, 1, 1, 0)
    assert report.bytes_freed == 0  # unknown: recorded by the transaction that never committed
    assert await lenv.alocations() == {kept.location}
    assert await lenv.arows() == {kept.location: "live"}
    calls = _counting(lenv).calls
    assert calls["list"] == 1  # alocations() above; the collection listed nothing
    assert _counting(lenv).deleted == [orphan.location]


async def test_progress_is_reported_by_the_ledger_collection_and_the_audit(
    lenv: LedgerEnv,
) -> None:
    for _ in range(3):
        await lenv.aorphan_intent()
    lenv.clock.advance(OLD)
    seen: list[GarbageCollectionProgress] = []
    collector = lenv.collector(progress=seen.append, batch_size=1, cleanup_leftovers=True)
    report = await collector.acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 3
    # A phase change, and a call after each batch won: 3 of one, then the empty one.
    assert [p.phase for p in seen] == ["sweep", *["sweep"] * 4, "leftovers", "done"]
    assert [p.deleted for p in seen] == [0, 1, 2, 3, 3, 3, 3]
    assert {(p.storage_key, p.scanned, p.references_read) for p in seen} == {("docs", 3, 0)}
    assert all(a.elapsed <= b.elapsed for a, b in itertools.pairwise(seen))

    seen.clear()
    await lenv.acommitted_doc()
    await collector.aaudit(storage_key="docs")  # the listing run reports like the plain one
    assert (seen[0].phase, seen[-1].phase) == ("references", "done")
    assert (seen[-1].references_read, seen[-1].scanned) == (1, 1)

    seen.clear()
    await lenv.aorphan_intent()
    lenv.clock.advance(OLD)
    capped = lenv.collector(progress=seen.append, max_deletions=0)
    assert (await capped.acollect(storage_key="docs")).orphaned == 0  # a dry run capped at 0
    assert [(p.phase, p.scanned, p.orphaned) for p in seen] == [("sweep", 1, 1), ("done", 1, 0)]

    with pytest.raises(ValueError, match="progress_every must be at least 1"):
        lenv.collector(progress_every=0)


async def test_young_candidates_are_kept(lenv: LedgerEnv) -> None:
    orphan = await lenv.aorphan_intent()
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.scanned, report.skipped_too_young, report.deleted) == (1, 1, 0)
    assert report.orphaned == 1
    assert await lenv.arows() == {orphan.location: "intent"}


async def test_released_objects_are_collected_and_referenced_ones_kept(lenv: LedgerEnv) -> None:
    doc_id, first = await lenv.acommitted_doc(b"first")
    other_id, copied = await lenv.acommitted_doc(b"copied")
    async with lenv.session() as session:
        for key in (doc_id, other_id):
            doc = await session.get(Doc, key)
            assert doc is not None
            doc.clear_content_reference()
        await session.commit()
    async with lenv.engine.begin() as conn:  # a copy written with Core: no flush, no ledger
        await conn.execute(insert(Copy).values(id=1, ref=copied))
    assert await lenv.arows() == {first.location: "released", copied.location: "released"}
    lenv.clock.advance(OLD)
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.deleted, report.referenced, report.skipped_in_use) == (1, 1, 1)
    assert report.eligible == report.deleted + report.failed + report.skipped_in_use
    assert await lenv.alocations() == {copied.location}
    assert await lenv.arows() == {copied.location: "live"}


async def test_a_half_finished_run_is_finished(lenv: LedgerEnv) -> None:
    orphan = await lenv.aorphan_intent()
    async with lenv.engine.begin() as conn:  # won, then the collector died
        await conn.execute(update(TABLE).values(state="deleting"))
    lenv.clock.advance(OLD)
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 1
    assert await lenv.alocations() == set()
    assert await lenv.arows() == {}
    assert orphan.location in _counting(lenv).deleted


async def test_a_dry_run_reports_and_changes_nothing(lenv: LedgerEnv) -> None:
    orphans = {(await lenv.aorphan_intent()).location for _ in range(3)}
    lenv.clock.advance(OLD)
    report = await lenv.collector().acollect(storage_key="docs")
    assert report.dry_run
    assert (report.scanned, report.eligible, report.deleted) == (3, 3, 0)
    assert set(report.orphan_sample) == orphans
    assert await lenv.alocations() == orphans
    assert set((await lenv.arows()).values()) == {"intent"}


async def test_max_deletions_stops_the_run(lenv: LedgerEnv) -> None:
    for _ in range(3):
        await lenv.aorphan_intent()
    lenv.clock.advance(OLD)
    report = await lenv.collector(max_deletions=2, batch_size=1).acollect(
        storage_key="docs", dry_run=False
    )
    assert (report.deleted, report.stopped_early) == (2, True)
    assert len(await lenv.alocations()) == 1


async def test_a_row_outside_the_policy_prefix_is_never_deleted(lenv: LedgerEnv) -> None:
    stamp = lenv.ledger.now()
    async with lenv.engine.begin() as conn:
        await conn.execute(
            insert(TABLE).values(
                location="elsewhere/x", storage_key="docs", backend="memory",
                created_at=stamp, updated_at=stamp, state="intent",
            )
        )  # fmt: skip
    lenv.clock.advance(OLD)
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.deleted, report.failed) == (0, 1)
    assert "outside the policy's key prefix" in report.failures[0][1]
    assert _counting(lenv).deleted == []
    assert await lenv.arows() == {"elsewhere/x": "deleting"}


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
async def test_on_sqlite_an_open_write_transaction_makes_the_collector_wait_its_turn(
    lenv: LedgerEnv,
) -> None:
    orphan = await lenv.aorphan_intent()
    lenv.clock.advance(OLD)
    async with lenv.session() as session:
        session.add(Doc())
        await session.flush()  # this transaction now holds SQLite's write lock
        report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
        assert (report.deleted, report.skipped_in_use) == (0, 1)
        await session.commit()
    report = await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert report.deleted == 1
    assert orphan.location not in await lenv.alocations()


# --------------------------------------------------------------------------- the audit


async def test_the_audit_deletes_objects_the_ledger_never_knew(lenv: LedgerEnv) -> None:
    _, kept = await lenv.acommitted_doc()
    foreign = await lenv.manager.aput_bytes(
        storage_key="docs", model_name="x", entity_id=1, field_name="f", content=b"foreign"
    )
    legacy = await lenv.manager.aput_bytes(
        storage_key="docs", model_name="x", entity_id=2, field_name="f", content=b"legacy"
    )
    async with lenv.engine.begin() as conn:  # referenced, but from before the ledger
        await conn.execute(insert(Copy).values(id=1, ref=legacy))
    lenv.clock.advance(OLD)
    collector = lenv.collector()
    report = await collector.aaudit(storage_key="docs", dry_run=False)
    assert (report.scanned, report.orphaned, report.deleted) == (3, 1, 1)
    assert await lenv.alocations() == {kept.location, legacy.location}
    assert foreign.location not in await lenv.arows()


async def test_the_audit_skips_an_upload_whose_transaction_is_open(lenv: LedgerEnv) -> None:
    lenv.clock.advance(OLD)  # every object looks old to the collector
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        ref = await doc.aset_content(b"in flight")
        collector = lenv.collector(clock=lambda: lenv.clock() + OLD)
        if lenv.dialect == "sqlite":
            await session.flush()  # the claim's lock is the database's write lock
        report = await collector.aaudit(storage_key="docs", dry_run=False)
        assert (report.orphaned, report.deleted, report.skipped_in_use) == (1, 0, 1)
        assert "in use" in str(report)
        await session.commit()
        await drain_pending_deletions(session)
    async with lenv.session() as session:
        doc = await session.get(Doc, doc.id)
        assert doc is not None
        assert await doc.aget_content() == b"in flight"
    assert (await lenv.arows())[ref.location] == "live"


async def test_an_audit_dry_run_deletes_nothing(lenv: LedgerEnv) -> None:
    await lenv.manager.aput_bytes(
        storage_key="docs", model_name="x", entity_id=1, field_name="f", content=b"foreign"
    )
    lenv.clock.advance(OLD)
    report = await lenv.collector().aaudit(storage_key="docs")
    assert (report.eligible, report.deleted, len(report.orphan_sample)) == (1, 0, 1)
    assert len(await lenv.alocations()) == 1


def test_collector_arguments_are_checked() -> None:
    from granite_storage.integrations.sqlalchemy import LedgerGarbageCollector, ObjectLedger
    from tests.integrations.ledger_support import LedgerBase

    manager = memory_manager("docs")
    ledger = ObjectLedger(LedgerBase.metadata)
    common = {"reference_metadata": LedgerBase.metadata}
    with pytest.raises(ValueError, match="min_age"):
        LedgerGarbageCollector(manager, ledger, None, min_age=-timedelta(1), **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        LedgerGarbageCollector(manager, ledger, None, batch_size=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Base\.metadata"):
        LedgerGarbageCollector(manager, ledger, None, reference_metadata=MetaData())  # type: ignore[arg-type]


class _FlakyBackend(MemoryStorageBackend):
    """Deletes fail while ``broken`` is set, like a network outage."""

    broken = True

    async def _adelete(self, location: str) -> None:
        if self.broken:
            raise BackendError(f"simulated outage deleting {location!r}")
        await super()._adelete(location)


async def test_a_failed_deletion_stays_deleting_and_the_next_run_finishes_it(
    db_engine: AsyncEngine,
) -> None:
    backend = _FlakyBackend()
    env = await amake_env(db_engine, backend)
    orphan = await env.aorphan_intent()
    env.clock.advance(OLD)
    report = await env.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.deleted, report.failed) == (0, 1)
    assert "simulated outage" in report.failures[0][1]
    assert await env.arows() == {orphan.location: "deleting"}  # nobody can claim it now
    backend.broken = False
    env.clock.advance(OLD)
    report = await env.collector().acollect(storage_key="docs", dry_run=False)
    assert (report.deleted, report.failed) == (1, 0)
    assert await env.arows() == {}
    assert await env.alocations() == set()


# --------------------------------------------------------------------------- moves


async def test_a_policy_on_two_backends_during_a_move(lenv: LedgerEnv) -> None:
    new = MemoryStorageBackend(clock=lenv.clock)
    lenv.configure(ledger=lenv.ledger, delete_replaced=True)
    lenv.manager.backends["new"] = new
    doc_id, ref = await lenv.acommitted_doc(b"history")
    report = await amigrate(
        lenv.manager,
        lambda: [ref],
        ref_rewriter(lenv.engine, LedgerBase.metadata),
        storage_key="docs",
        to="new",
    )
    assert (report.copied, report.rewritten) == (1, 1)
    moved = ref.replace(backend="new")
    lenv.clock.advance(OLD)

    # Neither backend loses an object a ref names, whichever backend it names.
    for run in (lenv.collector().acollect, lenv.collector().aaudit):
        result = await run(storage_key="docs", dry_run=False)
        assert result.deleted == 0
    assert await lenv.alocations() == {ref.location}
    assert await new.aexists(moved)
    assert await lenv.manager.aget(moved) == b"history"

    # Replacing the content releases the moved ref: deleted on the backend it names.
    async with lenv.session() as session:
        doc = await session.get(Doc, doc_id)
        assert doc is not None and doc.file_ref == moved
        await doc.aset_content(b"v2")
        await session.commit()
    await lenv.adrain()
    assert not await new.aexists(moved)


async def test_acollect_cleans_leftovers_only_when_asked(lenv: LedgerEnv) -> None:
    await lenv.collector().acollect(storage_key="docs", dry_run=False)
    assert _counting(lenv).calls["leftovers"] == 0  # off by default: it lists them
    report = await lenv.collector(cleanup_leftovers=True).acollect(
        storage_key="docs", dry_run=False
    )
    assert _counting(lenv).calls["leftovers"] == 1
    assert (report.leftovers_removed, report.failed) == (0, 0)
