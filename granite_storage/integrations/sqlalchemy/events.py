"""Stored objects follow the session's transaction.

What happens to the objects written or released through the mixin (or a
:func:`~granite_storage.integrations.sqlalchemy.mixin.stored_content_field`):

* **rollback** (of the whole transaction, or of the savepoint the upload was
  made in), or the session **closed** while its transaction is open: the
  objects uploaded in it are deleted;
* **commit**: the objects the transaction replaced or cleared are deleted
  when their policy opts in (``StoragePolicy(..., delete_replaced=True)``,
  overridable per model with ``__stored_content_delete_replaced__`` or per
  field). Objects uploaded and replaced again inside the same transaction
  were never visible to anyone else and are always deleted.

An object is deleted only once no row references it any more: after the
transaction, a query in a fresh, short transaction on a new connection looks
for its location in every :class:`StoredObjectRefType` column of the model's
``MetaData`` (``col ->> 'location'`` on PostgreSQL, ``json_extract`` on
SQLite), and any row still holding a copy of the ref keeps it alive.

How (SQLAlchemy's events are sync, the I/O is async): the first time the
mixin records an object for a session, it adds ``after_commit``,
``after_soft_rollback`` and ``after_transaction_end`` listeners to that one
sync ``Session`` (``AsyncSession.sync_session``; nothing global, nothing at
import time). The pending objects live in ``session.info``. The listeners do
no I/O: they pick the objects whose fate the transaction decided and start
one asyncio task on the event loop the mixin ran on (under ``AsyncSession``
the listeners run inside the loop's thread, through SQLAlchemy's greenlet
bridge; from another thread the task is submitted thread-safely). The task
checks references and deletes. ``await drain_pending_deletions(session)``
waits for those tasks: tests, background jobs and shutdown code call it.

Failures after the transaction are logged on the ``granite_storage`` logger
and never raised into the commit; what is left behind is an unreferenced
object that :class:`~granite_storage.gc.StorageGarbageCollector` removes.
Replaced objects are kept by default because readers of the old ref may still
be streaming it; the collector's grace period protects them.

The same reference check runs before deleting the uploads of a rolled-back
transaction, so a row made durable anyway (an ``AUTOCOMMIT`` connection, an
outer transaction the session had joined) keeps its object.

Savepoints: an upload made inside ``begin_nested()`` is deleted when that
savepoint rolls back; releasing the savepoint hands its objects to the
enclosing transaction.

Left to the garbage collector: uploads for objects that were in no session
(transient or detached), sessions dropped without being closed, crashed
processes, and the objects of deleted rows. The reference check sees
committed rows only: a concurrent transaction that copies a ref into another
row while it is being replaced can lose the race (keep the default,
``delete_replaced=False``, if your application copies refs between rows).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias

import anyio.to_thread
from sqlalchemy import JSON, CompoundSelect, Engine, MetaData, bindparam, event, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from granite_storage._util import batched
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef

if TYPE_CHECKING:
    from granite_storage.integrations.sqlalchemy.ledger import ObjectLedger

__all__ = [
    "TrackedObject",
    "adelete_unreferenced",
    "areferenced_locations",
    "drain_pending_deletions",
    "referenced_locations_statements",
    "track_release",
    "track_upload",
]

logger = logging.getLogger("granite_storage")

_INFO_KEY = "granite_storage.pending_objects"
# Locations per IN (...) list of the reference check.

_Pending: TypeAlias = "asyncio.Future[None] | concurrent.futures.Future[None]"


@dataclass(frozen=True, eq=False, slots=True)
class TrackedObject:
    """One stored object whose fate depends on a transaction.

    :param manager: the manager that stored it (and deletes it).
    :param ref: its ref.
    :param metadata: where to look for rows that still reference it.
    :param bind: the engine of those rows (a fresh connection is taken from it).
    :param ledger: the object ledger of the model, if one is configured: the
        deletion then goes through the ledger's strict protocol.
    """

    manager: StorageManager
    ref: StoredObjectRef
    metadata: MetaData
    bind: Engine
    ledger: ObjectLedger | None = None


@dataclass(eq=False, slots=True)
class _Entry:
    obj: TrackedObject
    #: The innermost transaction when recorded; ``None``: the next root.
    transaction: SessionTransaction | None


@dataclass(eq=False)
class _SessionObjects:
    #: The loop the mixin last ran on: cleanups started from other threads go there.
    loop: asyncio.AbstractEventLoop | None
    uploaded: list[_Entry] = field(default_factory=list)
    released: list[_Entry] = field(default_factory=list)
    tasks: set[_Pending] = field(default_factory=set)


# --------------------------------------------------------------------------- recording


def track_upload(session: Session, obj: TrackedObject) -> None:
    """Record an object uploaded in ``session``'s transaction: deleted if the
    transaction (or the savepoint it was made in) rolls back."""
    state = _state_for(session)
    state.uploaded.append(_Entry(obj, _current_transaction(session)))


def track_release(session: Session, obj: TrackedObject, *, delete_after_commit: bool) -> None:
    """Record an object whose ref was replaced or cleared in ``session``.

    It is deleted after the commit when ``delete_after_commit`` is true, or
    when it was uploaded in this same transaction (nobody else ever saw it).
    """
    state = _state_for(session)
    location = obj.ref.location
    uploaded_here = any(entry.obj.ref.location == location for entry in state.uploaded)
    if delete_after_commit or uploaded_here:
        state.released.append(_Entry(obj, _current_transaction(session)))


def _current_transaction(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


def _state_for(session: Session) -> _SessionObjects:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # clear() called from sync code
        loop = None
    state = session.info.get(_INFO_KEY)
    if not isinstance(state, _SessionObjects):
        state = _SessionObjects(loop)
        session.info[_INFO_KEY] = state
    if loop is not None:
        state.loop = loop
    if not event.contains(session, "after_transaction_end", _after_transaction_end):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_soft_rollback", _after_soft_rollback)
        event.listen(session, "after_transaction_end", _after_transaction_end)
    return state


# --------------------------------------------------------------------------- listeners

_P = ParamSpec("_P")


def _never_raise(listener: Callable[_P, None]) -> Callable[_P, None]:
    """Log what a listener raises instead of breaking the user's commit or rollback."""

    @functools.wraps(listener)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            listener(*args, **kwargs)
        except Exception:
            logger.exception(
                "granite_storage: %s failed; objects it tracked are left to the garbage collector",
                listener.__name__,
            )

    return wrapper


