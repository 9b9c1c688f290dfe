"""The object ledger follows the application's transaction: intents, claims,
releases, protection of copied refs, and the refusals that keep data safe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from granite_storage import ContentTooLargeError
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy import (
    LedgerConflictError,
    ObjectLedger,
    _ledger_claims,
    drain_pending_deletions,
)
from granite_storage.testing import memory_manager
from tests.integrations.conftest import flushed
from tests.integrations.ledger_support import (
    TABLE,
    Copy,
    Doc,
    LedgerBase,
    LedgerEnv,
    amake_env,
    make_manager,
)


@pytest.fixture
async def lenv(db_engine: AsyncEngine) -> AsyncIterator[LedgerEnv]:
    env = await amake_env(db_engine)
    yield env
    await env.adrain()


async def test_an_upload_is_committed_live_with_its_size_and_checksum(lenv: LedgerEnv) -> None:
    _, ref = await lenv.acommitted_doc(b"hello")
    async with lenv.engine.connect() as conn:
        row = (await conn.execute(select(TABLE).where(TABLE.c.location == ref.location))).one()
    assert (row.state, row.storage_key, row.backend) == ("live", "docs", "memory")
    assert (row.size, row.checksum) == (5, ref.checksum)
    assert await lenv.arows() == {ref.location: "live"}


async def test_before_the_commit_the_intent_is_visible_and_the_claim_is_not(
    lenv: LedgerEnv,
) -> None:
    """The intent is committed on its own connection before the upload; the
    claim belongs to the application's transaction (a client-side primary key
    keeps SQLite's write lock free until the upload)."""
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        ref = await doc.aset_content(b"x")
        assert await lenv.arows() == {ref.location: "intent"}  # seen from another connection
        await session.commit()
    assert await lenv.arows() == {ref.location: "live"}


async def test_on_sqlite_a_transaction_holding_the_write_lock_claims_inside_it(
    lenv: LedgerEnv,
) -> None:
    """After a flush, SQLite's write lock is this transaction's: the intent cannot
    be committed elsewhere, so the claim is an insert inside the transaction."""
    async with lenv.session() as session:
        doc = await flushed(session, Doc())
        ref = await doc.aset_content(b"x")
        outside = await lenv.arows()
        await session.commit()
    expected = {} if lenv.dialect == "sqlite" else {ref.location: "intent"}
    assert outside == expected
    assert await lenv.arows() == {ref.location: "live"}


async def test_without_recorded_intents_the_claim_is_made_inside_the_transaction(
    lenv: LedgerEnv,
) -> None:
    ledger = ObjectLedger(lenv.ledger.metadata, record_intents=False)
    lenv.configure(ledger=ledger)
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        ref = await doc.aset_content(b"x")
        assert await lenv.arows() == {}
        await session.commit()
    assert await lenv.arows() == {ref.location: "live"}


async def test_rollback_deletes_the_object_and_its_row(lenv: LedgerEnv) -> None:
    async with lenv.session() as session:
        doc = await flushed(session, Doc())
        ref = await doc.aset_content(b"x")
        assert await lenv.alocations() == {ref.location}
        await session.rollback()
        await drain_pending_deletions(session)
    assert await lenv.alocations() == set()
    assert await lenv.arows() == {}


async def test_a_failed_upload_leaves_neither_object_nor_row(lenv: LedgerEnv) -> None:
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        with pytest.raises(ContentTooLargeError):
            await doc.aset_content(b"x" * 2000)  # the policy allows 1024 bytes
        await session.commit()
        assert doc.file_ref is None
    assert await lenv.alocations() == set()
    assert await lenv.arows() == {}


async def test_replace_clear_and_delete_release_the_previous_object(lenv: LedgerEnv) -> None:
    doc_id, first = await lenv.acommitted_doc()
    other_id, other = await lenv.acommitted_doc()
    async with lenv.session() as session:
        doc = await session.get_one(Doc, doc_id)
        second = await doc.aset_content(b"v2")
        await session.commit()
        assert await lenv.arows() == {
            first.location: "released",
            second.location: "live",
            other.location: "live",
        }
        doc.clear_content_reference()
        other_doc = await session.get(Doc, other_id)
        await session.delete(other_doc)
        await session.commit()
    assert await lenv.arows() == {
        first.location: "released",
        second.location: "released",
        other.location: "released",
    }


