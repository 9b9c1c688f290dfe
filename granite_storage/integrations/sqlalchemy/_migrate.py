"""The database half of a migration between backends: refs rewritten in place."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    Text,
    cast,
    func,
    literal_column,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns
from granite_storage.migrate import RefRewriter
from granite_storage.refs import StoredObjectRef


def ref_rewriter(bind: Engine | AsyncEngine, metadata: MetaData) -> RefRewriter:
    """The ``rewrite`` of :func:`granite_storage.migrate.amigrate` for every
    ``StoredObjectRefType`` column under ``metadata``.

    Each call is one transaction on a new connection of ``bind``: per column,
    a JSON update of the ``backend`` field alone (``jsonb_set`` on PostgreSQL,
    ``json_set`` on SQLite and MySQL), only in rows whose ref still has the
    same storage key, backend and location. A row a concurrent writer changed
    meanwhile (a new file, so a new location) is left as the writer left it.
    """
    columns = stored_ref_columns(metadata)

    async def arewrite(refs: Sequence[StoredObjectRef], target: str) -> int:
        if not refs or not columns:
            return 0
        return await arun_on_connection(bind, lambda conn: _rewrite(conn, columns, refs, target))

    return arewrite


def _rewrite(
    conn: Connection, columns: list[Column[Any]], refs: Sequence[StoredObjectRef], target: str
) -> int:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ref in refs:
        groups[ref.storage_key, ref.backend].append(ref.location)
    changed = 0
    with conn.begin():
        for (storage_key, backend), locations in groups.items():
            for column in columns:
                statement = (
                    update(column.table)
                    .where(
                        column["storage_key"].as_string() == storage_key,
                        func.coalesce(column["backend"].as_string(), "") == backend,
                        column["location"].as_string().in_(locations),
                    )
                    .values({column.key: _with_backend(column, target, conn.dialect.name)})
                )
                changed += conn.execute(statement).rowcount
    return changed


def _with_backend(column: Column[Any], target: str, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        path: ColumnElement[Any] = literal_column("'{backend}'::text[]")
        return func.jsonb_set(column, path, func.to_jsonb(cast(target, Text)))
    if dialect in ("sqlite", "mysql", "mariadb"):
        return func.json_set(column, "$.backend", target)
    raise ConfigurationError(
        f"rewriting refs in place is not implemented for {dialect!r}; PostgreSQL, SQLite, "
        "MySQL and MariaDB are"
    )
