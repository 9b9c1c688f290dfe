"""The object ledger's part in the last step of a move between backends:
which source copies may go.

``LedgerGarbageCollector.acollect(backend_key=OLD, delete_source=True)`` lists
``OLD`` and reads every ref, as the plain collector does; refs that name a
backend the objects moved to (by key: what ``granite-storage migrate`` writes
after verifying the copy) protect nothing on ``OLD``. Each batch of what is
left is sorted here, in one winning transaction (``win_transaction``: the
row locks with ``SKIP LOCKED`` on PostgreSQL, the write lock on SQLite),
the locks taken before the refs are read:

* **moved**: only refs naming a released backend point at the location, and
  no transaction holds its ledger row. The copy on ``OLD`` is deleted; the row
  is left as it is (it describes the object the refs still name, on the new
  backend). See below for a moved object no ref points at any more.
* **kept**: refs point at it, and one names any other backend (a
  ``backend_name``: a row not migrated, or written since the references were
  read), or an open transaction holds its row, or the row is an upload
  (``intent``, ``uploading``) or is being deleted by another run.
* **unreferenced**: no ref at all, and no ledger row or a row naming ``OLD``
  (by ``backend_name`` or key). These go through the listing audit's path
  (won in the ledger, deleted, their rows forgotten), as any orphan would.

An unreferenced location whose row names another backend is a moved object
released since: ``ref_rewriter`` moved its row with its refs. It is sorted
like a moved copy (deleted on ``OLD``, the row left for the collection of the
backend it names, which deletes the new copy), or kept while a transaction
holds the row. Forgetting that row would leave the new copy with neither a
row nor a ref.

A moved copy's row is not changed, so a flush may still protect it between
this transaction and the deletion: only with a ref naming a ``backend_name``
that was read before the migration rewrote it, the ledger's documented limit
on copying a ref read earlier.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Connection, MetaData, Table, bindparam, select, union_all

from granite_storage._util import batched
from granite_storage.integrations.sqlalchemy._ledger_schema import LedgerState
from granite_storage.integrations.sqlalchemy._ledger_sweep import win_transaction
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns

#: Row states whose source copy a move may delete: the row stays as it is.
_SETTLED = (LedgerState.LIVE.value, LedgerState.RELEASED.value)


@dataclass(slots=True)
class Sources:
    """One batch of unprotected locations on the old backend, sorted."""

    #: Delete on the old backend; their ledger rows stay untouched.
    moved: list[str] = field(default_factory=list)
    #: Leave alone (see the module docstring).
    kept: list[str] = field(default_factory=list)
    #: No ref points at them: the audit's win, deletion and forgetting.
    unreferenced: list[str] = field(default_factory=list)


def sort_sources(
    conn: Connection,
    table: Table,
    metadata: MetaData,
    *,
    locations: Sequence[str],
    released: Collection[str],
    old: Collection[str],
    lock_wait: timedelta | None,
) -> Sources:
    """Sort ``locations`` (see the module docstring) in one winning transaction.

    :param released: the backend keys whose refs protect nothing here.
    :param old: the names a ledger row of ``OLD`` carries: its ``backend_name``
        and its key.
    :raises LockUnavailableError: if the lock could not be had in time.
    """
    wanted = sorted(set(locations))
    rows: dict[str, tuple[str, str]] = {}  # location -> (state, backend)
    free: set[str] = set()
    named: dict[str, set[str | None]] = {}
    with win_transaction(conn, lock_wait):
        for batch in batched(wanted):
            query = select(table.c.location, table.c.state, table.c.backend).where(
                table.c.location.in_(batch)
            )
            rows.update({row.location: (row.state, row.backend) for row in conn.execute(query)})
            if conn.dialect.name == "postgresql":
                locked = query.with_for_update(skip_locked=True)
                free.update(row.location for row in conn.execute(locked))
            else:  # SQLite: the transaction holds the database's write lock
                free.update(rows)
        for statement in _ref_backends_statements(metadata, wanted):
            for location, backend in conn.execute(statement):
                named.setdefault(location, set()).add(backend)
    sources = Sources()
    for location in wanted:
        row = rows.get(location)
        held = row is not None and (location not in free or row[0] not in _SETTLED)
        backends = named.get(location)
        if not backends:
            if row is None or row[1] in old:
                sources.unreferenced.append(location)
            else:  # a moved object released since: its row belongs to the new copy
                (sources.kept if held else sources.moved).append(location)
            continue
        protected = any(backend not in released for backend in backends)
        (sources.kept if protected or held else sources.moved).append(location)
    return sources


def _ref_backends_statements(metadata: MetaData, locations: list[str]) -> list[Any]:
    """Per batch of ``locations``: ``(location, backend)`` of every ref that
    points at one of them, over every ``StoredObjectRefType`` column."""
    columns = stored_ref_columns(metadata)
    if not columns or not locations:
        return []
    # Literal JSON paths, so that an index on ``col ->> 'location'`` matches.
    path = JSON.JSONStrIndexType()
    location = bindparam("location_key", "location", type_=path, literal_execute=True)
    backend = bindparam("backend_key", "backend", type_=path, literal_execute=True)
    return [
        union_all(
            *(
                select(column[location].as_string(), column[backend].as_string()).where(
                    column[location].as_string().in_(batch)
                )
                for column in columns
            )
        )
        for batch in batched(locations)
    ]
