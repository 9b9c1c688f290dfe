"""What each flush tells the object ledger, inside the application's transaction.

An ``after_flush`` listener, added to a session by ``ObjectLedger.watch``,
reads the history of every ``StoredObjectRefType`` attribute the flush wrote:

* refs that **left** a row (replaced, cleared, or the row deleted) are
  *released*: ``live`` -> ``released``, a candidate for the collector once
  its grace period has passed (the collector still checks that no row
  references it before deleting anything);
* refs that **entered** a row are *protected*: their ledger row is set
  ``live`` and, being written, stays locked by this transaction until it
  ends, so no collector can win it meanwhile. If the collector has already
  won it (state ``deleting``), the flush raises
  :class:`~granite_storage.integrations.sqlalchemy.LedgerConflictError`:
  the ref points at an object being deleted and must not be committed.

Refs whose location the ledger does not know (objects stored before the ledger
existed) are left alone. The listener runs inside the flush, through the
greenlet bridge under ``AsyncSession``, on the flush's own connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import ColumnProperty, Mapper, PassiveFlag, UOWTransaction

from granite_storage._util import batched
from granite_storage.errors import LedgerConflictError
from granite_storage.integrations.sqlalchemy._ledger_schema import (
    LedgerState,
)
from granite_storage.integrations.sqlalchemy.types import StoredObjectRefType
from granite_storage.refs import StoredObjectRef


def ref_changes(flush_context: UOWTransaction) -> dict[Mapper[Any], tuple[set[str], set[str]]]:
    """For each mapper whose rows this flush wrote: the locations of refs that
    entered rows and of refs that left them (a location in both stays)."""
    changes: dict[Mapper[Any], tuple[set[str], set[str]]] = {}
    for state, (is_delete, list_only) in flush_context.states.items():
        if list_only:
            continue
        mapper = state.mapper
        keys = _ref_attributes(mapper)
        if not keys:
            continue
        added, removed = changes.setdefault(mapper, (set(), set()))
        for key in keys:
            history = state.get_history(key, PassiveFlag.PASSIVE_NO_INITIALIZE)
            if is_delete:
                removed.update(_locations(history.added, history.unchanged, history.deleted))
            else:
                added.update(_locations(history.added))
                removed.update(_locations(history.deleted))
    return changes


def protect_and_release(
    conn: Connection, table: Table, *, added: set[str], removed: set[str], now: datetime
) -> None:
    """Release ``removed - added`` and protect ``added`` (see the module docstring).

    :raises LedgerConflictError: if a location in ``added`` is being deleted.
    """
    released = sorted(removed - added)
    for batch in batched(released):
        conn.execute(
            update(table)
            .where(table.c.location.in_(batch), table.c.state == LedgerState.LIVE.value)
            .values(state=LedgerState.RELEASED.value, updated_at=now)
        )
    wanted = sorted(added)
    for batch in batched(wanted):
        touched = set(
            conn.execute(
                update(table)
                .where(
                    table.c.location.in_(batch),
                    table.c.state != LedgerState.DELETING.value,
                )
                .values(state=LedgerState.LIVE.value, updated_at=now)
                .returning(table.c.location)
            ).scalars()
        )
        rest = [location for location in batch if location not in touched]
        if not rest:
            continue
        dying = (
            conn.execute(
                select(table.c.location).where(
                    table.c.location.in_(rest), table.c.state == LedgerState.DELETING.value
                )
            )
            .scalars()
            .first()
        )
        if dying is not None:
            raise LedgerConflictError(
                f"a ref to {dying!r} is being written, but the garbage collector is "
                "deleting that object (its ref was released earlier and the grace period "
                "has passed): the ref is stale; store the content again instead of copying it",
                location=dying,
            )


def _ref_attributes(mapper: Mapper[Any]) -> list[str]:
    return [
        prop.key
        for prop in mapper.column_attrs
        if isinstance(prop, ColumnProperty)
        and prop.columns
        and isinstance(prop.columns[0].type, StoredObjectRefType)
    ]


def _locations(*groups: Iterable[Any] | None) -> set[str]:
    found: set[str] = set()
    for group in groups:
        for value in group or ():
            ref = value
            if isinstance(value, dict):
                ref = StoredObjectRef.from_dict(value)
            if isinstance(ref, StoredObjectRef) and ref.has_object:
                found.add(ref.location)
    return found
