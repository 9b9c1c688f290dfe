"""The object ledger: a table of stored objects that makes garbage collection
strict and listing-free (opt-in; see ``docs/ledger.md`` for the protocol and
its proof).

Without a ledger, an upload is protected from the collector only by the grace
period, and finding orphans means listing the whole bucket. With one::

    ledger = ObjectLedger(Base.metadata)         # the table joins your MetaData
    StoredContentMixin.configure_storage_manager(manager, ledger=ledger)

* before each upload through the mixin, its location is recorded (``intent``,
  in its own short transaction) and then claimed inside the application's
  transaction, which holds the claim until it commits or rolls back;
* every flush releases the refs that left rows and protects those that
  entered rows (see ``_ledger_flush``);
* :class:`~granite_storage.integrations.sqlalchemy.LedgerGarbageCollector` deletes an
  object only after winning its row through the database's concurrency
  control (row locks and ``SKIP LOCKED`` on PostgreSQL, the write lock on
  SQLite) and checking that no row references it; it finds its candidates in
  the ledger, so a run costs O(candidates), not O(objects in the bucket).

Supported databases: PostgreSQL (application transactions at READ COMMITTED,
the default) and SQLite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, MetaData, Table, delete, event, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper, Session, UOWTransaction, object_session

from granite_storage._util import as_utc
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger_claims import (
    LedgerClaim,
    aclaim_upload,
    commit,
    new_row,
)
from granite_storage.integrations.sqlalchemy._ledger_flush import (
    protect_and_release,
    ref_changes,
)
from granite_storage.integrations.sqlalchemy._ledger_schema import (
    LEDGER_TABLE_NAME,
    LedgerState,
    ledger_table,
)
from granite_storage.integrations.sqlalchemy._ledger_sweep import forget, win_locations
from granite_storage.integrations.sqlalchemy._mapping import bind_of
from granite_storage.integrations.sqlalchemy._plugin import TrackedObject
from granite_storage.locations import validate_location
from granite_storage.manager import StorageManager

logger = logging.getLogger("granite_storage")

_INFO_KEY = "granite_storage.ledger"


class ObjectLedger:
    """A ledger of stored objects kept in the application's database.

    :param metadata: the ``MetaData`` to define the table in. Pass your
        ``Base.metadata`` so that ``create_all`` and Alembic's autogenerate
        see it; by default the ledger has a ``MetaData`` of its own
        (``await conn.run_sync(ledger.metadata.create_all)``). Either way the
        table must live in the database of the models that use the ledger.
    :param table_name: the table's name.
    :param intent_bind: the engine that commits intents (each in its own short
        transaction, while the application's transaction holds a connection
        of its own). Default: the session's engine for the model. An engine
        of its own, on the same database, keeps a busy connection pool from
        making uploads wait for themselves (see ``docs/ledger.md``).
    :param record_intents: record each upload's intent in its own transaction
        before the upload (crashed processes' objects are then found without
        listing). With ``False`` the claim is made inside the application's
        transaction only: collections stay strict, crashes are left to the
        listing audit.
    :param lock_timeout: how long a collection waits for a lock before it
        skips the object (PostgreSQL ``lock_timeout``, SQLite busy timeout).
    :param clock: returns the current time, timezone-aware (tests pass their own).
    :raises ValueError: for a negative ``lock_timeout``.
    """

    def __init__(
        self,
        metadata: MetaData | None = None,
        *,
        table_name: str = LEDGER_TABLE_NAME,
        intent_bind: Engine | AsyncEngine | None = None,
        record_intents: bool = True,
        lock_timeout: timedelta = timedelta(milliseconds=200),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if lock_timeout < timedelta(0):
            raise ValueError(f"lock_timeout must not be negative, got {lock_timeout}")
        self.metadata = metadata if metadata is not None else MetaData()
        existing = self.metadata.tables.get(table_name)
        self.table: Table = (
            existing if existing is not None else ledger_table(self.metadata, table_name)
        )
        self.intent_bind = intent_bind
        self.record_intents = record_intents
        self.lock_timeout = lock_timeout
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"ObjectLedger(table={self.table.name!r})"

    def now(self) -> datetime:
        """The ledger's clock, in UTC.

        :raises ValueError: if the clock returns a naive datetime.
        """
        return as_utc(self._clock())

    def watch(self, session: Session | AsyncSession) -> None:
        """Make ``session``'s flushes release and protect refs in this ledger.

        The mixin calls it when a session loads a row of a model configured
        with this ledger, and on its first upload or clear in a session. Call
        it yourself (no I/O; safe to call again) for sessions that write refs
        into other tables without loading such a row, e.g. in your session
        factory.

        :raises ConfigurationError: if another ledger already watches ``session``.
        """
        sync = session.sync_session if isinstance(session, AsyncSession) else session
        current = sync.info.get(_INFO_KEY)
        if current is self:
            return  # already watching (called for every loaded row: keep it cheap)
        if current is not None and current is not self:
            raise ConfigurationError(
                "this session already follows another ObjectLedger; use one ledger per "
                "database (configure every model with the same ledger)"
            )
        sync.info[_INFO_KEY] = self
        if not event.contains(sync, "after_flush", _after_flush):
            event.listen(sync, "after_flush", _after_flush)

    async def arecord_intent(
        self, bind: Engine | AsyncEngine, *, location: str, storage_key: str, backend: str
    ) -> None:
        """Record an upload made outside the mixin (a presigned upload, say)
        before it starts, in its own committed transaction on ``bind``.

        The first flush that writes a ref to ``location`` claims it. Until
        then only the collector's grace period protects the object (there is
        no transaction holding it): pick a ``min_age`` longer than the time
        between this call and that commit. An upload that never gets a ref
        is deleted by the collector after the grace period.

        :raises InvalidLocationError: if ``location`` is unsafe.
        """
        await self._arecord(bind, LedgerState.INTENT, location, storage_key, backend)

    async def areserve_direct_upload(
        self, *, location: str, storage_key: str, backend: str
    ) -> None:
        """Reserve the location of a new direct upload (state ``uploading``)
        in its own committed transaction on ``intent_bind``; the manager calls
        it from ``acreate_direct_upload`` once this ledger is configured
        (``configure_storage_manager(manager, ledger=...)``). The collector
        leaves the reservation alone until it is older than its
        ``leftover_min_age``; ``aattach_direct_upload`` claims it. Nothing is
        recorded with ``record_intents=False``.

        :raises ConfigurationError: if the ledger has no ``intent_bind``: no
            session tells it which database to record in at that point.
        """
        if not self.record_intents:
            return
        if self.intent_bind is None:
            raise ConfigurationError(
                "the object ledger reserves each direct upload when it is created, outside "
                "any session, so it needs to know the database: pass "
                "ObjectLedger(..., intent_bind=engine) (or record_intents=False)"
            )
        await self._arecord(self.intent_bind, LedgerState.UPLOADING, location, storage_key, backend)

    async def arelease_direct_upload(self, *, location: str, storage_key: str) -> None:
        """Drop the reservation of an aborted direct upload (the manager calls
        it from ``aabort_direct_upload``); a claimed row is left alone."""
        if not self.record_intents or self.intent_bind is None:
            return
        table = self.table
        statement = delete(table).where(
            table.c.location == validate_location(location),
            table.c.storage_key == storage_key,
            table.c.state == LedgerState.UPLOADING.value,
        )
        await arun_on_connection(self.intent_bind, lambda conn: commit(conn, statement))

    async def _arecord(
        self,
        bind: Engine | AsyncEngine,
        state: LedgerState,
        location: str,
        storage_key: str,
        backend: str,
    ) -> None:
        """Insert a row for ``location`` in ``state``, committed on its own."""
        row = new_row(
            location=validate_location(location),
            storage_key=storage_key,
            backend=backend,
            now=self.now(),
        )
        statement = insert(self.table).values(**row, state=state.value)
        await arun_on_connection(bind, lambda conn: commit(conn, statement))

    async def aclaim_upload(
        self,
        instance: object,
        *,
        location: str,
        storage_key: str,
        backend: str,
        reserved: bool = False,
    ) -> LedgerClaim:
        """Record and claim ``location`` before an upload by ``instance``, in
        the transaction of its session (used by stored content; see
        ``_ledger_claims``). ``reserved``: a direct upload, whose reservation
        is claimed if there is one.

        :raises LedgerConflictError: if a collector won the intent before the claim.
        :raises ConfigurationError: if the transaction cannot see the committed
            intent, the database is neither PostgreSQL nor SQLite, or
            ``instance`` belongs to no session.
        """
        session, mapper = object_session(instance), sa_inspect(instance).mapper
        if session is None:
            raise ConfigurationError(f"{type(instance).__name__} belongs to no session")
        self.watch(session)
        intent_bind = (
            (self.intent_bind or bind_of(session, mapper)) if self.record_intents else None
        )
        return await aclaim_upload(
            instance,
            mapper,
            self.table,
            intent_bind=intent_bind,
            reserved=reserved,
            row=new_row(
                location=location, storage_key=storage_key, backend=backend, now=self.now()
            ),
        )

    async def asweep_tracked(
        self, objects: Sequence[TrackedObject], *, bind: Engine, metadata: MetaData, reason: str
    ) -> None:
        """Delete objects a transaction left behind, through the ledger (used
        by the session listeners; never raises, failures are logged)."""
        await _asweep_tracked(self, objects, bind=bind, metadata=metadata, reason=reason)


def reserve_direct_uploads(manager: StorageManager, ledger: ObjectLedger) -> None:
    """Make ``manager`` reserve its direct uploads in ``ledger``, and in no
    other ledger (one ledger per database, and a policy's objects live in one)."""
    for hook in manager.direct_upload_hooks:
        if isinstance(hook, ObjectLedger) and hook is not ledger:
            manager.remove_direct_upload_hook(hook)
    manager.add_direct_upload_hook(ledger)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    ledger = session.info.get(_INFO_KEY)
    if not isinstance(ledger, ObjectLedger):
        return
    merged: dict[int, tuple[Mapper[Any], set[str], set[str]]] = {}
    for mapper, (added, removed) in ref_changes(flush_context).items():
        if not added and not removed:
            continue
        bind = session.get_bind(mapper=mapper)
        _, all_added, all_removed = merged.setdefault(id(bind), (mapper, set(), set()))
        all_added.update(added)
        all_removed.update(removed)
    if not merged:
        return
    now = ledger.now()
    for mapper, added, removed in merged.values():
        conn = session.connection(bind_arguments={"mapper": mapper})
        protect_and_release(conn, ledger.table, added=added, removed=removed, now=now)


async def _asweep_tracked(
    ledger: ObjectLedger,
    objects: Sequence[TrackedObject],
    *,
    bind: Engine,
    metadata: MetaData,
    reason: str,
) -> None:
    """Delete the objects a transaction left behind (its rolled-back uploads,
    the objects it released when the policy deletes them), through the ledger:
    each is won first, so none is deleted while a transaction holds it or a
    row references it. Never raises (except cancellation): failures are
    logged and left to the garbage collector."""
    by_location = {obj.ref.location: obj for obj in objects}
    wanted = {loc: (obj.ref.storage_key, obj.ref.backend) for loc, obj in by_location.items()}
    stamp = ledger.now()
    table = ledger.table
    try:
        won = await arun_on_connection(
            bind,
            lambda conn: win_locations(
                conn, table, metadata, locations=wanted, stamp=stamp, lock_wait=None
            ),
        )
    except Exception:
        logger.exception(
            "granite_storage: could not win %d object(s) left by %s in the object ledger; "
            "they are left to the garbage collector",
            len(wanted),
            reason,
        )
        return
    for location in won.referenced + won.skipped:
        logger.debug("granite_storage: kept %r after %s: in use", location, reason)
    deleted: list[str] = []
    for location in won.deleting:
        obj = by_location[location]
        try:
            await obj.manager.adelete(obj.ref)
        except Exception:
            logger.exception(
                "granite_storage: could not delete %r after %s; the garbage collector will "
                "finish it (its ledger row stays in state 'deleting')",
                location,
                reason,
            )
        else:
            deleted.append(location)
    if not deleted:
        return
    try:
        await arun_on_connection(bind, lambda conn: forget(conn, table, deleted))
    except Exception:
        logger.exception(
            "granite_storage: deleted %d object(s) after %s but could not remove their "
            "ledger rows; the garbage collector will",
            len(deleted),
            reason,
        )
