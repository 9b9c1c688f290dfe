"""An arq worker that collects orphaned files every night: local disk + SQLite.

The application's model and storage come from ``gc_factory.py`` next to this
file (in your project: the module that defines them). Start the worker from
this folder with arq's command line::

    export GRANITE_STORAGE_ROOT=./var/storage
    export GRANITE_STORAGE_DATABASE_URL=sqlite+aiosqlite:///./var/app.db
    export REDIS_URL=redis://localhost:6379/0
    arq arq_worker.WorkerSettings

and enqueue a collection from the application whenever you like::

    await redis.enqueue_job("collect_garbage", "documents", min_age_seconds=6 * 3600)

The worker context holds the ``StorageManager`` and a function that streams
every reference from the database (granite_storage.integrations.arq reads
them under ``MANAGER_CTX_KEY`` and ``REFERENCES_CTX_KEY``).

Running this file (``python examples/arq_worker.py``) with ``REDIS_URL`` set
seeds a temporary directory with one kept document and one orphan, enqueues
``collect_garbage`` and runs a burst worker; without ``REDIS_URL`` it only
says how to run it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker
from gc_factory import DATABASE_ENV, ROOT_ENV, Base, Document, build_manager
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from granite_storage import StoredObjectRef
from granite_storage.integrations.arq import (
    MANAGER_CTX_KEY,
    REFERENCES_CTX_KEY,
    collect_garbage,
    gc_cron_job,
)
from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs

REDIS_ENV = "REDIS_URL"


# --8<-- [start:worker]
async def startup(ctx: dict[str, Any]) -> None:
    """Put the manager and the reference source into the worker context."""
    engine = create_async_engine(os.environ.get(DATABASE_ENV, "sqlite+aiosqlite:///./var/app.db"))

    async def references(storage_key: str) -> AsyncIterator[StoredObjectRef]:
        # A session per run, closed when the collector closes this generator.
        # Every policy's refs are read: a ref of any policy protects its object.
        async with AsyncSession(engine) as session:
            async for ref in iter_metadata_storage_refs(session, Base.metadata):
                yield ref

    ctx["engine"] = engine
    ctx[MANAGER_CTX_KEY] = build_manager(os.environ.get(ROOT_ENV, "./var/storage"))
    ctx[REFERENCES_CTX_KEY] = references


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx[MANAGER_CTX_KEY].aclose()
    await ctx["engine"].dispose()


class WorkerSettings:
    """``arq arq_worker.WorkerSettings``"""

    functions: ClassVar[list[Any]] = [collect_garbage]
    # Every night at 03:30, delete orphans older than six hours.
    cron_jobs: ClassVar[list[CronJob]] = [
        gc_cron_job("documents", hour=3, minute=30, min_age_seconds=6 * 3600)
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get(REDIS_ENV, "redis://localhost:6379/0"))


# --8<-- [end:worker]


async def ademo(redis_url: str) -> None:
    """Seed a document and an orphan, enqueue a collection, run a burst worker."""
    engine = create_async_engine(os.environ[DATABASE_ENV])
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with build_manager(os.environ[ROOT_ENV]) as manager, AsyncSession(engine) as session:
        Document.configure_storage_manager(manager)
        session.add(document := Document())
        await session.flush()
        await document.aset_content(b"kept", filename="kept.txt")
        await session.commit()
        await manager.aput_bytes(
            storage_key="documents",
            model_name="document",
            entity_id="lost",
            field_name="file_ref",
            content=b"nobody references me",
        )
    await engine.dispose()

    settings = RedisSettings.from_dsn(redis_url)
    redis = await create_pool(settings)
    try:
        # min_age_seconds=0 only because the demo's orphan is brand new.
        job = await redis.enqueue_job("collect_garbage", "documents", min_age_seconds=0)
        assert job is not None
        worker = Worker(
            functions=WorkerSettings.functions,
            on_startup=startup,
            on_shutdown=shutdown,
            redis_settings=settings,
            burst=True,
            poll_delay=0.05,
            handle_signals=False,
        )
        try:
            await worker.run_check()
        finally:
            with warnings.catch_warnings():
                # arq 0.28 closes its pool with redis-py 5's deprecated close().
                warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
                await worker.close()
        report = await job.result(timeout=10)
    finally:
        await redis.aclose()
    print(f"scanned {report['scanned']}, deleted {report['deleted']}")
    assert (report["scanned"], report["deleted"]) == (2, 1)


if __name__ == "__main__":
    redis_url = os.environ.get(REDIS_ENV)
    if not redis_url:
        print(f"Set {REDIS_ENV} to run the demo, or start the worker with:")
        print("    cd examples && arq arq_worker.WorkerSettings")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ[ROOT_ENV] = str(Path(tmp) / "storage")
            os.environ[DATABASE_ENV] = f"sqlite+aiosqlite:///{Path(tmp) / 'app.db'}"
            asyncio.run(ademo(redis_url))
