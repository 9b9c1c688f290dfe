"""granite_storage end to end on the embedded default: local disk + SQLite.

    python examples/quickstart.py [DIRECTORY]

Stores everything under DIRECTORY (default: a new temporary directory) and
walks through the whole workflow: configure, create a row and store its
content, read it back (whole, streamed, verified), replace it, see a
rollback clean up after itself, clear a reference, and let the garbage
collector find and delete the orphans (a dry run first).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    ContentTooLargeError,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.gc import StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import (
    drain_pending_deletions,
    iter_model_storage_refs,
)


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    __tablename__ = "document"
    __stored_content_field_name__ = "_file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(default="")
    _file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


async def main(directory: Path) -> None:
    # 1. Configure: a backend, and a policy that routes "documents" to it.
    manager = StorageManager(
        backends={"local": LocalStorageBackend(directory / "storage")},
        policies={
            "documents": StoragePolicy("documents", "local", max_size=1 << 20, key_prefix="docs")
        },
    )
    Document.configure_storage_manager(manager)
    engine = create_async_engine(f"sqlite+aiosqlite:///{directory / 'app.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

    async with manager, AsyncSession(engine, expire_on_commit=False) as session:
        # 2. Create a row, flush for its primary key, store content, commit.
        doc = Document(title="Annual report")
        session.add(doc)
        await session.flush()
        await doc.aset_content(b"%PDF-1.7 first draft", filename="report.pdf")
        await session.commit()
        first = doc.stored_content.ref
        assert first is not None
        print(f"stored     {first.location} ({first.size} bytes, {first.content_type})")

        # 3. Read it back: whole and verified against its sha256, or streamed.
        assert await doc.aget_content() == b"%PDF-1.7 first draft"
        async with doc.aopen_content() as reader:
            head = await reader.read(8)
        print(f"read       {head!r}... checksum {first.checksum[:19]}...")

        # 4. Limits: an oversized upload is refused and leaves nothing behind.
        try:
            await doc.aset_content(b"x" * (2 << 20), filename="huge.bin")
        except ContentTooLargeError as exc:
            print(f"refused    {exc}")

        # 5. Replace: a new object at a new location; the old one stays until
        #    it is collected (or deleted on commit with delete_replaced=True).
        result = await doc.areplace_content(b"%PDF-1.7 final", filename="report-v2.pdf")
        await session.commit()
        print(f"replaced   {result.previous_ref.location if result.previous_ref else None}")
        print(f"      by   {result.new_ref.location}")

        # 6. A rollback deletes what the transaction uploaded.
        draft = Document(title="Never committed")
        session.add(draft)
        await session.flush()
        await draft.aset_content("a draft that will be rolled back", filename="draft.txt")
        rolled_back = draft.stored_content.ref
        await session.rollback()
        await drain_pending_deletions(session)
        assert rolled_back is not None
        assert not await manager.aexists(rolled_back)
        print(f"rollback   removed {rolled_back.location}")

        # 7. Clearing a reference does no I/O; the object becomes an orphan.
        other = Document(title="Scratch")
        session.add(other)
        await session.flush()
        await other.aset_content(b"scratch", filename="scratch.txt")
        await session.commit()
        cleared = other.clear_content_reference()
        await session.commit()
        print(f"cleared    {cleared.location if cleared else None}")

        # 8. Garbage collection: a dry run reports, a real run deletes orphans
        #    (min_age=0 here; keep the default hour in production).
        gc = StorageGarbageCollector(
            manager=manager,
            iter_references=lambda: iter_model_storage_refs(session, Document, "_file_ref"),
            min_age=timedelta(0),
        )
        dry = await gc.acollect(storage_key="documents")
        print(f"gc dry run {dry.orphaned} orphans of {dry.scanned} objects, deleted {dry.deleted}")
        report = await gc.acollect(storage_key="documents", dry_run=False)
        print(report)
        assert report.deleted == 2
        assert report.referenced == 1
        assert await doc.aget_content_text() == "%PDF-1.7 final"
    await engine.dispose()
    print("done")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp)))