@_never_raise
def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released: its objects now belong to the enclosing transaction
    state = session.info.get(_INFO_KEY)
    if not isinstance(state, _SessionObjects):
        return
    released, state.released, state.uploaded = state.released, [], []
    _schedule(state, released, "commit")


@_never_raise
def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    boundary = previous_transaction
    while boundary.parent is not None and not boundary.nested:
        boundary = boundary.parent  # a flush's inner transaction rolls back its boundary
    _discard(session, boundary, "rollback")


@_never_raise
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        # The root ended. A commit has emptied the lists already; anything left
        # was rolled back, or the session was closed with the transaction open.
        _discard(session, transaction, "rollback or close")


def _discard(session: Session, boundary: SessionTransaction, reason: str) -> None:
    """Forget the releases made inside ``boundary`` and delete its uploads."""
    state = session.info.get(_INFO_KEY)
    if not isinstance(state, _SessionObjects):
        return
    state.released = [e for e in state.released if not _inside(e.transaction, boundary)]
    doomed = [e for e in state.uploaded if _inside(e.transaction, boundary)]
    state.uploaded = [e for e in state.uploaded if not _inside(e.transaction, boundary)]
    _schedule(state, doomed, reason)


def _inside(transaction: SessionTransaction | None, boundary: SessionTransaction) -> bool:
    if transaction is None:
        return boundary.parent is None
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is boundary:
            return True
        current = current.parent
    return False


