"""When a ref column is loaded: after the first flush, after an async method
loaded it, and what the error says when it is not (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, defer, mapped_column

from granite_storage import StorageError, StoredContentMixin, StoredObjectRef, StoredObjectRefType
from tests.integrations.conftest import Document, Env, User, flushed


class DefaultsBase(DeclarativeBase):
    pass


#: A placeholder ref the database fills in.
PLACEHOLDER = StoredObjectRef("documents", "memory", "docs/placeholder.png", 0, "sha256:00")


class Defaulted(StoredContentMixin, DefaultsBase):
    """A ref column with a server default: its value after the INSERT is the server's."""

    __tablename__ = "defaulted"
    __stored_content_field_name__ = "ref"
    __stored_content_storage_key__ = "documents"
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": False}  # no RETURNING
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[StoredObjectRef | None] = mapped_column(
        StoredObjectRefType(), server_default=text(f"'{json.dumps(PLACEHOLDER.to_dict())}'")
    )


def unloaded(obj: object) -> set[str]:
    return set(sa_inspect(obj).unloaded)


async def test_a_new_objects_refs_are_none_after_its_first_flush(env: Env) -> None:
    async with env.sessions(expire_on_commit=True) as session:
        doc, user = Document(), User(user_id=7)
        session.add_all([doc, user])
        await session.flush()
        assert "_file_ref" not in unloaded(doc)
        assert {"avatar_ref", "banner_ref"}.isdisjoint(unloaded(user))
        assert doc.clear_content_reference() is None  # no I/O, no error
        assert user.avatar.ref is None and user.banner.clear() is None
        ref = await doc.aset_content(b"x")
        await session.commit()
        assert await session.scalar(select(Document._file_ref)) == ref


async def test_a_server_default_is_read_from_the_database(env: Env) -> None:
    async with env.engine.begin() as conn:
        await conn.run_sync(DefaultsBase.metadata.create_all)
    Defaulted.configure_storage_manager(env.manager)
    async with env.sessions() as session:
        obj = await flushed(session, Defaulted(id=1))
        assert await obj.stored_content.aget_ref() == PLACEHOLDER  # not taken for None
        assert obj.clear_content_reference() == PLACEHOLDER


async def test_async_methods_leave_the_ref_loaded(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"data")
        await session.commit()
        # Unloaded without being expired, as SQLAlchemy leaves a column it did
        # not write at flush: reading it returns the value and keeps nothing.
        del sa_inspect(doc).dict["_file_ref"]
        assert "_file_ref" in unloaded(doc)
        assert "_file_ref" not in sa_inspect(doc).expired_attributes
        assert await doc.aget_content() == b"data"
        assert "_file_ref" not in unloaded(doc)
        assert doc.clear_content_reference() == ref  # no I/O
    for read in ("aget_content", "aget_content_text", "aopen_content"):
        async with env.sessions() as session:
            query = select(Document).options(defer(Document._file_ref))
            loaded = (await session.scalars(query)).one()
            assert "_file_ref" in unloaded(loaded)
            if read == "aopen_content":
                async with loaded.aopen_content() as reader:
                    assert await reader.read() == b"data"
            else:
                assert await getattr(loaded, read)() in (b"data", "data")
            assert "_file_ref" not in unloaded(loaded)
            assert loaded.clear_content_reference() == ref  # no I/O


async def test_expired_ref_is_loaded_by_async_methods(env: Env) -> None:
    async with env.sessions(expire_on_commit=True) as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"data")
        await session.commit()  # expires doc
        with pytest.raises(StorageError, match="refresh"):
            doc.clear_content_reference()
        assert await doc.aget_content() == b"data"
        assert "_file_ref" not in unloaded(doc)
        await session.commit()
        result = await doc.areplace_content(b"new")
        assert result.previous_ref == ref
        await session.commit()
        assert await doc.aget_content_text() == "new"
        await session.refresh(doc)
        assert doc.clear_content_reference() == result.new_ref


async def test_the_error_names_why_the_ref_is_not_loaded_and_what_to_do(env: Env) -> None:
    async with env.sessions(expire_on_commit=True) as session:
        doc = await flushed(session, Document())
        await doc.aset_content(b"data")
        await session.commit()
        with pytest.raises(
            StorageError, match=r"Document\._file_ref was expired \(by a commit"
        ) as expired:
            doc.clear_content_reference()
        assert "await session.refresh(obj, ['_file_ref'])" in str(expired.value)
        assert "awaitable_attrs._file_ref" in str(expired.value)
        session.expunge(doc)
    async with env.sessions() as session:
        query = select(Document).options(defer(Document._file_ref))
        loaded = (await session.scalars(query)).one()
        with pytest.raises(StorageError, match="was never loaded") as never:
            assert loaded.stored_content.ref is None
        assert "await session.refresh(obj, ['_file_ref'])" in str(never.value)
        await session.refresh(loaded, ["_file_ref"])  # what the message says to do
        assert loaded.stored_content.ref is not None