async def test_a_rolled_back_replace_keeps_the_previous_object_live(lenv: LedgerEnv) -> None:
    doc_id, first = await lenv.acommitted_doc()
    async with lenv.session() as session:
        doc = await session.get_one(Doc, doc_id)
        second = await doc.aset_content(b"v2")
        await session.flush()
        await session.rollback()
        await drain_pending_deletions(session)
    assert await lenv.arows() == {first.location: "live"}
    assert await lenv.alocations() == {first.location}
    assert second.location != first.location


async def test_delete_replaced_deletes_through_the_ledger(lenv: LedgerEnv) -> None:
    lenv.configure(ledger=lenv.ledger, delete_replaced=True)
    doc_id, _ = await lenv.acommitted_doc()
    async with lenv.session() as session:
        doc = await session.get_one(Doc, doc_id)
        second = await doc.aset_content(b"v2")
        await session.commit()
        await drain_pending_deletions(session)
    assert await lenv.alocations() == {second.location}
    assert await lenv.arows() == {second.location: "live"}


async def test_delete_replaced_keeps_an_object_another_row_references(lenv: LedgerEnv) -> None:
    lenv.configure(ledger=lenv.ledger, delete_replaced=True)
    doc_id, first = await lenv.acommitted_doc()
    async with lenv.session() as session:
        session.add(Copy(id=1, ref=first))
        await session.commit()
        doc = await session.get_one(Doc, doc_id)
        await doc.aset_content(b"v2")
        await session.commit()
        await drain_pending_deletions(session)
    assert first.location in await lenv.alocations()
    assert (await lenv.arows())[first.location] == "live"  # the reference check restored it


async def test_copying_a_released_ref_makes_it_live_again(lenv: LedgerEnv) -> None:
    doc_id, first = await lenv.acommitted_doc()
    async with lenv.session() as session:
        doc = await session.get_one(Doc, doc_id)
        doc.clear_content_reference()
        await session.commit()
        assert (await lenv.arows())[first.location] == "released"
        session.add(Copy(id=1, ref=first))
        await session.commit()
    assert (await lenv.arows())[first.location] == "live"


async def test_a_ref_to_an_object_being_deleted_is_refused(lenv: LedgerEnv) -> None:
    _, first = await lenv.acommitted_doc()
    async with lenv.engine.begin() as conn:
        await conn.execute(update(TABLE).values(state="deleting"))  # a collector won it
    async with lenv.session() as session:
        lenv.ledger.watch(session)
        session.add(Copy(id=1, ref=first))
        with pytest.raises(LedgerConflictError) as caught:
            await session.commit()
        assert caught.value.location == first.location
        assert caught.value.status_code == 409
        await session.rollback()
        assert await session.scalar(select(Copy.id)) is None


