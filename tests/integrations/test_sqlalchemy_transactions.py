"""Stored objects follow the transaction: rollback, commit, savepoints, failures."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from granite_storage import StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import BackendError
from granite_storage.integrations.sqlalchemy import drain_pending_deletions
from granite_storage.testing import manager_for
from tests.integrations.conftest import (
    Attachment,
    Base,
    Document,
    EagerDocument,
    Env,
    User,
    flushed,
    make_manager,
)


async def _committed_document(
    env: Env, content: bytes = b"v1"
) -> tuple[uuid.UUID, StoredObjectRef]:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(content)
        await session.commit()
        return doc.id, ref


async def test_rollback_deletes_the_upload(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x")
        assert await env.alocations() == {ref.location}
        await session.rollback()
        await drain_pending_deletions(session)
        assert await env.alocations() == set()


async def test_rollback_after_replace_keeps_the_committed_object(env: Env) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        result = await doc.areplace_content(b"v2")
        await session.rollback()
        await drain_pending_deletions(session)
        assert await env.alocations() == {ref.location}
        assert result.new_ref.location != ref.location


async def test_a_commit_that_fails_deletes_the_upload(env: Env) -> None:
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        session.add(Attachment(id=1))
        await session.commit()
        doc = await session.get_one(Document, doc_id)
        new = await doc.aset_content(b"v2")
        session.add(Attachment(id=1))  # duplicate key: the commit's flush fails
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
    await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location}
    assert new.location != ref.location


async def test_a_rollback_that_cannot_undo_the_row_keeps_its_object(env: Env) -> None:
    """With AUTOCOMMIT the flushed row survives the rollback: so does its object."""
    autocommit = env.engine.execution_options(isolation_level="AUTOCOMMIT")
    async with env.sessions(bind=autocommit) as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x")
        await session.flush()
        await session.rollback()
        await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location}
    async with env.sessions() as session:
        assert await session.scalar(select(Document._file_ref)) == ref


async def test_session_closed_with_an_open_transaction_deletes_the_upload(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        await doc.aset_content(b"x")
    await drain_pending_deletions(session)
    assert await env.alocations() == set()


async def test_changing_a_ref_outside_a_transaction_begins_one(env: Env) -> None:
    """Assigning the ref starts the session's transaction, so closing the
    session still deletes an upload made while no transaction was open."""
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        await session.commit()  # expire_on_commit=False: doc stays loaded, no transaction
        assert session.sync_session.get_transaction() is None
        await doc.aset_content(b"never committed")
        assert session.sync_session.get_transaction() is not None
    await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location}


async def test_an_upload_for_an_object_in_no_session_is_an_orphan_for_the_gc(env: Env) -> None:
    """Nothing can follow a transaction the object is not part of: the upload
    stays, unreferenced, until the garbage collector removes it."""
    doc = Document(id=uuid.uuid4())
    orphan = await doc.aset_content(b"x")
    del doc  # never added to a session
    assert await env.alocations() == {orphan.location}


async def test_commit_after_replace_keeps_the_old_object_by_default(env: Env) -> None:
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        result = await doc.areplace_content(b"v2")
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location, result.new_ref.location}


async def test_commit_after_replace_deletes_the_old_object_when_the_policy_opts_in(
    env: Env,
) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        result = await doc.areplace_content(b"v2")
        assert await env.alocations() == {ref.location, result.new_ref.location}
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {result.new_ref.location}


async def test_model_and_field_overrides(env: Env) -> None:
    async with env.sessions() as session:
        eager = EagerDocument(id=1)  # model-level True over a policy that keeps
        user = User(user_id=1)  # avatars: policy keeps; banner: field-level True
        session.add_all([eager, user])
        await session.flush()
        old_eager = await eager.aset_content(b"1")
        old_avatar = await user.avatar.aset(b"a")
        old_banner = await user.banner.aset(b"b")
        await session.commit()
        new_eager = await eager.aset_content(b"2")
        new_avatar = await user.avatar.aset(b"a2")
        new_banner = await user.banner.aset(b"b2")
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {
        new_eager.location,
        old_avatar.location,
        new_avatar.location,
        new_banner.location,
    }
    assert old_eager.location not in await env.alocations()
    assert old_banner.location not in await env.alocations()


async def test_a_copy_in_another_row_keeps_the_object_alive(env: Env) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        copy = Document(_file_ref=ref)  # a second row holding the same ref
        session.add(copy)
        await session.commit()
        doc = await session.get_one(Document, doc_id)
        await doc.areplace_content(b"v2")
        await session.commit()
        await drain_pending_deletions(session)
        assert ref.location in await env.alocations()
        # The last reference goes: now the object does.
        await copy.areplace_content(b"copy v2")
        await session.commit()
        await drain_pending_deletions(session)
        assert ref.location not in await env.alocations()


async def test_a_copy_in_a_plain_table_keeps_the_object_alive(env: Env) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        session.add(Attachment(id=1, ref=ref))
        await session.commit()
        doc = await session.get_one(Document, doc_id)
        assert doc.clear_content_reference() == ref
        await session.commit()
        await drain_pending_deletions(session)
        assert ref.location in await env.alocations()
        attachment = await session.get_one(Attachment, 1)
        await session.delete(attachment)
        await session.commit()


async def test_clear_and_commit_deletes_when_opted_in(env: Env) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        assert doc.clear_content_reference() == ref
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == set()


async def test_clear_then_rollback_keeps_the_object(env: Env) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        doc.clear_content_reference()
        await session.flush()
        await session.rollback()
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location}


async def test_an_upload_replaced_in_the_same_transaction_is_deleted_at_commit(env: Env) -> None:
    async with env.sessions() as session:  # the policy keeps replaced objects
        doc = await flushed(session, Document())
        draft = await doc.aset_content(b"draft")
        final = await doc.aset_content(b"final")
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {final.location}
    assert draft.location != final.location


async def test_savepoint_rollback_deletes_only_its_uploads(env: Env) -> None:
    async with env.sessions() as session:
        user = await flushed(session, User(user_id=1))
        avatar = await user.avatar.aset(b"outer")
        async with session.begin_nested() as savepoint:
            banner = await user.banner.aset(b"inner")
            await savepoint.rollback()
        await drain_pending_deletions(session)
        assert await env.alocations() == {avatar.location}
        async with session.begin_nested():
            kept = await user.banner.aset(b"released savepoint")
        await session.commit()
        await drain_pending_deletions(session)
    assert await env.alocations() == {avatar.location, kept.location}
    assert banner.location != kept.location


async def test_a_failing_delete_after_commit_is_logged_not_raised(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenDelete(MemoryStorageBackend):
        async def _adelete(self, location: str) -> None:
            raise BackendError("disk on fire")

    env.backend = BrokenDelete()
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    caplog.set_level(logging.ERROR, logger="granite_storage")
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        new = (await doc.areplace_content(b"v2")).new_ref
        await session.commit()  # does not raise
        await drain_pending_deletions(session)
    assert await env.alocations() == {ref.location, new.location}
    records = [r for r in caplog.records if r.name == "granite_storage"]
    assert len(records) == 1
    assert ref.location in records[0].getMessage()
    assert "garbage collector" in records[0].getMessage()
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], BackendError)


async def test_a_failing_reference_check_is_logged_and_deletes_nothing(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.configure(delete_replaced=True)
    doc_id, ref = await _committed_document(env)
    async with env.engine.begin() as conn:
        await conn.run_sync(lambda c: Attachment.__table__.drop(c))  # type: ignore[attr-defined]
    caplog.set_level(logging.ERROR, logger="granite_storage")
    async with env.sessions() as session:
        doc = await session.get_one(Document, doc_id)
        await doc.areplace_content(b"v2")
        await session.commit()
        await drain_pending_deletions(session)
    assert ref.location in await env.alocations()
    assert any("still referenced" in r.getMessage() for r in caplog.records)


async def test_no_committed_row_points_to_a_missing_object(env: Env) -> None:
    env.configure(delete_replaced=True)
    ids = [uuid.uuid4() for _ in range(4)]
    async with env.sessions() as session:
        session.add_all([Document(id=i) for i in ids])
        await session.commit()
    # (action, document index, copy source or None, how the transaction ends)
    steps: list[tuple[str, int, int | None, str]] = [
        ("set", 0, None, "commit"),
        ("set", 1, None, "rollback"),
        ("replace", 0, None, "commit"),
        ("copy", 2, 0, "commit"),
        ("replace", 0, None, "rollback"),
        ("clear", 2, None, "commit"),
        ("set", 3, None, "savepoint"),
        ("replace", 1, None, "commit"),
        ("copy", 3, 1, "rollback"),
        ("replace", 1, None, "commit"),
        ("clear", 0, None, "rollback"),
        ("replace", 0, None, "commit"),
    ]
    for n, (action, target, source, end) in enumerate(steps):
        async with env.sessions() as session:
            docs = [await session.get(Document, doc_id) for doc_id in ids]
            doc = docs[target]
            assert doc is not None
            if action == "copy":
                assert source is not None
                copied = docs[source]
                assert copied is not None
                doc._file_ref = copied._file_ref
            elif action == "clear":
                doc.clear_content_reference()
            elif end == "savepoint":
                async with session.begin_nested() as savepoint:
                    await doc.aset_content(f"step {n}")
                    await savepoint.rollback()
                await doc.aset_content(f"step {n} again")
            else:
                await doc.areplace_content(f"step {n}")
            if end == "rollback":
                await session.rollback()
            else:
                await session.commit()
        await drain_pending_deletions(session)
    async with env.sessions() as session:
        refs = [ref for ref in await session.scalars(select(Document._file_ref)) if ref]
    assert len(refs) == 3
    for ref in refs:
        assert await env.manager.aget(ref, verify=True) == (await env.manager.aget(ref))
    # And nothing is left over but what the rows reference (every policy here deletes).
    assert await env.alocations() == {ref.location for ref in refs}


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


async def test_a_sync_session_used_from_worker_threads(sync_engine: Engine) -> None:
    """Events fire in the worker thread that commits or rolls back; the cleanup
    is handed to the loop the mixin ran on, and blockbuster (autouse) checks
    that no query runs in the loop's thread."""
    backend = MemoryStorageBackend()
    manager = make_manager(backend, delete_replaced=True)
    Document.configure_storage_manager(manager)
    session = Session(sync_engine)  # expire_on_commit=True
    run = anyio.to_thread.run_sync
    try:
        doc = Document()
        session.add(doc)
        await run(session.flush)
        rolled_back = await doc.aset_content(b"rolled back")
        await run(session.rollback)
        await drain_pending_deletions(session)
        assert not await manager.aexists(rolled_back)

        session.add(doc := Document())
        await run(session.flush)
        first = await doc.aset_content(b"first")
        await run(session.commit)  # expires doc: the next read loads it in a thread
        assert await doc.aget_content() == b"first"
        second = (await doc.areplace_content(b"second")).new_ref
        await run(session.commit)
        await drain_pending_deletions(session)
        assert not await manager.aexists(first)
        assert await manager.aget(second, verify=True) == b"second"
    finally:
        await run(session.close)


async def test_files_on_local_disk_follow_the_transaction(env: Env, tmp_path: Path) -> None:
    manager = manager_for(
        LocalStorageBackend(tmp_path / "storage", fsync=False),
        StoragePolicy("documents", "disk", delete_replaced=True),
        backend_key="disk",
    )
    Document.configure_storage_manager(manager)
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        first = await doc.aset_content(b"first", filename="a.txt")
        await session.commit()
        rolled_back = await doc.aset_content(b"rolled back")
        await session.rollback()
        second = (await doc.areplace_content(b"second")).new_ref
        await session.commit()
        await drain_pending_deletions(session)
    assert not await manager.aexists(first)
    assert not await manager.aexists(rolled_back)
    assert await manager.aget(second, verify=True) == b"second"