def _schedule(state: _SessionObjects, entries: list[_Entry], reason: str) -> None:
    """Start the deletion of ``entries`` on the loop the mixin ran on. Never raises."""
    if not entries:
        return
    objects = [entry.obj for entry in entries]
    coro = adelete_unreferenced(objects, reason=reason)
    target = state.loop
    try:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        pending: _Pending
        if running is not None and (target is None or target is running):
            pending = running.create_task(coro, name=f"granite_storage cleanup after {reason}")
        elif target is not None and not target.is_closed():
            pending = asyncio.run_coroutine_threadsafe(coro, target)
        else:
            coro.close()
            logger.warning(
                "granite_storage: no event loop to delete %d object(s) released by %s; "
                "they are left to the garbage collector",
                len(objects),
                reason,
            )
            return
    except Exception:  # never raise into the user's commit or rollback
        coro.close()
        logger.exception(
            "granite_storage: could not schedule the deletion of %d object(s) after %s; "
            "they are left to the garbage collector",
            len(objects),
            reason,
        )
        return
    state.tasks.add(pending)
    pending.add_done_callback(state.tasks.discard)


# --------------------------------------------------------------------------- the cleanup


async def adelete_unreferenced(objects: Iterable[TrackedObject], *, reason: str = "") -> None:
    """Delete each object that no row references any more. Never raises
    (except cancellation): failures are logged and left to the garbage collector."""
    unique: dict[str, TrackedObject] = {}
    for obj in objects:
        if obj.ref.location:  # legacy inline-text refs have no object
            unique.setdefault(obj.ref.location, obj)
    groups: dict[tuple[int, int, int], list[TrackedObject]] = {}
    for obj in unique.values():
        groups.setdefault((id(obj.bind), id(obj.metadata), id(obj.ledger)), []).append(obj)
    for group in groups.values():
        bind, metadata, ledger = group[0].bind, group[0].metadata, group[0].ledger
        if ledger is not None:
            # Won through the ledger first: never deleted while a transaction holds it.
            await ledger.asweep_tracked(group, bind=bind, metadata=metadata, reason=reason)
            continue
        try:
            referenced = await areferenced_locations(
                bind, metadata, [o.ref.location for o in group]
            )
        except Exception:
            logger.exception(
                "granite_storage: could not check whether %d object(s) released by %s are "
                "still referenced; they are left to the garbage collector",
                len(group),
                reason,
            )
            continue
        for obj in group:
            if obj.ref.location in referenced:
                logger.debug("granite_storage: kept %s, another row references it", obj.ref)
                continue
            try:
                await obj.manager.adelete(obj.ref)
            except Exception:
                logger.exception(
                    "granite_storage: could not delete %r after %s; the garbage collector "
                    "will remove it",
                    obj.ref.location,
                    reason,
                )
            else:
                logger.debug("granite_storage: deleted %r after %s", obj.ref.location, reason)


async def areferenced_locations(bind: Engine, metadata: MetaData, locations: list[str]) -> set[str]:
    """The subset of ``locations`` that some :class:`StoredObjectRefType`
    column under ``metadata`` holds, read in a new, short transaction.

    A sync engine is queried in a worker thread.
    """
    statements = referenced_locations_statements(metadata, locations)
    if not statements:
        return set()
    found: set[str] = set()
    if bind.dialect.is_async:
        async with AsyncEngine(bind).connect() as conn:
            for statement in statements:
                found.update((await conn.execute(statement)).scalars())
        return found

    def run() -> None:
        with bind.connect() as conn:
            for statement in statements:
                found.update(conn.execute(statement).scalars())

    await anyio.to_thread.run_sync(run)
    return found


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
    batches = batched(locations)
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
        for batch in batches
    ]


async def drain_pending_deletions(session: Session | AsyncSession) -> None:
    """Wait until the deletions started by ``session``'s past transactions end.

    Call it where a deterministic end matters: tests, background jobs before
    they return, application shutdown. Cancelling the wait does not cancel
    the deletions. Never raises the deletions' errors (they are logged).
    """
    state = session.info.get(_INFO_KEY)
    if not isinstance(state, _SessionObjects):
        return
    while state.tasks:
        pending = list(state.tasks)
        await asyncio.wait([asyncio.wrap_future(p) for p in pending])
        state.tasks.difference_update(pending)
