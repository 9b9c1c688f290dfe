"""A ``granite-storage gc`` factory that yields the object ledger's collector
(``tests/test_cli.py`` runs the command against it): examples/gc_factory.py's
manager and models, with the ledger's table added to the same database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import create_async_engine

from examples.gc_factory import DATABASE_ENV, ROOT_ENV, Base, build_manager
from granite_storage import StorageManager
from granite_storage.integrations.sqlalchemy import LedgerGarbageCollector, ObjectLedger

LEDGER = ObjectLedger(Base.metadata)


@asynccontextmanager
async def storage() -> AsyncIterator[tuple[StorageManager, LedgerGarbageCollector]]:
    engine = create_async_engine(os.environ[DATABASE_ENV])
    try:
        async with engine.begin() as conn:
            await conn.run_sync(LEDGER.table.create, checkfirst=True)
        async with build_manager(os.environ[ROOT_ENV]) as manager:
            yield (
                manager,
                LedgerGarbageCollector(manager, LEDGER, engine, reference_metadata=Base.metadata),
            )
    finally:
        await engine.dispose()


@asynccontextmanager
async def foreign() -> AsyncIterator[tuple[StorageManager, LedgerGarbageCollector]]:
    """A collector built on another manager than the one yielded: refused."""
    engine = create_async_engine(os.environ[DATABASE_ENV])
    try:
        async with build_manager(os.environ[ROOT_ENV]) as manager:
            other = build_manager(os.environ[ROOT_ENV])
            yield (
                manager,
                LedgerGarbageCollector(other, LEDGER, engine, reference_metadata=Base.metadata),
            )
    finally:
        await engine.dispose()
