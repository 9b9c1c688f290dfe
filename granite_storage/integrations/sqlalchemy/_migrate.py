"""The database half of a migration between backends: refs rewritten in place."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    or_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger import ObjectLedger
from granite_storage.integrations.sqlalchemy._ledger_schema import LEDGER_TABLE_MARK
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns
from granite_storage.migrate import RefRewriter
from granite_storage.refs import StoredObjectRef


def ref_rewriter(
    bind: Engine | AsyncEngine, metadata: MetaData, *, ledger: ObjectLedger | None = None
) -> RefRewriter:
    """The ``rewrite`` of :func:`granite_storage.migrate.amigrate` for every
    ``StoredObjectRefType`` column under ``metadata``.

    Each call is one transaction on a new connection of ``bind``: per column,
    a JSON update of the ``backend`` field alone (``jsonb_set`` on PostgreSQL,
    ``json_set`` on SQLite and MySQL), only in rows whose ref still has the
    same storage key, backend and location. A row a concurrent writer changed
    meanwhile (a new file, so a new location) is left as the writer left it.

    The object ledger's rows follow their refs, in the same transaction: the
    row of a location a ref now names the target at, and whose ``backend`` is
    the ref's former one, names the target too (its state and ``updated_at``
    unchanged), so that the ledger's collector of the target finds it. The
    ledger tables are those of ``metadata`` (``ObjectLedger(Base.metadata)``)
    and ``ledger``'s, for a ledger whose table lives in another ``MetaData``.
    """
    columns = stored_ref_columns(metadata)
    ledgers = [table for table in metadata.tables.values() if table.info.get(LEDGER_TABLE_MARK)]
    if ledger is not None and ledger.table not in ledgers:
        ledgers.append(ledger.table)

    async def arewrite(refs: Sequence[StoredObjectRef], target: str) -> int:
        if not refs or not columns:
            return 0
        return await arun_on_connection(
            bind, lambda conn: _rewrite(conn, columns, ledgers, refs, target)
        )

    return arewrite


def _rewrite(
    conn: Connection,
    columns: list[Column[Any]],
    ledgers: list[Table],
    refs: Sequence[StoredObjectRef],
    target: str,
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
                        _field(column, "storage_key") == storage_key,
                        func.coalesce(_field(column, "backend"), "") == backend,
                        _field(column, "location").in_(locations),
                    )
                    .values({column.key: _with_backend(column, target, conn.dialect.name)})
                )
                changed += conn.execute(statement).rowcount
            for table in ledgers:
                conn.execute(_move_rows(table, columns, storage_key, backend, locations, target))
    return changed


def _move_rows(
    table: Table,
    columns: list[Column[Any]],
    storage_key: str,
    backend: str,
    locations: list[str],
    target: str,
) -> Any:
    """The update of the ledger rows of ``locations`` still naming ``backend``
    that a ref names ``target`` at (after the refs' update, in its transaction)."""
    named = [
        exists().where(
            _field(column, "location") == table.c.location,
            _field(column, "storage_key") == storage_key,
            _field(column, "backend") == target,
        )
        for column in columns
    ]
    return (
        update(table)
        .where(
            table.c.location.in_(locations),
            table.c.storage_key == storage_key,
            table.c.backend == backend,
            or_(*named),
        )
        .values(backend=target)
    )


def _field(column: Column[Any], name: str) -> ColumnElement[Any]:
    """A ref's field as text, by a literal JSON path (an index on
    ``col ->> 'location'`` matches it)."""
    path = bindparam(f"{name}_key", name, type_=JSON.JSONStrIndexType(), literal_execute=True)
    field: ColumnElement[Any] = column[path].as_string()
    return field


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
