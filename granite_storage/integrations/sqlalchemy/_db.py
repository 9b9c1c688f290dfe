"""Sync and async engines and sessions, bridged once.

Everything in the integration that touches the database is written against a
sync ``Connection`` or ``Session`` and run through one of these: on the async
side inside ``run_sync`` (SQLAlchemy's greenlet bridge, on the event loop), on
the sync side in a worker thread, so a sync engine never blocks the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, Select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_object_session
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.exc import DetachedInstanceError

from granite_storage._concurrency import aiter_in_thread
from granite_storage.errors import ConfigurationError

T = TypeVar("T")

#: What the ref iterators read from.
Executor: TypeAlias = AsyncSession | AsyncConnection | AsyncEngine | Session | Connection | Engine


async def arun_on_connection(bind: Engine | AsyncEngine, work: Callable[[Connection], T]) -> T:
    """Run ``work(connection)`` on a new connection of ``bind``: through
    ``run_sync`` on an async engine, in a worker thread on a sync one."""
    if isinstance(bind, AsyncEngine):
        engine = bind
    elif bind.dialect.is_async:
        engine = AsyncEngine(bind)
    else:
        return await anyio.to_thread.run_sync(_run_on_sync_engine, bind, work)
    async with engine.connect() as conn:
        return await conn.run_sync(work)


def _run_on_sync_engine(bind: Engine, work: Callable[[Connection], T]) -> T:
    with bind.connect() as conn:
        return work(conn)


async def arun_in_session(instance: object, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` in the session ``instance`` belongs to: through
    ``AsyncSession.run_sync``, or in a worker thread for a sync ``Session``.

    :raises DetachedInstanceError: if ``instance`` belongs to no session.
    """
    async_session = async_object_session(instance)
    if async_session is not None:
        return await async_session.run_sync(work)
    session = object_session(instance)
    if session is None:
        raise DetachedInstanceError(
            f"{type(instance).__name__} belongs to no session, so nothing can be loaded for it"
        )
    return await anyio.to_thread.run_sync(work, session)


async def aiter_batches(
    source: Executor, statement: Select[Any], batch_size: int
) -> AsyncIterator[Sequence[Any]]:
    """The first column of ``statement``'s rows, in lists of at most ``batch_size``
    (``yield_per``: a server-side cursor where the driver has one).

    An engine gives the iteration a connection of its own; a sync source is
    read in a worker thread, batch by batch.

    :raises ConfigurationError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    statement = statement.execution_options(yield_per=batch_size)
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            async for batch in aiter_batches(conn, statement, batch_size):
                yield batch
        return
    if isinstance(source, AsyncSession | AsyncConnection):
        result = (
            await source.stream_scalars(statement)
            if isinstance(source, AsyncSession)
            else (await source.stream(statement)).scalars()
        )
        try:
            async for partition in result.partitions(batch_size):
                yield partition
        finally:
            with anyio.CancelScope(shield=True):
                await result.close()
        return
    closers = contextlib.ExitStack()  # closed in a worker thread
    try:
        executor: Session | Connection = (
            closers.enter_context(await anyio.to_thread.run_sync(source.connect))
            if isinstance(source, Engine)
            else source
        )
        rows = await anyio.to_thread.run_sync(executor.execute, statement)
        closers.callback(rows.close)
        async for batch in aiter_in_thread(rows.scalars().partitions(batch_size)):
            yield batch
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(closers.close)
