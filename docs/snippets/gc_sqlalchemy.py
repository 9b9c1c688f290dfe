"""Collecting with references streamed from SQLAlchemy tables."""

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy_model import Base, Document  # the model of docs/snippets/sqlalchemy_model.py

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef, StoredObjectRefType
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.gc import StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import (
    iter_metadata_storage_refs,
    iter_model_storage_refs,
)


class Attachment(Base):  # another table holding refs of the same policy
    __tablename__ = "attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


async def main(tmp: Path) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(tmp / "storage", fsync=False)},
        policies={"documents": StoragePolicy("documents", "local", key_prefix="docs")},
    )
    Document.configure_storage_manager(manager)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

    async with AsyncSession(engine, expire_on_commit=False) as session:
        doc = Document(title="The document")
        session.add(doc)
        await session.flush()
        await doc.aset_content(b"the document", filename="doc.txt")
        shared = await manager.aput_bytes(
            storage_key="documents",
            model_name="attachment",
            entity_id=1,
            field_name="file",
            content=b"an attachment",
        )
        session.add(Attachment(id=1, file_ref=shared))
        await session.commit()
        await manager.aput_bytes(  # an orphan: no row refers to it
            storage_key="documents",
            model_name="document",
            entity_id=2,
            field_name="file",
            content=b"lost",
        )

        # --8<-- [start:sources]
        # One column: the Attachment's object would look orphaned here!
        only_documents = StorageGarbageCollector(
            manager,
            lambda: iter_model_storage_refs(session, Document, "_file_ref"),
            min_age=timedelta(0),  # only because this script's objects are brand new
        )
        report = await only_documents.acollect(storage_key="documents")  # a dry run
        assert report.eligible == 2  # the orphan, and the attachment

        # Every StoredObjectRefType column under the metadata: nothing is missed.
        every_table = StorageGarbageCollector(
            manager,
            lambda: iter_metadata_storage_refs(session, Base.metadata),
            min_age=timedelta(0),
        )
        report = await every_table.acollect(storage_key="documents", dry_run=False)
        assert report.deleted == 1  # only the orphan
        # --8<-- [end:sources]
        assert await manager.aexists(shared)
        assert await doc.aget_content() == b"the document"
    await engine.dispose()
    print("gc sqlalchemy: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
