"""A model that owns its file: store, read, replace, clear; files follow the transaction."""

import asyncio
import tempfile
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.sqlalchemy import drain_pending_deletions


# --8<-- [start:model]
class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    __tablename__ = "document"
    __stored_content_field_name__ = "_file_ref"  # the column below
    __stored_content_storage_key__ = "documents"  # the policy uploads go to

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str]
    _file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


# --8<-- [end:model]


async def main(tmp: Path) -> None:
    # --8<-- [start:setup]
    backend = LocalStorageBackend(tmp / "storage")
    manager = StorageManager(
        backends={"local": backend},
        policies={
            "documents": StoragePolicy(
                "documents", "local", max_size=10 << 20, key_prefix="docs", delete_replaced=True
            )
        },
    )
    Document.configure_storage_manager(manager)  # once, at startup

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    # --8<-- [end:setup]

    async def stored() -> list[str]:
        return sorted([location async for location in backend.aiter_locations("docs")])

    # --8<-- [start:store]
    async with Session() as session:
        doc = Document(title="Annual report")
        session.add(doc)
        await session.flush()  # the primary key names the location: flush first

        await doc.aset_content(b"%PDF-1.7 v1", filename="report.pdf")
        await session.commit()

        assert await doc.aget_content() == b"%PDF-1.7 v1"
        async with doc.aopen_content() as reader:
            first_bytes = await reader.read(4)
        assert first_bytes == b"%PDF"
        doc_id = doc.id
    # --8<-- [end:store]
    assert await stored() == [doc._file_ref.location]  # type: ignore[union-attr]

    # --8<-- [start:rollback]
    async with Session() as session:
        doc = await session.get_one(Document, doc_id)
        await doc.aset_content(b"%PDF-1.7 draft", filename="draft.pdf")
        await session.rollback()  # the draft's object is deleted, the row keeps v1
        await drain_pending_deletions(session)  # wait for the cleanup (tests, jobs)
    # --8<-- [end:rollback]
    assert len(await stored()) == 1

    # --8<-- [start:replace]
    async with Session() as session:
        doc = await session.get_one(Document, doc_id)
        result = await doc.areplace_content(b"%PDF-1.7 v2", filename="report-v2.pdf")
        assert result.previous_ref is not None
        assert result.new_ref.location != result.previous_ref.location  # never overwritten
        await session.commit()  # delete_replaced=True: v1 is deleted after the commit
        await drain_pending_deletions(session)
    # --8<-- [end:replace]
    assert await stored() == [result.new_ref.location]

    # --8<-- [start:clear]
    async with Session() as session:
        doc = await session.get_one(Document, doc_id)
        old = doc.clear_content_reference()  # no I/O: sets the column to None
        await session.commit()
        await drain_pending_deletions(session)
        assert old == result.new_ref
        assert await doc.aget_content() is None
    # --8<-- [end:clear]
    assert await stored() == []

    await engine.dispose()
    print("sqlalchemy model: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
