"""A listing-free collection over 100,000 ledger rows of which 10 are orphans
touches those 10 and nothing else: one batch delete, no listing, no other
backend call. (Its speed against a listing collection is measured by
``benchmarks/ledger.py``; tests make no wall-clock assertions.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage.backends.memory import MemoryStorageBackend
from tests.integrations.ledger_support import CountingBackend, Doc, amake_env

ROWS = 100_000
ORPHANS = 10
_INSERT_LIVE = {
    "postgresql": """
        INSERT INTO granite_storage_objects
            (location, storage_key, backend, size, checksum, created_at, updated_at, state)
        SELECT 'docs/bulk/' || n || '/file/object', 'docs', 'memory', 100, NULL, :t, :t, 'live'
        FROM generate_series(1, :rows) AS n
    """,
    "sqlite": """
        WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :rows)
        INSERT INTO granite_storage_objects
            (location, storage_key, backend, size, checksum, created_at, updated_at, state)
        SELECT 'docs/bulk/' || n || '/file/object', 'docs', 'memory', 100, NULL, :t, :t, 'live'
        FROM g
    """,
}


async def test_a_listing_free_collection_touches_only_the_orphans(db_engine: AsyncEngine) -> None:
    inner = MemoryStorageBackend()
    backend = CountingBackend(inner)
    env = await amake_env(db_engine, backend)
    long_ago = env.ledger.now() - timedelta(days=30)
    statement = text(_INSERT_LIVE[env.dialect]).bindparams(
        bindparam("t", long_ago, type_=DateTime(timezone=True)), rows=ROWS
    )
    async with env.engine.begin() as conn:
        await conn.execute(statement)

    # Some live objects really exist, committed through the mixin.
    kept = {(await env.acommitted_doc(b"kept %d" % i))[1].location for i in range(5)}
    # Ten orphans: five uploads that died before their commit (intents) and five
    # objects whose refs were cleared (released).
    orphans: set[str] = set()
    for i in range(ORPHANS // 2):
        location = env.manager.new_location(
            storage_key="docs", model_name="ledger_doc", entity_id=uuid.uuid4(), field_name="f"
        )
        await env.ledger.arecord_intent(
            env.engine, location=location, storage_key="docs", backend="memory"
        )
        await env.manager.aput_stream(
            storage_key="docs", model_name="-", entity_id="-", field_name="-",
            stream=b"crashed %d" % i, location=location,
        )  # fmt: skip
        orphans.add(location)
    for _ in range(ORPHANS // 2):
        doc_id, ref = await env.acommitted_doc(b"released")
        async with env.session() as session:
            doc = await session.get_one(Doc, doc_id)
            doc.clear_content_reference()
            await session.commit()
        orphans.add(ref.location)

    env.clock.advance(timedelta(hours=2))
    backend.calls.clear()
    backend.deleted.clear()
    report = await env.collector(min_age=timedelta(hours=1)).acollect(
        storage_key="docs", dry_run=False
    )
    assert (report.scanned, report.eligible, report.deleted, report.failed) == (10, 10, 10, 0)
    assert set(backend.deleted) == orphans
    assert dict(backend.calls) == {"delete_many": 1}
    assert {info.location async for info in inner.aiter_objects()} == kept
    rows = await env.arows()
    assert len(rows) == ROWS + len(kept)
    assert set(rows.values()) == {"live"}
