"""The collector side of the object ledger: win objects through the database's
own concurrency control, check that no row references them, delete them.

Every function that touches the database is written against a sync
``Connection`` and runs through ``_db.arun_on_connection``: on an async engine
inside ``AsyncConnection.run_sync`` (SQLAlchemy's greenlet bridge, on the event
loop), on a sync engine in a worker thread.

Winning (see ``docs/ledger.md`` for the proof):

* PostgreSQL, READ COMMITTED: ``UPDATE ... SET state='deleting' WHERE location
  IN (SELECT ... FOR UPDATE SKIP LOCKED)``. A row that an open transaction
  claimed, released or protected is locked by it and skipped, whatever its
  age; a row that changed before the lock is re-checked against the newest
  version. Rows that do not exist yet are won by inserting them in state
  ``deleting`` (a unique-key conflict with an in-flight insert waits at most
  ``lock_timeout``, and such locations are skipped).
* SQLite: the transaction starts with ``BEGIN IMMEDIATE``, which takes the
  database's single write lock (waiting at most the busy timeout). An
  application transaction that claimed a row holds that lock until it ends,
  so the collector never acts while one is open.

Then, in the same transaction, the won locations are looked up in every
``StoredObjectRefType`` column of the application's ``MetaData``; referenced
ones go back to ``live``. Only after the commit are objects deleted, and only
after a successful deletion is the row removed: a crash leaves ``deleting``
rows that the next run finishes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    MetaData,
    Table,
    and_,
    delete,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from granite_storage._util import batched
from granite_storage.errors import ConfigurationError, LockUnavailableError
from granite_storage.integrations.sqlalchemy._ledger_claims import new_row
from granite_storage.integrations.sqlalchemy._ledger_schema import LedgerState
from granite_storage.integrations.sqlalchemy.refs import referenced_locations_statements

#: The states a listing-free collection looks at (once older than its cutoff).
CANDIDATE_STATES = (LedgerState.INTENT, LedgerState.RELEASED, LedgerState.DELETING)
UPLOADING = LedgerState.UPLOADING
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired


@dataclass(slots=True)
class Won:
    """The outcome of one winning transaction (already committed)."""

    #: Locations now in state ``deleting``, nobody references them: location -> size.
    deleting: dict[str, int | None] = field(default_factory=dict)
    #: Won, but a row references them: back to ``live``, kept.
    referenced: list[str] = field(default_factory=list)
    #: Held by an open transaction (or being inserted by one): not won, kept.
    skipped: list[str] = field(default_factory=list)


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a lock could not be had in time."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == _LOCK_NOT_AVAILABLE:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text


@contextmanager
def win_transaction(conn: Connection, lock_wait: timedelta | None) -> Iterator[None]:
    """A transaction that may win rows (see the module docstring).

    :param lock_wait: the longest wait for a lock (PostgreSQL ``lock_timeout``,
        SQLite busy timeout); ``None`` keeps the connection's own setting.
    :raises LockUnavailableError: if the wait ran out; the transaction rolled back.
    :raises ConfigurationError: for a database other than PostgreSQL and SQLite.
    """
    dialect = conn.dialect.name
    millis = None if lock_wait is None else max(1, int(lock_wait.total_seconds() * 1000))
    try:
        if dialect == "postgresql":
            conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                if millis is not None:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{millis}ms'")
                yield
        elif dialect == "sqlite":
            with conn.begin():
                previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                if millis is not None:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {millis}")
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before any read
                    yield
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or 0)}")
        else:
            raise ConfigurationError(
                f"the object ledger supports PostgreSQL and SQLite, not {dialect!r}"
            )
    except DBAPIError as exc:
        if is_lock_error(exc):
            raise LockUnavailableError(str(exc.orig)) from exc
        raise


def _take(
    conn: Connection, table: Table, where: list[Any], *, limit: int | None, stamp: datetime
) -> dict[str, int | None]:
    """Move the rows matching ``where`` that no transaction holds to ``deleting``.

    PostgreSQL: the rows are chosen and locked once, in a materialized CTE
    (``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` may be re-run per row
    and take more than ``n``). SQLite: the statement runs under the write lock.
    """
    chosen = select(table.c.location).where(*where).order_by(table.c.updated_at)
    if limit is not None:
        chosen = chosen.limit(limit)
    values = {"state": LedgerState.DELETING.value, "updated_at": stamp}
    if conn.dialect.name == "postgresql":
        locked = chosen.with_for_update(skip_locked=True).cte("chosen").prefix_with("MATERIALIZED")
        statement = update(table).where(table.c.location == locked.c.location)
    else:
        statement = update(table).where(table.c.location.in_(chosen), *where)
    statement = statement.values(values).returning(table.c.location, table.c.size)
    return {row.location: row.size for row in conn.execute(statement)}


def _keep_referenced(
    conn: Connection, table: Table, metadata: MetaData, won: Won, stamp: datetime
) -> None:
    """Send the won locations that a row references back to ``live``."""
    referenced: set[str] = set()
    for statement in referenced_locations_statements(metadata, sorted(won.deleting)):
        referenced.update(conn.execute(statement).scalars())
    for batch in batched(sorted(referenced)):
        conn.execute(
            update(table)
            .where(table.c.location.in_(batch))
            .values(state=LedgerState.LIVE.value, updated_at=stamp)
        )
    for location in referenced:
        won.deleting.pop(location, None)
    won.referenced.extend(sorted(referenced))


def win_candidates(
    conn: Connection,
    table: Table,
    metadata: MetaData,
    wanted: Candidates,
    *,
    stamp: datetime,
    limit: int,
    lock_wait: timedelta | None,
) -> Won:
    """Win up to ``limit`` old-enough candidate rows (see :class:`Candidates`).

    ``stamp`` (the run's start, at or after the cutoffs) becomes their
    ``updated_at``, so one run never takes the same row twice.

    :raises LockUnavailableError: if the lock could not be had in time.
    """
    where = wanted.where(table, old=True)
    won = Won()
    with win_transaction(conn, lock_wait):
        won.deleting = _take(conn, table, where, limit=limit, stamp=stamp)
        _keep_referenced(conn, table, metadata, won, stamp)
    return won


def win_locations(
    conn: Connection,
    table: Table,
    metadata: MetaData,
    *,
    locations: Mapping[str, tuple[str, str]],
    stamp: datetime,
    lock_wait: timedelta | None,
    reserved_cutoff: datetime | None = None,
) -> Won:
    """Win given locations, whatever their state: ``locations`` maps each to
    ``(storage_key, backend)``, used to insert a ``deleting`` row for the
    ones the ledger does not know (objects written before it, or outside it).
    With ``reserved_cutoff``, a direct upload reserved since is kept (skipped).

    :raises LockUnavailableError: if the lock could not be had in time.
    """
    wanted = sorted(locations)
    won = Won()
    kept = []
    if reserved_cutoff is not None:
        uploading = table.c.state == UPLOADING.value
        kept.append(not_(and_(uploading, table.c.updated_at >= reserved_cutoff)))
    with win_transaction(conn, lock_wait):
        for batch in batched(wanted):
            where = [table.c.location.in_(batch), *kept]
            won.deleting.update(_take(conn, table, where, limit=None, stamp=stamp))
        rest = [location for location in wanted if location not in won.deleting]
        present: set[str] = set()
        for batch in batched(rest):
            query = select(table.c.location).where(table.c.location.in_(batch))
            present.update(conn.execute(query).scalars())
        won.skipped = [location for location in rest if location in present]
        absent = {loc: locations[loc] for loc in rest if loc not in present}
        if absent:
            inserted, busy = _insert_absent(conn, table, absent, stamp)
            won.deleting.update(dict.fromkeys(inserted))
            won.skipped.extend(busy)
        _keep_referenced(conn, table, metadata, won, stamp)
    return won


def _insert_absent(
    conn: Connection, table: Table, rows: Mapping[str, tuple[str, str]], stamp: datetime
) -> tuple[list[str], list[str]]:
    """Insert ``deleting`` rows; returns (inserted, held by another transaction)."""
    values = [
        new_row(location=location, storage_key=key, backend=backend, now=stamp)
        | {"state": LedgerState.DELETING.value}
        for location, (key, backend) in rows.items()
    ]
    insert = _insert_ignoring_conflicts(conn, table)
    try:
        with conn.begin_nested():
            got = set(conn.execute(insert.values(values)).scalars())
        return [loc for loc in rows if loc in got], [loc for loc in rows if loc not in got]
    except DBAPIError as exc:
        if not is_lock_error(exc):
            raise
    # An in-flight transaction inserts one of them: find which, one at a time.
    inserted: list[str] = []
    busy: list[str] = []
    for location, value in zip(rows, values, strict=True):
        try:
            with conn.begin_nested():
                one = conn.execute(insert.values(value)).scalars().all()
        except DBAPIError as exc:
            if not is_lock_error(exc):
                raise
            one = []
        (inserted if one else busy).append(location)
    return inserted, busy


def _insert_ignoring_conflicts(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        pg = postgresql.insert(table).on_conflict_do_nothing(index_elements=[table.c.location])
        return pg.returning(table.c.location)
    if name == "sqlite":
        lite = sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.location])
        return lite.returning(table.c.location)
    raise ConfigurationError(f"the object ledger supports PostgreSQL and SQLite, not {name!r}")


def forget(conn: Connection, table: Table, locations: Sequence[str]) -> None:
    """Delete the rows of objects that were deleted (only rows in ``deleting``)."""
    with conn.begin():
        for batch in batched(sorted(locations)):
            conn.execute(
                delete(table).where(
                    table.c.location.in_(batch), table.c.state == LedgerState.DELETING.value
                )
            )


def intents(
    conn: Connection, table: Table, locations: Sequence[str], reserved_cutoff: datetime
) -> list[str]:
    """Which of ``locations`` the ledger holds an intent for (an upload that
    may still be running: its incomplete upload is never a leftover), or a
    direct upload's reservation made since ``reserved_cutoff``."""
    found: list[str] = []
    held = or_(
        table.c.state == LedgerState.INTENT.value,
        and_(table.c.state == LedgerState.UPLOADING.value, table.c.updated_at >= reserved_cutoff),
    )
    with conn.begin():
        for batch in batched(sorted(locations)):
            query = select(table.c.location).where(table.c.location.in_(batch), held)
            found.extend(conn.execute(query).scalars())
    return found


@dataclass(frozen=True, slots=True)
class Candidates:
    """Which rows of one policy a listing-free collection may take: ``intent``,
    ``released`` and ``deleting`` rows last changed before ``cutoff``, and
    direct uploads (``uploading``) reserved before ``reserved_cutoff`` (the
    collector's leftover cutoff: a direct upload may run that long).

    ``backends`` are the names a row of the collected backend carries: its
    ``backend_name`` (the rows written on it) and the key it is registered
    under (the rows ``granite-storage migrate`` moved to it).

    ``registered``, given when the collected backend is the policy's own, are
    the keys and ``backend_name`` of every backend the manager has: a row
    naming none of them (a backend since removed, such as the
    ``MirrorBackend`` of a finished move) is the policy's backend's too, as
    a ref naming it would be.
    """

    storage_key: str
    backends: frozenset[str]
    cutoff: datetime
    reserved_cutoff: datetime
    registered: frozenset[str] | None = None

    def where(self, table: Table, *, old: bool | None) -> list[Any]:
        """The WHERE clauses of the rows old enough (``old=True``), too young
        (``False``) or both (``None``)."""
        named: ColumnElement[bool] = table.c.backend.in_(sorted(self.backends))
        if self.registered is not None:
            named = or_(named, table.c.backend.not_in(sorted(self.registered)))
        where = [
            table.c.storage_key == self.storage_key,
            named,
            table.c.state.in_([state.value for state in (*CANDIDATE_STATES, UPLOADING)]),
        ]
        if old is not None:
            aged = self.aged(table)
            where.append(aged if old else not_(aged))
        return where

    def aged(self, table: Table) -> Any:
        """The clause of the rows old enough to take."""
        return or_(
            and_(table.c.state.in_([state.value for state in CANDIDATE_STATES]),
                 table.c.updated_at < self.cutoff),
            and_(table.c.state == UPLOADING.value, table.c.updated_at < self.reserved_cutoff),
        )  # fmt: skip


def count_candidates(conn: Connection, table: Table, wanted: Candidates) -> tuple[int, int]:
    """``(old enough, too young)`` candidate rows of one policy, without locking."""
    aged = wanted.aged(table)
    query = select(func.count().filter(aged), func.count().filter(not_(aged))).where(
        *wanted.where(table, old=None)
    )
    with conn.begin():
        row = conn.execute(query).one()
    return int(row[0]), int(row[1])


def sample_candidates(conn: Connection, table: Table, wanted: Candidates, limit: int) -> list[str]:
    """The locations of the first ``limit`` old-enough candidates (a dry run's sample)."""
    query = (
        select(table.c.location)
        .where(*wanted.where(table, old=True))
        .order_by(table.c.updated_at)
        .limit(limit)
    )
    with conn.begin():
        return list(conn.execute(query).scalars())
