"""Refs in the database: streamed for the garbage collector, and looked up by
location before a deletion.

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

:func:`areferenced_locations` answers, before an object is deleted, whether
some row still holds a ref to it (``col ->> 'location' IN (...)`` over every
``StoredObjectRefType`` column of a ``MetaData``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    CompoundSelect,
    Engine,
    MetaData,
    Select,
    bindparam,
    select,
    union_all,
)
from sqlalchemy.orm import ColumnProperty
from sqlalchemy.orm import InstrumentedAttribute as _Attr

from granite_storage._util import batched
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy._db import Executor, aiter_batches, arun_on_connection
from granite_storage.integrations.sqlalchemy.types import StoredObjectRefType, stored_ref_columns
from granite_storage.refs import StoredObjectRef

__all__ = ["iter_metadata_storage_refs", "iter_model_storage_refs", "select_model_storage_refs"]

#: Rows fetched per round trip.
DEFAULT_BATCH_SIZE = 1000


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
    async for ref in _aiter_refs(session, select_model_storage_refs(model, attr), batch_size):
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


def select_model_storage_refs(model: type[Any], attr: str) -> Select[Any]:
    """The query of :func:`iter_model_storage_refs`: the non-null refs of
    ``model.attr``. Run it yourself to add conditions or to read it in the
    thread that owns a sync ``Session`` (``granite_storage.sync`` does)::

        for ref in session.scalars(select_model_storage_refs(Document, "_file_ref")): ...

    :raises ConfigurationError: if ``model.attr`` is not a mapped
        ``StoredObjectRefType`` column.
    """
    return _refs_select(_ref_column(model, attr))


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


async def areferenced_locations(bind: Engine, metadata: MetaData, locations: list[str]) -> set[str]:
    """The subset of ``locations`` that some :class:`StoredObjectRefType`
    column under ``metadata`` holds, read in a new, short transaction."""
    statements = referenced_locations_statements(metadata, locations)
    if not statements:
        return set()
    return await arun_on_connection(
        bind, lambda conn: {loc for query in statements for loc in conn.execute(query).scalars()}
    )


def referenced_locations_statements(
    metadata: MetaData, locations: list[str]
) -> list[CompoundSelect[Any]]:
    """The queries of :func:`areferenced_locations`: each selects the
    locations of one batch that some ref column under ``metadata`` holds
    (``col ->> 'location' IN (...)``, one ``UNION ALL`` branch per column).
    Empty when there are no ref columns or no locations."""
    columns = stored_ref_columns(metadata)
    if not columns or not locations:
        return []
    # The JSON path is rendered as a literal, so that the expression matches an
    # index on ``col ->> 'location'`` (SQLite cannot match a bound path, and a
    # generic PostgreSQL plan neither).
    key = bindparam("location_key", "location", type_=JSON.JSONStrIndexType(), literal_execute=True)
    return [
        union_all(
            *(
                select(column[key].as_string().label("location")).where(
                    column[key].as_string().in_(batch)
                )
                for column in columns
            )
        )
        for batch in batched(locations)
    ]
