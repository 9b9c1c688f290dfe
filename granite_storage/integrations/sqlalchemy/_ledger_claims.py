"""The upload side of the object ledger: record an intent, claim it in the
application's transaction, upload, record the size and checksum.

1. **Intent**: ``INSERT (location, state='intent')`` in its own short
   transaction on a separate connection, committed before any byte is sent,
   so that a process killed after the upload leaves a row the collector finds.
2. **Claim**: ``UPDATE ... SET state='live' WHERE location=:loc AND
   state='intent'`` in the application's transaction. It locks the row
   (PostgreSQL) or takes the database's write lock (SQLite) until that
   transaction ends. No row updated means a collector won the intent first:
   :class:`LedgerConflictError` is raised before anything is uploaded.
3. The upload, then ``size`` and ``checksum`` in the same transaction. If
   the upload fails, the row is deleted in that transaction.

On SQLite the intent cannot be committed on another connection while the
application's own transaction holds the write lock (it has written something,
typically the flush that gave the row its primary key): that would wait for
itself. The claim is then an ``INSERT (state='live')`` in the application's
transaction: collections stay strict, but a process killed after such an
upload leaves an object only the listing audit finds. The same happens
everywhere with ``ObjectLedger(record_intents=False)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio
from sqlalchemy import Connection, Engine, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapper

from granite_storage.errors import ConfigurationError, LedgerConflictError
from granite_storage.integrations.sqlalchemy._db import arun_in_session, arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger_schema import (
    LedgerState,
)
from granite_storage.refs import StoredObjectRef

logger = logging.getLogger("granite_storage")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _AppTransaction:
    """Runs statements in the transaction of the session ``instance`` belongs to."""

    instance: object
    mapper: Mapper[Any]

    async def arun(self, work: Callable[[Connection], T]) -> T:
        bind_arguments: dict[str, Any] = {"mapper": self.mapper}
        return await arun_in_session(
            self.instance, lambda session: work(session.connection(bind_arguments=bind_arguments))
        )


class LedgerClaim:
    """One upload's location, claimed in the application's transaction."""

    __slots__ = ("_app", "_table", "location")

    def __init__(self, app: _AppTransaction, table: Table, location: str) -> None:
        self._app = app
        self._table = table
        self.location = location

    async def arecord(self, ref: StoredObjectRef) -> None:
        """Fill in the size and checksum of the uploaded object."""
        table = self._table
        statement = (
            update(table)
            .where(table.c.location == self.location)
            .values(size=ref.size, checksum=ref.checksum)
        )
        await self._app.arun(lambda conn: conn.execute(statement))

    async def aabandon(self) -> None:
        """The upload failed: delete the row in the application's transaction
        (shielded from cancellation). Never raises: if the row stays, it turns
        back into an intent when the transaction rolls back, which the
        collector removes."""
        table = self._table
        statement = delete(table).where(table.c.location == self.location)
        with anyio.CancelScope(shield=True):
            try:
                await self._app.arun(lambda conn: conn.execute(statement))
            except Exception:
                logger.exception(
                    "granite_storage: could not remove the ledger row of the failed upload "
                    "to %r; the garbage collector removes it once the transaction ends",
                    self.location,
                )


async def aclaim_upload(
    instance: object,
    mapper: Mapper[Any],
    table: Table,
    *,
    intent_bind: Engine | AsyncEngine | None,
    row: dict[str, Any],
    reserved: bool = False,
) -> LedgerClaim:
    """Record and claim the location of ``row`` (a :func:`new_row`) before its
    upload (see the module docstring); ``intent_bind=None``: no intent, the
    claim is made inside the application's transaction. ``reserved``: a
    direct upload, whose reservation (``uploading``, recorded when it was
    created) is claimed; without one, the location is recorded and claimed
    as for any upload.

    :raises LedgerConflictError: if a collector won the intent before the claim.
    :raises ConfigurationError: if the transaction cannot see the committed
        intent (PostgreSQL at REPEATABLE READ or SERIALIZABLE), or the
        database is neither PostgreSQL nor SQLite.
    """
    app = _AppTransaction(instance, mapper)
    location, now = row["location"], row["updated_at"]
    dialect, holds_write_lock = await app.arun(_inspect_connection)
    if dialect not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"the object ledger supports PostgreSQL and SQLite, not {dialect!r}; configure "
            "the model without a ledger"
        )
    if reserved and await app.arun(lambda conn: _claim_reservation(conn, table, location, now)):
        return LedgerClaim(app, table, location)
    if intent_bind is None or holds_write_lock:
        live = insert(table).values(**row, state=LedgerState.LIVE.value)
        await app.arun(lambda conn: conn.execute(live))
        return LedgerClaim(app, table, location)
    intent = insert(table).values(**row, state=LedgerState.INTENT.value)
    await arun_on_connection(intent_bind, lambda conn: commit(conn, intent))
    claim = (
        update(table)
        .where(table.c.location == location, table.c.state == LedgerState.INTENT.value)
        .values(state=LedgerState.LIVE.value, updated_at=now)
        .returning(table.c.location)
    )
    claimed = await app.arun(lambda conn: conn.execute(claim).first() is not None)
    if not claimed:
        state = await arun_on_connection(
            intent_bind,
            lambda conn: conn.execute(
                select(table.c.state).where(table.c.location == location)
            ).scalar(),
        )
        if state == LedgerState.INTENT.value:
            gone = delete(table).where(table.c.location == location)
            await arun_on_connection(intent_bind, lambda conn: commit(conn, gone))
            raise ConfigurationError(
                f"the object ledger could not claim {location!r}: this transaction does not "
                "see rows committed after it began, so it runs at REPEATABLE READ or "
                "SERIALIZABLE. Uploads with a ledger need READ COMMITTED (PostgreSQL's "
                "default) on the session's connection; or use "
                "ObjectLedger(record_intents=False), which claims inside the transaction "
                "(process crashes are then found by the listing audit only). (Or the "
                "ledger's intent_bind is not the application's database: it must be.)"
            )
        raise LedgerConflictError(
            f"the garbage collector removed the reservation of {location!r} before this "
            "transaction could claim it (more than the collector's grace period passed "
            "between the two); nothing was uploaded: try again",
            location=location,
        )
    return LedgerClaim(app, table, location)


def _claim_reservation(conn: Connection, table: Table, location: str, now: datetime) -> bool:
    """Claim the reservation of a direct upload in the application's
    transaction; ``False`` if there is no row for ``location``.

    :raises LedgerConflictError: if the row is in another state: the collector
        won the reservation (older than its ``leftover_min_age``) or another
        transaction took the location.
    """
    claim = (
        update(table)
        .where(table.c.location == location, table.c.state == LedgerState.UPLOADING.value)
        .values(state=LedgerState.LIVE.value, updated_at=now)
        .returning(table.c.location)
    )
    if conn.execute(claim).first() is not None:
        return True
    state = conn.execute(select(table.c.state).where(table.c.location == location)).scalar()
    if state is None:
        return False
    raise LedgerConflictError(
        f"the direct upload to {location!r} cannot be attached: its ledger row is "
        f"{state!r}, not 'uploading' (the garbage collector removes a reservation older "
        "than its leftover_min_age, and an upload is attached once); start a new upload",
        location=location,
    )


def new_row(*, location: str, storage_key: str, backend: str, now: datetime) -> dict[str, Any]:
    """The values of a new ledger row, but its state (size and checksum unknown yet)."""
    return {
        "location": location,
        "storage_key": storage_key,
        "backend": backend,
        "size": None,
        "checksum": None,
        "created_at": now,
        "updated_at": now,
    }


def commit(conn: Connection, statement: Any) -> None:
    """Execute ``statement`` in a transaction of its own on ``conn``."""
    with conn.begin():
        conn.execute(statement)


def _inspect_connection(conn: Connection) -> tuple[str, bool]:
    """The dialect's name, and whether this is SQLite with a transaction begun
    at the database level (with the default driver settings: it has written,
    so it holds the write lock)."""
    name = conn.dialect.name
    if name != "sqlite":
        return name, False
    driver = conn.connection.driver_connection
    return name, bool(getattr(driver, "in_transaction", True))
