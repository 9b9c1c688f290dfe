"""Stored objects follow the session's transaction: what each session holds,
and the hooks that decide what becomes of it (the rules are in
``docs/sqlalchemy.md``, "Files follow the transaction").

* **rollback** of the transaction, or of the savepoint an upload was made in,
  or the session **closed** with its transaction open: the uploads made in it
  are handed to ``_cleanup``;
* **commit** of the root transaction: the objects it replaced or cleared, when
  ``delete_after_commit`` (the policy, model or field opts in) or when they
  were uploaded in that same transaction. Releasing a savepoint hands its
  objects to the enclosing transaction.

How (SQLAlchemy's events are sync, the I/O is async): the first time stored
content records an object for a session, ``after_commit``,
``after_soft_rollback`` and ``after_transaction_end`` listeners are added to
that one sync ``Session`` (``AsyncSession.sync_session``; nothing global,
nothing at import time); the pending objects live in ``session.info``. The
listeners do no I/O and never raise: they pick the objects whose fate the
transaction decided and hand them to ``_cleanup``, which checks and deletes
them in a task on the event loop the mixin ran on (for a sync ``Session``
used through the mixin's blocking methods, the loop of its sync manager, see
:func:`start_cleanups_with`). ``drain_pending_deletions(session)`` waits for
those tasks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from granite_storage.integrations.sqlalchemy._cleanup import Pending, Submit, start_cleanup
from granite_storage.integrations.sqlalchemy._plugin import TrackedObject

logger = logging.getLogger("granite_storage")

_INFO_KEY = "granite_storage.pending_objects"


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
    tasks: set[Pending] = field(default_factory=set)
    #: A sync Session's cleanups start here instead (its sync manager's loop).
    submit: Submit | None = None


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


def start_cleanups_with(session: Session, submit: Submit) -> None:
    """Start ``session``'s cleanups through ``submit``: for a sync ``Session``,
    whose commit and rollback hooks run in a thread without an event loop."""
    _state_for(session).submit = submit


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
    pending = start_cleanup(state.submit or state.loop, [entry.obj for entry in entries], reason)
    if pending is not None:
        state.tasks.add(pending)
        pending.add_done_callback(state.tasks.discard)


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
