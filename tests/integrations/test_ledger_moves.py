"""The last step of a move with the object ledger:
``LedgerGarbageCollector.acollect(backend_key=OLD, delete_source=True)``.

A ledger-tracked policy on ``old`` (local disk) is moved to ``new`` (another
local directory, or S3 on moto) with ``amigrate``, the policy is switched,
then the sources are deleted. Each test's clock makes every object older than
the grace period, so age protects nothing: only refs and the ledger do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.mirror import MirrorBackend
from granite_storage.contracts import StorageBackend
from granite_storage.errors import (
    ConfigurationError,
    LockUnavailableError,
    UnsafeCollectionError,
)
from granite_storage.gc import GarbageCollectionReport, StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import (
    LedgerGarbageCollector,
    iter_metadata_storage_refs,
    ref_rewriter,
)
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger_moves import Sources, sort_sources
from granite_storage.migrate import amigrate
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend
from tests.integrations.ledger_support import (
    MIN_AGE,
    TABLE,
    Copy,
    Doc,
    LedgerBase,
    LedgerEnv,
    amake_env,
)

OLD = MIN_AGE * 10


def _manager(on: str, backends: dict[str, StorageBackend], *more: StoragePolicy) -> StorageManager:
    """The policy ``docs`` on backend ``on`` (and ``more``), every backend registered."""
    policy = StoragePolicy("docs", on, max_size=1024, key_prefix="docs")
    others = {key: backend for key, backend in backends.items() if key != on}
    return manager_for(backends[on], policy, *more, backend_key=on, extra_backends=others)


class Move:
    """A ledger world whose policy starts on ``old`` and can switch to ``new``."""

    def __init__(self, env: LedgerEnv, old: StorageBackend, new: StorageBackend) -> None:
        self.env, self.old, self.new = env, old, new
        self.before = _manager("old", {"old": old, "new": new})
        self.after = _manager("new", {"old": old, "new": new})
        self.use(self.before)

    def use(self, manager: StorageManager) -> None:
        """Deploy ``manager``: the models write through it."""
        self.env.manager = manager
        Doc.configure_storage_manager(manager, ledger=self.env.ledger)

    async def amigrate(self, refs: list[StoredObjectRef]) -> None:
        report = await amigrate(
            self.before, lambda: refs, ref_rewriter(self.env.engine, LedgerBase.metadata),
            storage_key="docs", to="new",
        )  # fmt: skip
        assert (report.copied, report.rewritten, report.failed) == (len(refs), len(refs), {})

    def collector(self, manager: StorageManager | None = None) -> LedgerGarbageCollector:
        """The ledger collector of the switched manager (or of ``manager``)."""
        env = self.env
        return LedgerGarbageCollector(
            manager or self.after, env.ledger, env.engine,
            reference_metadata=LedgerBase.metadata, min_age=MIN_AGE, clock=env.clock,
        )  # fmt: skip

    async def adelete_sources(
        self, manager: StorageManager | None = None, *, dry_run: bool = False
    ) -> GarbageCollectionReport:
        return await self.collector(manager).acollect(
            storage_key="docs", backend_key="old", delete_source=True, dry_run=dry_run
        )

    async def aledger(self) -> dict[str, dict[str, Any]]:
        """Every ledger row, whole: location -> its columns."""
        async with self.env.engine.connect() as conn:
            rows = (await conn.execute(select(TABLE))).all()
        return {row.location: dict(row._mapping) for row in rows}

    async def adoc_ref(self, doc_id: uuid.UUID) -> StoredObjectRef:
        async with self.env.session() as session:
            doc = await session.get(Doc, doc_id)
            assert doc is not None and doc.file_ref is not None
            return doc.file_ref


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where the objects move to: another local directory, or moto's S3 server."""
    if request.param == "local":
        return {}
    return {
        "endpoint_url": request.getfixturevalue("s3_endpoint_url"),
        "bucket": request.getfixturevalue("s3_bucket"),
        "session": request.getfixturevalue("aioboto3_session"),
    }


