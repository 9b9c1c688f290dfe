"""StoredObjectRefType, StorageJSONType, portable_storage_ref_type: storage,
change tracking, and rows written by granite-storage 0.1.0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError

from granite_storage import (
    StorageError,
    StorageJSONType,
    StoredObjectRef,
    StoredObjectRefType,
    portable_storage_ref_type,
)
from granite_storage.integrations.sqlalchemy import stored_ref_columns
from tests.integrations.conftest import Attachment, Base, Document, Env, SectionItem, flushed

V010_REF: dict[str, Any] = {  # what granite-storage 0.1.0 wrote for a stored file
    "storage_key": "documents",
    "backend": "memory",
    "location": "docs/document/legacy/file_ref/0123456789abcdef.txt",
    "size": 6,
    "checksum": "sha256:0",
    "content_type": "text/plain",
    "original_filename": "old.txt",
    "created_at": "2025-01-01T00:00:00+00:00",
    "extra": None,
}


def _raw_table(name: str, column: str) -> Table:
    """The table as 0.1.0's migrations saw it: a plain JSON/JSONB column."""
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column(column, portable_storage_ref_type()),
    )


async def test_column_is_jsonb_on_postgresql_and_json_elsewhere(env: Env) -> None:
    async with env.engine.connect() as conn:
        if env.dialect == "postgresql":
            kind = await conn.scalar(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'document' AND column_name = '_file_ref'"
                )
            )
            assert kind == "jsonb"
        else:
            ddl = await conn.scalar(text("SELECT sql FROM sqlite_master WHERE name = 'document'"))
            assert "_file_ref JSON" in ddl
    dialects = ((postgresql.dialect(), "JSONB"), (sqlite.dialect(), "JSON"))  # type: ignore[no-untyped-call]
    for dialect, expected in dialects:
        assert portable_storage_ref_type().compile(dialect=dialect) == expected
        assert StoredObjectRefType().compile(dialect=dialect) == expected
        assert StorageJSONType().compile(dialect=dialect) == expected


async def test_none_is_sql_null(env: Env) -> None:
    async with env.sessions() as session:
        session.add(Document(title="empty"))
        await session.commit()
        count = await session.scalar(
            select(text("count(*)")).select_from(Document).where(Document._file_ref.is_(None))
        )
        assert count == 1


