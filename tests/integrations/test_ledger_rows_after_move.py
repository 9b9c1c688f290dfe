"""The object ledger's rows follow their refs through a move between backends.

``ref_rewriter`` moves a ledger row to the target key with its refs, so the
ledger's collector of the new backend finds a moved object once it is
released, the delete-source step leaves such a row to that collector, and a
collection of the old backend no longer takes it, even when both backends
share a ``backend_name`` (two local directories, both ``"local"``). Runs on
SQLite and PostgreSQL, from local disk to another local directory and to S3
on moto's server.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import MetaData, insert, select

from granite_storage import StoredObjectRef
from granite_storage.integrations.sqlalchemy import ref_rewriter
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger_claims import new_row
from granite_storage.integrations.sqlalchemy._ledger_moves import Sources, sort_sources
from granite_storage.migrate import amigrate
from tests.integrations import test_ledger_moves
from tests.integrations.ledger_support import TABLE, Copy, Doc, LedgerBase
from tests.integrations.test_ledger_moves import OLD, Move

# The worlds of test_ledger_moves: a policy on local disk moving to another
# local directory (both backends named "local") or to S3 on moto.
target = test_ledger_moves.target
move = test_ledger_moves.move


async def areplace(move: Move, doc_id: uuid.UUID, content: bytes) -> StoredObjectRef:
    """Give the document new content: its former ref is released (no delete_replaced)."""
    async with move.env.session() as session:
        doc = await session.get(Doc, doc_id)
        assert doc is not None
        ref = await doc.aset_content(content)
        await session.commit()
    return ref


async def amoved_then_released(
    move: Move, *, switch: bool = True
) -> tuple[StoredObjectRef, StoredObjectRef]:
    """A document migrated to new, the policy switched (or not), then given new
    content: its migrated ref is released. Returns (that ref, the current one);
    the clock is past the grace period."""
    doc_id, _ = await move.env.acommitted_doc(b"moved, then replaced")
    await move.amigrate([await move.adoc_ref(doc_id)])
    if switch:
        move.use(move.after)
    moved = await move.adoc_ref(doc_id)
    current = await areplace(move, doc_id, b"v2")
    move.env.clock.advance(OLD)
    return moved, current


def without(row: dict[str, Any], column: str) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name != column}


async def test_migrate_moves_the_rows_of_the_rewritten_refs_only(move: Move) -> None:
    env = move.env
    ids = [(await env.acommitted_doc(b"moved %d" % n))[0] for n in range(2)]
    raced_id, _ = await env.acommitted_doc(b"read by the migration, then replaced")
    refs = [await move.adoc_ref(doc_id) for doc_id in (*ids, raced_id)]
    raced = refs[-1]
    # A writer replaces one object after the migration read its ref.
    replacement = await areplace(move, raced_id, b"written during the move")
    before = await move.aledger()
    assert {row["backend"] for row in before.values()} == {"local"}

    report = await amigrate(
        move.before, lambda: refs, ref_rewriter(env.engine, LedgerBase.metadata),
        storage_key="docs", to="new",
    )  # fmt: skip

    assert (report.copied, report.rewritten, report.failed) == (3, 2, {})
    after = await move.aledger()
    for ref in refs[:2]:
        assert after[ref.location]["backend"] == "new"
        # Nothing else changes: the state, and updated_at (a grace period counts from it).
        assert without(after[ref.location], "backend") == without(before[ref.location], "backend")
    # The writer's change wins: its rows keep the name they were written with.
    assert after[raced.location] == before[raced.location]
    assert after[raced.location]["state"] == "released"
    assert after[replacement.location] == before[replacement.location]
    assert (await move.adoc_ref(raced_id)).backend == "local"


async def test_a_ledger_in_another_metadata_is_passed_to_the_rewriter(move: Move) -> None:
    env = move.env
    refs = [(await env.acommitted_doc(b"%d" % n))[1] for n in range(2)]
    models = MetaData()  # the models' tables, without the ledger's
    for table in (Doc.__table__, Copy.__table__):
        table.to_metadata(models)

    assert await ref_rewriter(env.engine, models)(refs[:1], "new") == 1
    assert await ref_rewriter(env.engine, models, ledger=env.ledger)(refs[1:], "new") == 1

    rows = await move.aledger()
    assert [rows[ref.location]["backend"] for ref in refs] == ["local", "new"]


async def test_a_moved_object_released_after_the_switch_is_collected_on_the_new_backend(
    move: Move,
) -> None:
    moved, current = await amoved_then_released(move)

    report = await move.collector().acollect(storage_key="docs", dry_run=False)

    assert (report.deleted, report.failed, report.skipped_in_use) == (1, 0, 0)
    assert not await move.new.aexists(moved)
    assert moved.location not in await move.aledger()
    assert await move.after.aget(current) == b"v2"
    assert await move.old.aget(moved.replace(backend="local")) == b"moved, then replaced"


async def test_the_source_step_leaves_a_released_moved_row_to_the_new_backend(
    move: Move,
) -> None:
    moved, current = await amoved_then_released(move)
    row = (await move.aledger())[moved.location]
    assert (row["backend"], row["state"]) == ("new", "released")

    done = await move.adelete_sources()

    assert (done.deleted, done.failed, done.skipped_in_use) == (1, 0, 0)
    assert not await move.old.aexists(moved)
    assert await move.new.aexists(moved)  # only the source went
    assert (await move.aledger())[moved.location] == row  # left for the new backend
    collected = await move.collector().acollect(storage_key="docs", dry_run=False)
    assert (collected.deleted, collected.failed) == (1, 0)
    assert not await move.new.aexists(moved)
    assert moved.location not in await move.aledger()
    audit = await move.collector().aaudit(storage_key="docs", dry_run=False)
    assert (audit.deleted, audit.failed) == (0, 0)  # nothing was lost on the way
    assert await move.after.aget(current) == b"v2"


async def test_the_new_backend_collected_first_leaves_the_source_to_the_source_step(
    move: Move,
) -> None:
    moved, _ = await amoved_then_released(move)

    collected = await move.collector().acollect(storage_key="docs", dry_run=False)
    assert (collected.deleted, await move.new.aexists(moved)) == (1, False)
    done = await move.adelete_sources()  # no row, no ref: the audit's path

    assert (done.deleted, done.failed) == (1, 0)
    assert not await move.old.aexists(moved)
    assert moved.location not in await move.aledger()


async def test_collecting_the_old_backend_leaves_the_rows_of_moved_objects(move: Move) -> None:
    """Before the switch, released moved objects belong to the new backend's
    collection, whatever name the two backends have (both "local" here, or
    "local" and "s3")."""
    _, kept = await move.env.acommitted_doc(b"not moved")
    moved, _ = await amoved_then_released(move, switch=False)  # v2 is written to old
    assert move.old.backend_name == "local"
    row = (await move.aledger())[moved.location]

    old = await move.collector(move.before).acollect(storage_key="docs", dry_run=False)

    assert (old.scanned, old.deleted) == (0, 0)
    assert (await move.aledger())[moved.location] == row
    assert await move.new.aget(moved) == b"moved, then replaced"
    new = await move.collector(move.before).acollect(
        storage_key="docs", backend_key="new", dry_run=False
    )
    assert (new.scanned, new.deleted, new.failed) == (1, 1, 0)
    assert not await move.new.aexists(moved)
    assert moved.location not in await move.aledger()
    assert await move.old.aget(kept) == b"not moved"


async def test_an_unreferenced_source_is_sorted_by_the_backend_its_row_names(move: Move) -> None:
    env = move.env
    moved = (await amoved_then_released(move, switch=False))[0].location
    orphans = []  # rows naming old by backend_name, by key, and no row
    for backend in ("local", "old", None):
        ref = await move.before.aput_bytes(
            storage_key="docs", model_name="x", entity_id=1, field_name="f", content=b"o"
        )
        orphans.append(ref.location)
        if backend is not None:
            row = new_row(
                location=ref.location, storage_key="docs", backend=backend, now=env.ledger.now()
            )
            async with env.engine.begin() as conn:
                await conn.execute(insert(TABLE).values(row | {"state": "released"}))

    async def asort() -> Sources:
        return await arun_on_connection(
            env.engine,
            lambda conn: sort_sources(
                conn, TABLE, LedgerBase.metadata,
                locations=[moved, *orphans], released={"new"}, old={"local", "old"},
                lock_wait=env.ledger.lock_timeout,
            ),
        )  # fmt: skip

    assert await asort() == Sources(moved=[moved], unreferenced=sorted(orphans))
    if env.dialect == "postgresql":  # a transaction holding the moved row keeps it
        async with env.engine.connect() as conn:
            await conn.execute(select(TABLE).where(TABLE.c.location == moved).with_for_update())
            assert await asort() == Sources(kept=[moved], unreferenced=sorted(orphans))
            await conn.rollback()
