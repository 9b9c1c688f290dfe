"""The ARQ job and its worker settings; the job is called directly here, without Redis."""

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from arq.cron import CronJob
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef, StoredObjectRefType
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.arq import (
    MANAGER_CTX_KEY,
    REFERENCES_CTX_KEY,
    collect_garbage,
    gc_cron_job,
)
from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs

TMP = Path(tempfile.mkdtemp())
STORAGE_ROOT = TMP / "storage"
DATABASE_URL = f"sqlite+aiosqlite:///{TMP / 'app.db'}"


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "document"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


# --8<-- [start:worker]
async def startup(ctx: dict[str, Any]) -> None:
    engine = create_async_engine(DATABASE_URL)

    async def references(storage_key: str) -> AsyncIterator[StoredObjectRef]:
        # A session per run, closed when the collector closes this generator.
        async with AsyncSession(engine) as session:
            async for ref in iter_metadata_storage_refs(session, Base.metadata):
                yield ref

    ctx["engine"] = engine
    ctx[MANAGER_CTX_KEY] = StorageManager(
        backends={"local": LocalStorageBackend(STORAGE_ROOT)},
        policies={"documents": StoragePolicy("documents", "local", key_prefix="docs")},
    )
    ctx[REFERENCES_CTX_KEY] = references


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx[MANAGER_CTX_KEY].aclose()
    await ctx["engine"].dispose()


class WorkerSettings:  # arq myapp.worker.WorkerSettings
    functions: ClassVar[list[Any]] = [collect_garbage]  # enqueue it yourself, too
    cron_jobs: ClassVar[list[CronJob]] = [
        # every night at 03:30, delete the orphans older than six hours
        gc_cron_job("documents", hour=3, minute=30, min_age_seconds=6 * 3600),
    ]
    on_startup = startup
    on_shutdown = shutdown


# --8<-- [end:worker]


async def main() -> None:
    ctx: dict[str, Any] = {}
    await startup(ctx)
    async with ctx["engine"].begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    manager: StorageManager = ctx[MANAGER_CTX_KEY]
    await manager.aput_bytes(
        storage_key="documents", model_name="document", entity_id=1, field_name="f", content=b"x"
    )
    # What a worker runs for `await redis.enqueue_job("collect_garbage", "documents", ...)`:
    result = await collect_garbage(ctx, "documents", min_age_seconds=0)
    assert result["deleted"] == 1
    assert result["dry_run"] is False  # the job deletes by default
    dry = await collect_garbage(ctx, "documents", delete=False)
    assert dry["deleted"] == 0
    assert WorkerSettings.cron_jobs[0].name == "cron:granite_storage_gc:documents"
    await shutdown(ctx)
    print("arq job: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(TMP)
