"""iter_model_storage_refs and iter_metadata_storage_refs: every ref, in batches,
from async and sync sessions, connections and engines."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import (
    JSON,
    Column,
    MetaData,
    String,
    Table,
    Uuid,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from granite_storage import StoredObjectRef
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy import (
    iter_metadata_storage_refs,
    iter_model_storage_refs,
)
from granite_storage.integrations.sqlalchemy._db import aiter_batches
from tests.integrations.conftest import Base, Document, Env, User

ROWS = 10  # refs; _fill adds a JSON 'null' row that only a raw query sees
BATCH = 4


def _ref(n: int, storage_key: str = "documents") -> StoredObjectRef:
    return StoredObjectRef(storage_key, "memory", f"docs/document/{n}/file_ref/{n:032x}", n, "")


async def _fill(engine: AsyncEngine) -> list[StoredObjectRef]:
    """ROWS refs, three SQL NULLs and one JSON 'null' (written by 0.1.0's plain JSON type)."""
    refs = [_ref(n) for n in range(ROWS)]
    plain = Table(
        "document",
        MetaData(),
        Column("id", Uuid),
        Column("title", String),
        Column("_file_ref", JSON()),  # none_as_null=False: None is JSON 'null'
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(Document),
            [{"id": uuid.UUID(int=n), "title": "", "_file_ref": r} for n, r in enumerate(refs)]
            + [{"id": uuid.UUID(int=n), "title": "", "_file_ref": None} for n in (100, 101, 102)],
        )
        await conn.execute(
            insert(plain), [{"id": uuid.UUID(int=103), "title": "", "_file_ref": None}]
        )
        assert not await conn.scalar(
            select(plain.c._file_ref.is_(None)).where(plain.c.id == uuid.UUID(int=103))
        )
    return refs


async def _collect(iterator: AsyncIterator[StoredObjectRef]) -> list[StoredObjectRef]:
    return [ref async for ref in iterator]


async def test_model_refs_from_an_async_session(env: Env) -> None:
    refs = await _fill(env.engine)
    options: list[dict[str, Any]] = []
    async with env.sessions() as session:
        event.listen(
            session.sync_session,
            "do_orm_execute",
            lambda state: options.append(dict(state.execution_options)),
        )
        found = await _collect(
            iter_model_storage_refs(session, Document, "_file_ref", batch_size=BATCH)
        )
    assert sorted(found, key=lambda r: r.size) == refs
    assert options and options[0]["yield_per"] == BATCH


async def test_rows_come_in_batches(env: Env) -> None:
    refs = await _fill(env.engine)
    statement = select(Document._file_ref).where(Document._file_ref.is_not(None))
    async with env.sessions() as session:
        sizes = [len(b) async for b in aiter_batches(session, statement, BATCH)]
    assert sizes == [4, 4, 3]  # ROWS refs and the JSON 'null' row, by BATCH
    async with env.engine.connect() as conn:
        sizes = [len(b) async for b in aiter_batches(conn, statement, BATCH)]
    assert sizes == [4, 4, 3]
    assert len(refs) == ROWS


async def test_model_refs_from_an_async_engine_and_connection(env: Env) -> None:
    refs = await _fill(env.engine)
    found = await _collect(iter_model_storage_refs(env.engine, Document, "_file_ref"))
    assert sorted(found, key=lambda r: r.size) == refs
    async with env.engine.connect() as conn:
        found = await _collect(iter_model_storage_refs(conn, Document, "_file_ref"))
    assert sorted(found, key=lambda r: r.size) == refs


async def test_stopping_early_closes_the_result(env: Env) -> None:
    await _fill(env.engine)
    async with env.sessions() as session:
        iterator = iter_model_storage_refs(session, Document, "_file_ref", batch_size=2)
        first = await anext(iterator)
        await iterator.aclose()  # type: ignore[attr-defined]
        assert isinstance(first, StoredObjectRef)
        # The session is still usable: the streamed result was closed.
        assert await session.scalar(select(Document.title).limit(1)) == ""


async def test_metadata_refs_cover_every_ref_column(env: Env) -> None:
    refs = await _fill(env.engine)
    avatar, banner = _ref(500, "avatars"), _ref(501, "banners")
    async with env.sessions() as session:
        session.add(User(user_id=1, avatar_ref=avatar, banner_ref=banner))
        await session.commit()
        everything = await _collect(iter_metadata_storage_refs(session, Base.metadata))
        banners = await _collect(
            iter_metadata_storage_refs(session, Base.metadata, storage_key="banners")
        )
    assert sorted(everything, key=lambda r: r.size) == [*refs, avatar, banner]
    assert banners == [banner]


async def test_bad_arguments_are_refused(env: Env) -> None:
    with pytest.raises(ConfigurationError, match="not a mapped column"):
        await _collect(iter_model_storage_refs(env.engine, Document, "nope"))
    with pytest.raises(ConfigurationError, match="StoredObjectRefType"):
        await _collect(iter_model_storage_refs(env.engine, Document, "title"))
    with pytest.raises(ConfigurationError, match="batch_size"):
        await _collect(iter_model_storage_refs(env.engine, Document, "_file_ref", batch_size=0))


@pytest.fixture
def sync_sqlite(tmp_path: Path) -> Any:
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(engine)
    refs = [_ref(n) for n in range(ROWS)]
    with engine.begin() as conn:
        conn.execute(
            insert(Document),
            [{"id": uuid.UUID(int=n), "title": "", "_file_ref": r} for n, r in enumerate(refs)],
        )
    yield engine, refs
    engine.dispose()


async def test_model_refs_from_a_sync_session_do_not_block_the_loop(sync_sqlite: Any) -> None:
    engine, refs = sync_sqlite
    # blockbuster (autouse) fails this test if a query ran in the event loop's thread.
    session = Session(engine)
    try:
        found = await _collect(
            iter_model_storage_refs(session, Document, "_file_ref", batch_size=BATCH)
        )
        statement = select(Document._file_ref)
        sizes = [len(b) async for b in aiter_batches(session, statement, BATCH)]
    finally:
        await anyio.to_thread.run_sync(session.close)
    assert sorted(found, key=lambda r: r.size) == refs
    assert sizes == [4, 4, 2]
    found = await _collect(iter_metadata_storage_refs(engine, Base.metadata, "documents"))
    assert sorted(found, key=lambda r: r.size) == refs
