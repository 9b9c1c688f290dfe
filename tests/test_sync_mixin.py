"""StoredContentMixin's blocking methods (0.1.0's names) with a sync Session:
files follow the transaction, the object ledger, refusal inside an event loop
or for an AsyncSession; on SQLite and PostgreSQL (psycopg)."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from granite_storage import StorageManager as AsyncStorageManager
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy import ObjectLedger
from granite_storage.sync import (
    ContentTooLargeError,
    LocalStorageBackend,
    ObjectNotFoundError,
    StorageError,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
    SyncInEventLoopError,
    drain_pending_deletions,
)


class Base(DeclarativeBase):
    pass


class Doc(StoredContentMixin, Base):
    __tablename__ = "sync_doc"
    __stored_content_field_name__ = "_file_ref"
    __stored_content_storage_key__ = "docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    _file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class EagerDoc(StoredContentMixin, Base):
    """Deletes replaced and cleared objects after the commit."""

    __tablename__ = "sync_eager_doc"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "docs"
    __stored_content_delete_replaced__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


LEDGER = ObjectLedger(Base.metadata)
MODELS = (Doc, EagerDoc)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[StorageManager]:
    with StorageManager(
        backends={"local": LocalStorageBackend(tmp_path / "storage")},
        policies={"docs": StoragePolicy("docs", "local", max_size=1 << 20, key_prefix="docs")},
    ) as manager:
        for model in MODELS:
            model.configure_storage_manager(manager)
        yield manager


@pytest.fixture
def pg_sync_engine(postgres_url: str) -> Iterator[Engine]:
    """A sync engine (psycopg) on a fresh PostgreSQL database."""
    url = make_url(postgres_url).set(drivername="postgresql+psycopg")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
    engine = create_engine(url.set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A sync engine with the tables, on a SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        engine = request.getfixturevalue("pg_sync_engine")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=[False, True], ids=["plain", "ledger"])
def ledger(request: pytest.FixtureRequest, manager: StorageManager) -> ObjectLedger | None:
    ledger = LEDGER if request.param else None
    for model in MODELS:
        model.configure_storage_manager(manager, ledger=ledger)
    return ledger


def _ledger_rows(engine: Engine, ledger: ObjectLedger) -> dict[str, Any]:
    table = ledger.table
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.location, table.c.state, table.c.size)).all()
    return {location: (state, size) for location, state, size in rows}


def test_the_0_1_0_methods_in_a_sync_session(
    engine: Engine, manager: StorageManager, ledger: ObjectLedger | None
) -> None:
    with Session(engine) as session:  # expire_on_commit: every read below loads the ref
        doc = Doc(id=1)
        session.add(doc)
        session.flush()
        first = doc.set_content(b"first", filename="a.txt")
        session.commit()
        assert doc.get_content() == b"first"
        assert doc.get_content_text() == "first"
        session.commit()
        with doc.open_content() as file:  # type: ignore[union-attr]
            assert file.read() == b"first"
        result = doc.replace_content("second")
        assert result.previous_ref == first
        assert result.new_ref.content_type == "text/plain; charset=utf-8"
        session.commit()
        assert doc.set_content_from_stream(io.BytesIO(b"third")).size == 5
        session.commit()
        third = doc.clear_content_reference()
        session.commit()
        assert doc.get_content() is None and doc.open_content() is None
        drain_pending_deletions(session)
    assert third is not None and manager.get(third) == b"third"
    with Session(engine) as session:
        assert session.scalars(select(Doc._file_ref)).one() is None
    assert manager.exists(first)  # the policy keeps replaced objects: left to the collector
    if ledger is not None:
        rows = _ledger_rows(engine, ledger)
        assert rows[third.location] == ("released", 5)
        assert rows[first.location] == ("released", 5)


def test_rollback_deletes_the_uploads_of_the_transaction(
    engine: Engine, manager: StorageManager, ledger: ObjectLedger | None
) -> None:
    with Session(engine) as session:
        session.add(Doc(id=1))
        session.commit()
        doc = session.get(Doc, 1)
        assert doc is not None
        kept = doc.set_content(b"kept")
        session.commit()
        new = doc.replace_content(b"rolled back").new_ref
        session.rollback()
        assert doc.get_content() == b"kept"
        drain_pending_deletions(session)
    assert not manager.exists(new)
    assert manager.exists(kept)
    if ledger is not None:
        assert new.location not in _ledger_rows(engine, ledger)
        assert _ledger_rows(engine, ledger)[kept.location] == ("live", 4)


def test_a_savepoint_rolled_back_deletes_only_its_own_uploads(
    engine: Engine, manager: StorageManager
) -> None:
    with Session(engine) as session:
        first, second = Doc(id=1), Doc(id=2)
        session.add_all([first, second])
        session.flush()
        kept = first.set_content(b"outer")
        with session.begin_nested() as savepoint:
            inner = second.set_content(b"inner")
            savepoint.rollback()
        session.commit()
        drain_pending_deletions(session)
        assert second.get_content() is None
    assert manager.exists(kept)
    assert not manager.exists(inner)


def test_commit_deletes_what_was_replaced_or_cleared_when_the_model_opts_in(
    engine: Engine, manager: StorageManager, ledger: ObjectLedger | None
) -> None:
    with Session(engine) as session:
        doc = EagerDoc(id=1)
        session.add(doc)
        session.flush()
        first = doc.set_content(b"first")
        session.commit()
        second = doc.replace_content(b"second").new_ref
        assert manager.exists(first)  # until the commit
        session.commit()
        drain_pending_deletions(session)
        assert not manager.exists(first)
    with Session(engine) as session:  # only a clear in this session: no I/O of the mixin
        doc = session.get(EagerDoc, 1)
        assert doc is not None
        session.expire(doc)
        assert doc.clear_content_reference() == second  # the expired ref is loaded
        session.commit()
        drain_pending_deletions(session)
    assert not manager.exists(second)


def test_a_failed_upload_leaves_the_ref_and_nothing_stored(
    engine: Engine, manager: StorageManager, tmp_path: Path
) -> None:
    with Session(engine) as session:
        doc = Doc(id=1)
        session.add(doc)
        session.flush()
        with pytest.raises(ContentTooLargeError):
            doc.set_content_from_stream(iter([b"x" * (1 << 20), b"y"]))
        assert doc.get_content() is None
    assert not [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]


def test_the_sessions_work_runs_in_the_callers_thread(manager: StorageManager) -> None:
    # sqlite:// lives in one connection of one thread: a query from any other
    # thread would find no table there, or be refused the connection.
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    threads: list[threading.Thread] = []
    with Session(engine) as session:
        event.listen(
            session, "do_orm_execute", lambda _: threads.append(threading.current_thread())
        )
        doc = Doc(id=1)
        session.add(doc)
        session.flush()
        doc.set_content(b"hello")
        session.commit()  # expires the ref: reading the content loads it
        assert doc.get_content() == b"hello"
        session.expire(doc)
        with doc.open_content() as file:  # type: ignore[union-attr]
            assert file.read() == b"hello"
    assert threads == [threading.current_thread()] * 2
    engine.dispose()


def test_inside_an_event_loop_they_name_the_coroutine(
    manager: StorageManager, tmp_path: Path
) -> None:
    doc = Doc(id=1)

    async def main() -> None:
        with pytest.raises(SyncInEventLoopError, match=r"Doc.set_content\(\).*aset_content"):
            doc.set_content(b"x")
        with pytest.raises(SyncInEventLoopError, match="aopen_content"):
            doc.open_content()
        with pytest.raises(SyncInEventLoopError, match="aget_content_text"):
            doc.get_content_text()
        # from a worker thread (no loop there), the blocking call works
        assert await anyio.to_thread.run_sync(doc.get_content) is None

    asyncio.run(main())


async def test_an_async_sessions_rows_refuse_them(
    sqlite_engine: AsyncEngine, manager: StorageManager
) -> None:
    async with sqlite_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(sqlite_engine) as session:
        doc = Doc(id=1)
        session.add(doc)
        await session.flush()
        ref = await doc.aset_content(b"async")  # the async methods use its async_manager
        with pytest.raises(SyncInEventLoopError, match="aget_content"):
            doc.get_content()
        with pytest.raises(SyncInEventLoopError, match=r"AsyncSession.*aset_content"):
            await anyio.to_thread.run_sync(doc.set_content, b"x")
        assert await doc.aget_content() == b"async"
        await session.commit()
    assert await manager.async_manager.aexists(ref)


def test_configuration_says_which_manager(manager: StorageManager) -> None:
    assert Doc.get_storage_manager() is manager.async_manager
    async_manager = AsyncStorageManager(
        backends={"memory": MemoryStorageBackend()},
        policies={"docs": StoragePolicy("docs", "memory")},
    )
    Doc.configure_storage_manager(async_manager)
    assert Doc.get_storage_manager() is async_manager
    with pytest.raises(ConfigurationError, match=r"granite_storage\.sync\.StorageManager"):
        Doc(id=1).set_content(b"x")
    with pytest.raises(ConfigurationError, match=r"not builtins\.dict"):
        Doc.configure_storage_manager({})  # type: ignore[arg-type]


def test_missing_objects_and_ids_raise_storage_errors(manager: StorageManager) -> None:
    doc = Doc(id=1)
    ref = doc.set_content(b"gone")
    manager.delete(ref)
    with pytest.raises(ObjectNotFoundError):
        doc.open_content()
    with pytest.raises(ObjectNotFoundError):
        doc.get_content()
    with pytest.raises(StorageError, match="must have an id"):
        Doc().set_content(b"x")
