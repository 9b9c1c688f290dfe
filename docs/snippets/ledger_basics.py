"""The object ledger: strict, listing-free garbage collection."""

import asyncio
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy_model import Base, Document  # the model of docs/snippets/sqlalchemy_model.py

from granite_storage import StorageManager, StoragePolicy, StoredContentMixin
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.sqlalchemy import (
    LedgerGarbageCollector,
    ObjectLedger,
    drain_pending_deletions,
)


async def main(tmp: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    # --8<-- [start:setup]
    manager = StorageManager(
        backends={"local": LocalStorageBackend(tmp / "storage")},
        policies={"documents": StoragePolicy("documents", "local", key_prefix="docs")},
    )
    ledger = ObjectLedger(Base.metadata)  # the table joins the models' MetaData
    StoredContentMixin.configure_storage_manager(manager, ledger=ledger)

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)  # creates granite_storage_objects too
    # --8<-- [end:setup]
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    # --8<-- [start:use]
    async with sessions() as session:
        doc = Document(id=uuid.uuid4(), title="Report")
        session.add(doc)
        first = await doc.aset_content(b"v1")  # intent committed, then claimed here
        await session.commit()  # the claim commits with the row: 'live'

        await doc.aset_content(b"v2")  # the flush marks v1 'released'
        await session.commit()
    # --8<-- [end:use]
    await drain_pending_deletions(session)

    # --8<-- [start:collect]
    collector = LedgerGarbageCollector(
        manager,
        ledger,
        engine,
        reference_metadata=Base.metadata,  # every ref column is checked before deleting
        min_age=timedelta(minutes=5),
    )
    # Listing-free: candidates come from the ledger, O(candidates) per run.
    report = await collector.acollect(storage_key="documents", dry_run=False)

    # Now and then: the listing audit, for objects the ledger never knew.
    audit = await collector.aaudit(storage_key="documents", dry_run=False)
    # --8<-- [end:collect]
    assert (report.scanned, report.skipped_too_young, report.deleted) == (1, 1, 0)
    assert audit.deleted == 0
    later = LedgerGarbageCollector(
        manager, ledger, engine, reference_metadata=Base.metadata, min_age=timedelta(0)
    )
    report = await later.acollect(storage_key="documents", dry_run=False)
    assert report.deleted == 1
    assert not await manager.aexists(first)
    async with sessions() as session:
        loaded = await session.get(Document, doc.id)
        assert loaded is not None
        assert await loaded.aget_content() == b"v2"
    await engine.dispose()
    print("ledger basics: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