@pytest.fixture
async def move(
    target: dict[str, Any], db_engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[Move]:
    async with AsyncExitStack() as stack:
        old = LocalStorageBackend(tmp_path / "old", fsync=False)
        new: StorageBackend = LocalStorageBackend(tmp_path / "new", fsync=False)
        if target:
            new = await stack.enter_async_context(open_s3_backend(**target))
        env = await amake_env(db_engine, old)
        world = Move(env, old, new)
        yield world
        await env.adrain()


async def test_the_moved_sources_go_and_everything_else_stays(move: Move) -> None:
    env, old, new = move.env, move.old, move.new
    moved_ids = [(await env.acommitted_doc(b"moved %d" % n))[0] for n in range(3)]
    _, unmigrated = await env.acommitted_doc(b"not migrated")
    replaced_id, _ = await env.acommitted_doc(b"replaced before the move")
    async with env.session() as session:  # releases its first object: an orphan on old
        doc = await session.get(Doc, replaced_id)
        assert doc is not None
        released = doc.file_ref
        await doc.aset_content(b"replaced")
        await session.commit()
    assert released is not None
    await move.amigrate([await move.adoc_ref(doc_id) for doc_id in (*moved_ids, replaced_id)])
    _, during = await env.acommitted_doc(b"written during the move")
    move.use(move.after)  # the switch
    _, after = await env.acommitted_doc(b"written after the switch")
    moved = [await move.adoc_ref(doc_id) for doc_id in moved_ids]
    assert {ref.backend for ref in moved} == {"new"}
    assert {unmigrated.backend, during.backend} == {"local"}  # named by backend_name
    ledger_before = await move.aledger()
    env.clock.advance(OLD)

    dry = await move.adelete_sources(dry_run=True)
    assert (dry.deleted, dry.eligible) == (0, 5)  # three moved, the replaced one, `released`
    assert await move.aledger() == ledger_before
    done = await move.adelete_sources()

    assert (done.deleted, done.failed, done.skipped_in_use) == (5, 0, 0)
    for ref in (*moved, released):
        assert not await old.aexists(ref)
    # Refs naming a backend_name still protect their source.
    assert await old.aget(unmigrated) == b"not migrated"
    assert await old.aget(during) == b"written during the move"
    # The new copies are untouched and read through the switched manager.
    for n, ref in enumerate(moved):
        assert await move.after.aget(ref, verify=True) == b"moved %d" % n
    assert await new.aget(after) == b"written after the switch"
    # The ledger: the moved rows as they were, only the released orphan's row forgotten.
    ledger_after = await move.aledger()
    assert set(ledger_before) - set(ledger_after) == {released.location}
    assert {loc: row for loc, row in ledger_before.items() if loc in ledger_after} == ledger_after
    assert {ledger_after[ref.location]["state"] for ref in moved} == {"live"}

    # Later runs of the ledger collector and its audit find nothing wrong.
    for run in (move.collector().acollect, move.collector().aaudit):
        report = await run(storage_key="docs", dry_run=False)
        assert (report.deleted, report.failed) == (0, 0)
    assert await move.aledger() == ledger_after
    for n, ref in enumerate(moved):
        assert await move.after.aget(ref) == b"moved %d" % n

    # A rerun of the move finishes what was left; the next delete_source takes it.
    await move.amigrate([unmigrated, during])
    last = await move.adelete_sources()
    assert (last.deleted, last.failed) == (2, 0)
    assert [loc async for loc in old.aiter_locations("docs")] == []


async def test_an_upload_in_flight_on_the_old_backend_is_kept(move: Move) -> None:
    env, old = move.env, move.old
    moved_id, _ = await env.acommitted_doc(b"moved")
    await move.amigrate([await move.adoc_ref(moved_id)])
    moved = await move.adoc_ref(moved_id)
    env.clock.advance(OLD)
    plain = StorageGarbageCollector(
        move.after,
        lambda: iter_metadata_storage_refs(env.engine, LedgerBase.metadata),
        min_age=MIN_AGE,
        clock=env.clock,
    )
    # A process not redeployed yet uploads to old, in a transaction still open
    # while the sources are deleted.
    async with env.session() as session:
        doc = Doc(id=uuid.uuid4())  # set here: on SQLite the claim takes the write lock
        session.add(doc)
        in_flight = await doc.aset_content(b"in flight")
        assert await old.aexists(in_flight)
        # Age does not protect it: the plain collector would delete it.
        dry = await plain.acollect(storage_key="docs", backend_key="old", delete_source=True)
        assert in_flight.location in dry.orphan_sample
        report = await move.adelete_sources()
        assert await old.aexists(in_flight)
        if env.dialect == "postgresql":  # only the held row is skipped
            assert (report.deleted, report.skipped_in_use) == (1, 1)
            assert not await old.aexists(moved)
        else:  # the open transaction holds SQLite's write lock: the whole batch waits
            assert (report.deleted, report.skipped_in_use) == (0, 2)
        await session.commit()
    again = await move.adelete_sources()
    assert again.deleted == (1 if env.dialect == "sqlite" else 0)
    assert await move.before.aget(in_flight) == b"in flight"
    assert not await old.aexists(moved)
    assert (await move.aledger())[in_flight.location]["state"] == "live"


async def test_the_plain_collector_refusals_hold(move: Move) -> None:
    doc_id, _ = await move.env.acommitted_doc(b"kept")
    await move.amigrate([await move.adoc_ref(doc_id)])
    moved = await move.adoc_ref(doc_id)
    move.env.clock.advance(OLD)
    with pytest.raises(ConfigurationError, match="needs backend_key="):
        await move.collector().acollect(storage_key="docs", delete_source=True, dry_run=False)
    with pytest.raises(ConfigurationError, match="switch the policy"):
        await move.adelete_sources(move.before)
    # Step 1 of a move: old is a mirror that still writes to new.
    mirrored = _manager("new", {"old": MirrorBackend(move.old, move.new), "new": move.new})
    with pytest.raises(ConfigurationError, match="writes to the same storage as 'new'"):
        await move.adelete_sources(mirrored)
    # Another policy whose objects could lie under the prefix on old.
    other = StoragePolicy("other", "old", key_prefix=None)
    shared = _manager("new", {"old": move.old, "new": move.new}, other)
    with pytest.raises(UnsafeCollectionError, match="'other'"):
        await move.adelete_sources(shared)
    assert await move.old.aget(moved) == b"kept"
    assert await move.new.aget(moved) == b"kept"


async def test_each_batch_is_checked_again_under_the_ledger_locks(move: Move) -> None:
    """What the reference read cannot see: a ref naming a backend_name committed
    since, or a transaction holding the row, keeps the source."""
    env = move.env
    doc_id, _ = await env.acommitted_doc(b"moved")
    await move.amigrate([await move.adoc_ref(doc_id)])
    moved = await move.adoc_ref(doc_id)
    stale = moved.replace(backend="local")  # the ref as it was read before the migration
    orphan = await move.before.aput_bytes(
        storage_key="docs", model_name="x", entity_id=1, field_name="f", content=b"o"
    )

    async def asort() -> Sources:
        return await arun_on_connection(
            env.engine,
            lambda conn: sort_sources(
                conn, TABLE, LedgerBase.metadata,
                locations=[moved.location, orphan.location],
                released={"new"}, old={"local", "old"}, lock_wait=env.ledger.lock_timeout,
            ),
        )  # fmt: skip

    assert await asort() == Sources(moved=[moved.location], unreferenced=[orphan.location])
    async with env.session() as session:
        env.ledger.watch(session)
        session.add(Copy(id=1, ref=stale))
        await session.flush()  # protects the row: locked until the transaction ends
        if env.dialect == "postgresql":
            assert await asort() == Sources(kept=[moved.location], unreferenced=[orphan.location])
        else:  # the transaction holds SQLite's write lock
            with pytest.raises(LockUnavailableError):
                await asort()
        await session.commit()
    assert await asort() == Sources(kept=[moved.location], unreferenced=[orphan.location])


@pytest.mark.parametrize("first", ["collect", "delete sources"])
async def test_an_object_written_through_the_mirror_and_released_is_collected_after_the_switch(
    move: Move, first: str
) -> None:
    """Its ledger row names ``"mirror"``, a backend no longer registered once
    the policy switched: the policy's collection takes it, as a ref naming it
    would resolve to the policy's backend, and deletes the new copy; the last
    step of the move deletes the old one. No audit needed. A row naming a
    backend still registered (``old``'s ``"local"``) is left to that backend."""
    env, old, new = move.env, move.old, move.new
    before_id, before = await env.acommitted_doc(b"released before the move")
    async with env.session() as session:
        doc = await session.get(Doc, before_id)
        assert doc is not None
        await session.delete(doc)
        await session.commit()
    move.use(_manager("old", {"old": MirrorBackend(old, new), "new": new}))  # step 1
    doc_id, released = await env.acommitted_doc(b"released during the move")
    async with env.session() as session:
        doc = await session.get(Doc, doc_id)
        assert doc is not None
        kept = await doc.aset_content(b"kept")
        await session.commit()
    assert released.backend == kept.backend == "mirror"
    for ref in (released, kept):
        assert await old.aexists(ref) and await new.aexists(ref)
    move.use(move.after)  # the switch, with nothing collected before it
    env.clock.advance(OLD)

    async def acollect() -> GarbageCollectionReport:
        return await move.collector().acollect(storage_key="docs", dry_run=False)

    if first == "collect":
        # When both backends are local disks, "local" is also new's own name.
        same_name = new.backend_name == "local"
        assert (await acollect()).deleted == 1 + same_name
        assert not await new.aexists(released) and await old.aexists(released)
        ledger = await move.aledger()
        assert released.location not in ledger
        assert (before.location in ledger) is not same_name
        assert await old.aexists(before)
        assert (await move.adelete_sources()).deleted == 2  # no rows left: the audit's path
    else:
        assert (await move.adelete_sources()).deleted == 2  # "mirror": a moved copy, row kept
        assert not await old.aexists(released) and await new.aexists(released)
        assert (await move.aledger())[released.location]["backend"] == "mirror"
        assert (await acollect()).deleted == 1
    assert not await old.aexists(released) and not await new.aexists(released)
    assert not await old.aexists(before)
    ledger = await move.aledger()
    assert released.location not in ledger and before.location not in ledger
    assert ledger[kept.location]["state"] == "live"
    # The live object is untouched on both backends, read through the switched manager.
    assert await move.after.aget(kept, verify=True) == b"kept"
    assert await old.aget(kept) == b"kept"
    for run in (move.collector().acollect, move.collector().aaudit):
        report = await run(storage_key="docs", dry_run=False)
        assert (report.deleted, report.failed) == (0, 0)