async def test_an_intent_won_by_the_collector_before_the_claim_uploads_nothing(
    lenv: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If more than the grace period passes between intent and claim, the
    collector may win the intent first: the claim finds it gone and the upload
    is refused before a byte is sent."""
    original = _ledger_claims.arun_on_connection
    calls: list[object] = []

    async def intent_then_collector(bind: Any, work: Any) -> Any:
        result = await original(bind, work)
        calls.append(work)
        if len(calls) == 1:  # the intent is committed: a collector wins it now
            async with lenv.engine.begin() as conn:
                await conn.execute(update(TABLE).values(state="deleting"))
        return result

    monkeypatch.setattr(_ledger_claims, "arun_on_connection", intent_then_collector)
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        with pytest.raises(LedgerConflictError, match="try again"):
            await doc.aset_content(b"x")
        assert doc.file_ref is None
    assert await lenv.alocations() == set()


@pytest.mark.postgres
async def test_repeatable_read_cannot_claim_and_says_why(pg_engine: AsyncEngine) -> None:
    env = await amake_env(pg_engine)
    async with env.session(
        bind=pg_engine.execution_options(isolation_level="REPEATABLE READ")
    ) as s:
        doc = Doc()
        s.add(doc)
        await s.flush()  # the snapshot is taken before the intent is committed
        with pytest.raises(ConfigurationError, match="READ COMMITTED"):
            await doc.aset_content(b"x")
        assert doc.file_ref is None
    assert await env.alocations() == set()
    assert await env.arows() == {}


async def test_a_session_follows_one_ledger(lenv: LedgerEnv) -> None:
    async with lenv.session() as session:
        lenv.ledger.watch(session)
        lenv.ledger.watch(session.sync_session)  # again: no-op
        with pytest.raises(ConfigurationError, match="another ObjectLedger"):
            ObjectLedger(lenv.ledger.metadata).watch(session)


def test_configure_takes_an_object_ledger() -> None:
    manager = memory_manager("docs")
    with pytest.raises(ConfigurationError, match="ObjectLedger"):
        Doc.configure_storage_manager(manager, ledger="nope")  # type: ignore[arg-type]


async def test_plain_mode_writes_no_ledger_rows(lenv: LedgerEnv) -> None:
    lenv.configure(ledger=None)
    _, ref = await lenv.acommitted_doc()
    assert await lenv.arows() == {}
    assert await lenv.alocations() == {ref.location}


async def test_a_rolled_back_savepoint_deletes_its_upload_through_the_ledger(
    lenv: LedgerEnv,
) -> None:
    async with lenv.session() as session:
        doc = await flushed(session, Doc())
        outer = await doc.aset_content(b"outer")
        async with session.begin_nested() as savepoint:
            inner = await doc.aset_content(b"inner")
            await savepoint.rollback()
        await session.commit()  # SQLite: the cleanup waits for this transaction's write lock
        await drain_pending_deletions(session)
    assert await lenv.alocations() == {outer.location}
    assert await lenv.arows() == {outer.location: "live"}
    assert inner.location != outer.location


async def test_a_sync_session_with_a_ledger(tmp_path: Path) -> None:
    """With a sync Session, claims run in worker threads and the flush hook in
    the thread that commits."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    run = anyio.to_thread.run_sync
    await run(LedgerBase.metadata.create_all, engine)
    backend = MemoryStorageBackend()
    ledger = ObjectLedger(LedgerBase.metadata)
    Doc.configure_storage_manager(make_manager(backend), ledger=ledger)
    session = Session(engine, expire_on_commit=False)
    try:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        first = await doc.aset_content(b"first")
        await run(session.commit)
        second = await doc.aset_content(b"second")
        await run(session.commit)
        query = select(TABLE.c.location, TABLE.c.state)
        rows = await run(lambda: dict(session.execute(query).all()))
        assert rows == {first.location: "released", second.location: "live"}
    finally:
        await run(session.close)
        await run(engine.dispose)


async def test_an_upload_replaced_in_the_same_transaction_is_deleted_at_commit(
    lenv: LedgerEnv,
) -> None:
    async with lenv.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        draft = await doc.aset_content(b"draft")  # never flushed: no release recorded
        final = await doc.aset_content(b"final")
        await session.commit()
        await drain_pending_deletions(session)
    assert await lenv.alocations() == {final.location}
    assert await lenv.arows() == {final.location: "live"}
    assert draft.location != final.location


async def test_a_recorded_intent_is_claimed_by_the_flush_that_writes_its_ref(
    lenv: LedgerEnv,
) -> None:
    """A presigned upload: the intent is recorded before the URL is handed out,
    the first flush that writes a ref to it claims it."""
    location = lenv.manager.new_location(
        storage_key="docs", model_name="ledger_copy", entity_id=1, field_name="ref"
    )
    await lenv.ledger.arecord_intent(
        lenv.engine, location=location, storage_key="docs", backend="memory"
    )
    ref = await lenv.manager.aput_stream(
        storage_key="docs", model_name="-", entity_id="-", field_name="-",
        stream=b"from the browser", location=location,
    )  # fmt: skip
    assert await lenv.arows() == {location: "intent"}
    async with lenv.session() as session:
        lenv.ledger.watch(session)
        session.add(Copy(id=1, ref=ref))
        await session.flush()
        assert await lenv.arows() == {location: "intent"}  # claimed, not yet committed
        await session.commit()
    assert await lenv.arows() == {location: "live"}


async def test_a_session_that_loads_a_row_follows_the_ledger(lenv: LedgerEnv) -> None:
    """Deleting a row in a session that never used the mixin releases its ref:
    loading a row of a ledger model makes the session follow the ledger."""
    doc_id, ref = await lenv.acommitted_doc()
    async with lenv.session() as session:
        doc = await session.get(Doc, doc_id)
        await session.delete(doc)
        await session.commit()
    assert await lenv.arows() == {ref.location: "released"}