async def test_assigning_a_new_ref_is_persisted(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x", filename="a.txt")
        await session.commit()
        changed = ref.replace(content_type="text/markdown", extra={"reviewed": True})
        doc._file_ref = changed
        assert doc in session.dirty
        await session.commit()
    async with env.sessions() as session:
        loaded = await session.scalar(select(Document._file_ref))
        assert loaded == changed
        assert loaded is not None and loaded.extra == {"reviewed": True}


async def test_an_equal_ref_writes_nothing(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x")
        await session.commit()
        statements: list[str] = []
        from sqlalchemy import event

        def record(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(env.engine.sync_engine, "before_cursor_execute", record)
        try:
            doc._file_ref = StoredObjectRef.from_dict(ref.to_dict())  # equal, not identical
            await session.commit()
        finally:
            event.remove(env.engine.sync_engine, "before_cursor_execute", record)
        assert not [s for s in statements if s.startswith("UPDATE")]


async def test_rows_written_by_0_1_0_load(env: Env) -> None:
    raw = _raw_table("section_item", "content_markdown")
    async with env.engine.begin() as conn:
        await conn.execute(
            insert(raw),
            [
                {"id": 1, "content_markdown": {"legacy_inline_text": "# Title\n\nBody ✓"}},
                {"id": 2, "content_markdown": V010_REF},
                {"id": 3, "content_markdown": None},
            ],
        )
    await env.backend.aput_stream(key=V010_REF["location"], chunks=_chunks(b"legacy"))
    async with env.sessions() as session:
        items = {i.id: i for i in await session.scalars(select(SectionItem))}
        legacy = items[1].content_markdown
        assert legacy is not None and legacy.location == ""
        assert legacy.legacy_inline_text == "# Title\n\nBody ✓"
        assert await items[1].aget_content_text() == "# Title\n\nBody ✓"
        async with items[1].aopen_content() as reader:
            assert await reader.read() == "# Title\n\nBody ✓".encode()
        stored = items[2].content_markdown
        assert stored == StoredObjectRef.from_dict(V010_REF)
        assert await items[2].aget_content() == b"legacy"
        assert items[3].content_markdown is None
        # Replacing a legacy inline ref deletes nothing (there is no object).
        result = await items[1].areplace_content("# New")
        assert result.previous_ref == legacy
        await session.commit()


async def test_json_null_written_by_0_1_0_loads_as_none(env: Env) -> None:
    from sqlalchemy import JSON

    raw = Table("attachment", MetaData(), Column("id", Integer, primary_key=True),
                Column("ref", JSON()))  # fmt: skip
    async with env.engine.begin() as conn:
        await conn.execute(insert(raw), [{"id": 1, "ref": None}])  # JSON 'null', not SQL NULL
        is_sql_null = await conn.scalar(select(raw.c.ref.is_(None)))
        assert not is_sql_null
    async with env.sessions() as session:
        attachment = await session.get(Attachment, 1)
        assert attachment is not None and attachment.ref is None


async def test_a_filename_with_nul_commits_and_round_trips(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x", filename="re\x00port\ud800.pdf", content_type="a/\x00b")
        await session.commit()
    async with env.sessions() as session:
        loaded = await session.scalar(select(Document._file_ref))
        assert loaded == ref
        assert loaded is not None
        # The type is detected from the bytes; the declared one, NUL removed, is kept beside it.
        assert (loaded.original_filename, loaded.content_type) == ("report.pdf", "text/plain")
        assert loaded.extra == {"declared_content_type": "a/b"}


async def test_binding_something_else_is_refused(env: Env) -> None:
    async with env.sessions() as session:
        session.add(Document(_file_ref="docs/x"))
        with pytest.raises(StatementError) as excinfo:
            await session.flush()
        assert isinstance(excinfo.value.orig, StorageError)


async def test_dicts_are_validated_and_normalised(env: Env) -> None:
    async with env.sessions() as session:
        doc = Document(_file_ref=V010_REF)
        session.add(doc)
        await session.commit()
        loaded = await session.scalar(select(Document._file_ref))
        assert loaded == StoredObjectRef.from_dict(V010_REF)


def test_type_is_cacheable_and_compares_refs() -> None:
    ref_type = StoredObjectRefType()
    assert StoredObjectRefType.cache_ok is True
    assert ref_type._static_cache_key == StoredObjectRefType()._static_cache_key
    ref = StoredObjectRef.from_dict(V010_REF)
    assert ref_type.compare_values(ref, StoredObjectRef.from_dict(V010_REF))
    assert not ref_type.compare_values(ref, ref.replace(size=7))
    assert not ref_type.compare_values(ref, None)
    assert ref_type.compare_values(None, None)


def test_json_path_on_the_location_compiles_for_both_databases() -> None:
    column = Document.__table__.c._file_ref
    expression = select(column["location"].as_string()).where(column["location"].as_string() == "x")
    pg = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert "->>" in str(expression.compile(dialect=pg))
    assert "JSON_EXTRACT" in str(expression.compile(dialect=sqlite.dialect()))


def test_stored_ref_columns_finds_every_ref_column() -> None:
    names = [f"{c.table.name}.{c.name}" for c in stored_ref_columns(Base.metadata)]
    assert names == [
        "attachment.ref",
        "document._file_ref",
        "eager_document.file_ref",
        "membership.badge_ref",
        "section_item.content_markdown",
        "user_account.avatar_ref",
        "user_account.banner_ref",
    ]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
