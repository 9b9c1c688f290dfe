"""The collector against 32 writers on PostgreSQL: zero lost, zero leftovers.

For ``DURATION`` seconds (about 10 s; a minute with
``GRANITE_STORAGE_RELIABILITY=full``) 32 writers upload, commit after a random
pause (often longer than the grace period), roll back, replace, clear, delete
rows, copy refs into another table (holding the source row, as documented),
and "crash" (the connection is cut after the upload and no cleanup runs),
while a collector loops over listing-free collections and, now and then, the
listing audit, with a grace period of 50 ms.

Afterwards every committed ref reads back the exact bytes written for it
(nothing lost), and once a final listing-free collection has run, the backend
holds exactly the referenced objects: the audit finds nothing left to delete
(no leftovers, and none that only a listing would have found).
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from granite_storage import StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.sqlalchemy import (
    LedgerConflictError,
    LedgerGarbageCollector,
    ObjectLedger,
    drain_pending_deletions,
)
from tests.integrations.ledger_support import Copy, Doc, LedgerBase, make_manager

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FULL = os.environ.get("GRANITE_STORAGE_RELIABILITY") == "full"
DURATION = 60.0 if FULL else 10.0
WRITERS = 32
GRACE = timedelta(milliseconds=50)
#: The longest pause between an upload and its commit: up to 6 grace periods.
MAX_PAUSE = 0.3
OPERATIONS = ("commit", "commit", "rollback", "replace", "clear", "delete", "copy", "crash")


@dataclass
class World:
    engine: AsyncEngine
    ledger: ObjectLedger
    backend: MemoryStorageBackend
    #: What was uploaded at each location (every upload has its own location).
    written: dict[str, bytes] = field(default_factory=dict)
    sessions: list[AsyncSession] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    copy_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture
async def world(pg_engine: AsyncEngine) -> AsyncIterator[World]:
    url = pg_engine.url
    engine = create_async_engine(url, pool_size=WRITERS + 8, max_overflow=16)
    intents = create_async_engine(url, pool_size=8, max_overflow=0)  # see docs/ledger.md
    async with engine.begin() as conn:
        await conn.run_sync(LedgerBase.metadata.create_all)
    ledger = ObjectLedger(LedgerBase.metadata, intent_bind=intents)
    backend = MemoryStorageBackend()
    Doc.configure_storage_manager(make_manager(backend), ledger=ledger)
    try:
        yield World(engine=engine, ledger=ledger, backend=backend)
    finally:
        await engine.dispose()
        await intents.dispose()


async def _writer(world: World, number: int, deadline: float) -> None:
    rng = random.Random(number)
    mine: list[uuid.UUID] = []
    while anyio.current_time() < deadline:
        operation = rng.choice(OPERATIONS)
        session = AsyncSession(world.engine, expire_on_commit=False)
        world.sessions.append(session)
        try:
            async with session:
                await _operate(world, session, operation, rng, mine)
            world.outcomes[operation] += 1
        except LedgerConflictError:
            world.outcomes["refused by the ledger"] += 1  # safe: nothing was stored


async def _upload(world: World, doc: Doc, rng: random.Random) -> None:
    data = b"%032x" % rng.getrandbits(128)
    ref = await doc.aset_content(data)
    world.written[ref.location] = data


async def _operate(world: World, session: AsyncSession, operation: str,
                   rng: random.Random, mine: list[uuid.UUID]) -> None:  # fmt: skip
    pause = rng.uniform(0, MAX_PAUSE)
    if operation in ("commit", "rollback", "crash") or not mine:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        if rng.random() < 0.5:
            await session.flush()
        await _upload(world, doc, rng)
        await anyio.sleep(pause)
        if operation == "rollback":
            await session.rollback()
        elif operation == "crash":
            # The process dies: no listener runs, the server aborts the transaction.
            session.sync_session.info.clear()
            await (await session.connection()).invalidate()
        else:
            await session.commit()
            mine.append(doc.id)
        return
    doc_id = rng.choice(mine)
    if operation == "copy":
        # Copy some writer's current ref while holding its row, so it stays referenced.
        source = await session.scalar(
            select(Doc).where(Doc.file_ref.is_not(None)).limit(1).with_for_update(read=True)
        )
        if source is not None and source.file_ref is not None:
            session.add(Copy(id=next(world.copy_ids), ref=source.file_ref))
            await anyio.sleep(pause)
            await session.commit()
        return
    loaded = await session.get_one(Doc, doc_id)
    if operation == "replace":
        await _upload(world, loaded, rng)
        await anyio.sleep(pause)
    elif operation == "clear":
        loaded.clear_content_reference()
    else:  # delete
        await session.delete(loaded)
        mine.remove(doc_id)
    await session.commit()


async def _collector_loop(world: World, collector: LedgerGarbageCollector,
                          stop: anyio.Event, stats: Counter[str]) -> None:  # fmt: skip
    runs = 0
    while not stop.is_set():
        runs += 1
        if runs % 10 == 0:
            report = await collector.aaudit(storage_key="docs", dry_run=False)
        else:
            report = await collector.acollect(storage_key="docs", dry_run=False)
        stats["runs"] += 1
        stats["deleted"] += report.deleted
        stats["skipped in use"] += report.skipped_in_use
        stats["failed"] += report.failed
        await anyio.sleep(0.005)


async def _referenced(world: World) -> list[StoredObjectRef]:
    async with AsyncSession(world.engine) as session:
        refs = list(await session.scalars(select(Doc.file_ref).where(Doc.file_ref.is_not(None))))
        refs += list(await session.scalars(select(Copy.ref).where(Copy.ref.is_not(None))))
    return [ref for ref in refs if ref is not None]


async def test_collector_and_32_writers_lose_nothing_and_leave_nothing(world: World) -> None:
    manager = Doc.get_storage_manager()
    collector = LedgerGarbageCollector(
        manager, world.ledger, world.engine, reference_metadata=LedgerBase.metadata,
        min_age=GRACE, batch_size=100,
    )  # fmt: skip
    stats: Counter[str] = Counter()
    stop = anyio.Event()
    deadline = anyio.current_time() + DURATION
    async with anyio.create_task_group() as tg:
        tg.start_soon(_collector_loop, world, collector, stop, stats)
        async with anyio.create_task_group() as writers:
            for number in range(WRITERS):
                writers.start_soon(_writer, world, number, deadline)
        stop.set()
    for session in world.sessions:
        await drain_pending_deletions(session)

    # Zero lost: every committed ref reads back the bytes written for it.
    referenced = await _referenced(world)
    for ref in referenced:
        assert await manager.aget(ref, verify=True) == world.written[ref.location]

    # Zero leftovers, found without listing.
    final = collector.__class__(
        manager, world.ledger, world.engine, reference_metadata=LedgerBase.metadata,
        min_age=timedelta(0),
    )  # fmt: skip
    report = await final.acollect(storage_key="docs", dry_run=False)
    assert (report.failed, report.skipped_in_use - report.referenced) == (0, 0)
    locations = {info.location async for info in world.backend.aiter_objects()}
    assert locations == {ref.location for ref in referenced}
    audit = await final.aaudit(storage_key="docs", dry_run=False)
    assert (audit.orphaned, audit.deleted) == (0, 0)

    # The run exercised what it claims to.
    outcomes = world.outcomes
    assert min(outcomes[op] for op in set(OPERATIONS)) > 0, outcomes
    assert stats["runs"] >= 3 and stats["deleted"] > 0 and stats["failed"] == 0, stats
