"""A factory for the ``granite-storage gc`` command: local disk + SQLite.

The command imports ``MODULE:FACTORY``, calls it, and enters the async
context manager it returns, which yields ``(manager, iter_references)``::

    export GRANITE_STORAGE_ROOT=./var/storage
    export GRANITE_STORAGE_DATABASE_URL=sqlite+aiosqlite:///./var/app.db
    # what would be deleted (a dry run), then delete orphans older than two hours
    granite-storage gc examples.gc_factory:storage --storage-key documents
    granite-storage gc examples.gc_factory:storage --storage-key documents --delete --min-age 2h

Every ``StoredObjectRefType`` column under ``Base.metadata`` is a reference:
``iter_metadata_storage_refs`` streams them in batches, so a large table is
never loaded whole.

Run this file (``python examples/gc_factory.py``) for a demo in a temporary
directory: it stores a document, replaces its content (the first object
becomes an orphan) and runs the collector through the factory.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.gc import ReferenceSource, StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import (
    StoredContentMixin,
    StoredObjectRefType,
    iter_metadata_storage_refs,
)

#: Environment variables the factory reads.
ROOT_ENV = "GRANITE_STORAGE_ROOT"
DATABASE_ENV = "GRANITE_STORAGE_DATABASE_URL"


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    __tablename__ = "document"
    __stored_content_field_name__ = "_file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(default="")
    _file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


def build_manager(root: str | os.PathLike[str]) -> StorageManager:
    """The application's storage: one policy on local disk, under its own prefix."""
    return StorageManager(
        backends={"local": LocalStorageBackend(root)},
        policies={
            "documents": StoragePolicy(
                "documents", "local", max_size=10 << 20, key_prefix="documents"
            )
        },
    )


@asynccontextmanager
async def storage() -> AsyncIterator[tuple[StorageManager, ReferenceSource]]:
    """The factory: ``granite-storage gc examples.gc_factory:storage --storage-key documents``."""
    root = os.environ.get(ROOT_ENV, "./var/storage")
    engine = create_async_engine(os.environ.get(DATABASE_ENV, "sqlite+aiosqlite:///./var/app.db"))
    try:
        async with build_manager(root) as manager, AsyncSession(engine) as session:
            yield manager, lambda: iter_metadata_storage_refs(session, Base.metadata)
    finally:
        await engine.dispose()


async def ademo() -> None:
    """Leave two orphans behind (a replaced content, a deleted row) and collect them."""
    engine = create_async_engine(os.environ[DATABASE_ENV])
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with build_manager(os.environ[ROOT_ENV]) as manager, AsyncSession(engine) as session:
        Document.configure_storage_manager(manager)
        report, draft = Document(title="report"), Document(title="draft")
        session.add_all([report, draft])
        await session.flush()
        await report.aset_content(b"first version", filename="report.txt")
        await draft.aset_content(b"a draft", filename="draft.txt")
        await session.commit()
        # Replaced objects are kept by default (readers may still stream them),
        # and deleting a row leaves its object: both are the collector's job.
        await report.areplace_content(b"final version", filename="report.txt")
        await session.delete(draft)
        await session.commit()
    await engine.dispose()

    async with storage() as (manager, references):
        # min_age=0 only because the demo's orphan is a few milliseconds old;
        # keep the default hour (or more) in production.
        collector = StorageGarbageCollector(manager, references, min_age=timedelta(0))
        print(await collector.acollect(storage_key="documents"))  # a dry run
        result = await collector.acollect(storage_key="documents", dry_run=False)
        print(result)
    assert (result.scanned, result.referenced, result.deleted) == (3, 1, 2)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[ROOT_ENV] = str(Path(tmp) / "storage")
        os.environ[DATABASE_ENV] = f"sqlite+aiosqlite:///{Path(tmp) / 'app.db'}"
        asyncio.run(ademo())
