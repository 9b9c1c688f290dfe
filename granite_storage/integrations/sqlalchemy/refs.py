"""Stream the refs stored in the database, for the garbage collector.

``iter_model_storage_refs(session, Document, "_file_ref")`` yields the
non-null refs of one column; ``iter_metadata_storage_refs(session,
Base.metadata)`` yields those of every ``StoredObjectRefType`` column under a
``MetaData``, so a collector can be handed every reference without a
hand-written list::

    gc = StorageGarbageCollector(
        manager=manager,
        iter_references=lambda: iter_metadata_storage_refs(session, Base.metadata),
    )

Rows are fetched in batches of ``batch_size`` (``yield_per``; a server-side
cursor where the driver has one), so memory stays bounded by one batch.

``session`` may be an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``
(an engine gets a connection of its own for the iteration), or their sync
counterparts ``Session``, ``Connection``, ``Engine``. Sync ones would block the
event loop, so each batch is fetched in a worker thread (``anyio.to_thread``):
do not use a sync session from another task while the iteration runs.

A session runs the query in its own transaction (autobegun, left open for
you to end); an engine gives the iteration a connection of its own, which
suits a long garbage-collection run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import anyio
import anyio.to_thread
from sqlalchemy import Column, Connection, Engine, MetaData, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import ColumnProperty, Session
from sqlalchemy.orm import InstrumentedAttribute as _Attr

from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy.types import StoredObjectRefType, stored_ref_columns
from granite_storage.refs import StoredObjectRef

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Executor",
    "iter_metadata_storage_refs",
    "iter_model_storage_refs",
]

#: Rows fetched per round trip.
DEFAULT_BATCH_SIZE = 1000

#: What the iterators read from.
Executor: TypeAlias = AsyncSession | AsyncConnection | AsyncEngine | Session | Connection | Engine


async def iter_model_storage_refs(
    session: Executor,
    model: type[Any],
    attr: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AsyncIterator[StoredObjectRef]:
    """Yield the non-null refs of ``model.attr``, streamed in batches.

    Refs migrated from 0.1.0 text columns (no location, inline text) are
    yielded too; their ``location`` is ``""``.

    :raises ConfigurationError: if ``model.attr`` is not a mapped
        ``StoredObjectRefType`` column, or ``batch_size`` < 1.
    """
    column = _ref_column(model, attr)
    async for ref in _aiter_refs(session, _refs_select(column), batch_size):
        yield ref


async def iter_metadata_storage_refs(
    session: Executor,
    metadata: MetaData,
    storage_key: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AsyncIterator[StoredObjectRef]:
    """Yield the non-null refs of every ``StoredObjectRefType`` column of
    every table in ``metadata``, table by table (sorted by name).

    :param storage_key: only refs of this policy (filtered in SQL).
    :raises ConfigurationError: if ``batch_size`` < 1.
    """
    for column in stored_ref_columns(metadata):
        statement = _refs_select(column)
        if storage_key is not None:
            statement = statement.where(column["storage_key"].as_string() == storage_key)
        async for ref in _aiter_refs(session, statement, batch_size):
            yield ref


def _ref_column(model: type[Any], attr: str) -> _Attr[Any]:
    column = getattr(model, attr, None)
    prop = getattr(column, "property", None)
    if not isinstance(column, _Attr) or not isinstance(prop, ColumnProperty):
        raise ConfigurationError(f"{model.__name__}.{attr} is not a mapped column")
    if not isinstance(prop.columns[0].type, StoredObjectRefType):
        raise ConfigurationError(
            f"{model.__name__}.{attr} is not a StoredObjectRefType column, so it holds no refs"
        )
    return column


def _refs_select(column: Column[Any] | _Attr[Any]) -> Select[Any]:
    return select(column).where(column.is_not(None))


async def _aiter_refs(
    source: Executor, statement: Select[Any], batch_size: int
) -> AsyncIterator[StoredObjectRef]:
    async for batch in aiter_batches(source, statement, batch_size):
        for value in batch:
            if isinstance(value, StoredObjectRef):  # JSON 'null' rows load as None
                yield value


async def aiter_batches(
    source: Executor, statement: Select[Any], batch_size: int
) -> AsyncIterator[Sequence[Any]]:
    """The first column of ``statement``'s rows, in lists of at most ``batch_size``."""
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
    async for batch in _aiter_sync_batches(source, statement, batch_size):
        yield batch


async def _aiter_sync_batches(
    source: Session | Connection | Engine, statement: Select[Any], batch_size: int
) -> AsyncIterator[Sequence[Any]]:
    closers: list[Callable[[], object]] = []  # run in reverse order, in a worker thread
    try:
        executor: Session | Connection
        if isinstance(source, Engine):
            executor = await anyio.to_thread.run_sync(source.connect)
            closers.append(executor.close)
        else:
            executor = source
        result = await anyio.to_thread.run_sync(executor.execute, statement)
        closers.append(result.close)
        partitions = result.scalars().partitions(batch_size)
        fetch: Callable[[], Sequence[Any] | None] = lambda: next(partitions, None)  # noqa: E731
        while (batch := await anyio.to_thread.run_sync(fetch)) is not None:
            yield batch
    finally:
        with anyio.CancelScope(shield=True):
            for close in reversed(closers):
                await anyio.to_thread.run_sync(close)
