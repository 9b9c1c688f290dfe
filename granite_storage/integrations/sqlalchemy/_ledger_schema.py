"""The object ledger's table and its states. No I/O.

See :class:`~granite_storage.integrations.sqlalchemy.ObjectLedger` for the protocol.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
)

from granite_storage.locations import MAX_LOCATION_LENGTH

#: The default name of the ledger table.
LEDGER_TABLE_NAME = "granite_storage_objects"
#: The ``Table.info`` key that marks a ledger table (``ref_rewriter`` finds it by it).
LEDGER_TABLE_MARK = "granite_storage.ledger_table"


class LedgerState(StrEnum):
    """The state of one stored object in the ledger.

    ``intent`` (recorded before the upload, in its own committed transaction)
    -> ``live`` (claimed by the application's transaction; committed with the
    row that references the object) -> ``released`` (a ref to it was replaced,
    cleared or deleted) -> ``deleting`` (won by a collector: nobody can claim
    it any more; the object is being deleted, then the row is).

    ``uploading`` is the intent of a direct upload, recorded when it is
    created (``StorageManager.acreate_direct_upload``): a client sends it
    for as long as it takes, so the collector leaves it alone until it is
    older than the collector's ``leftover_min_age`` (the same age at which an
    idle multipart upload is aborted); attaching it to a row claims it
    (``live``).
    """

    INTENT = "intent"
    UPLOADING = "uploading"
    LIVE = "live"
    RELEASED = "released"
    DELETING = "deleting"


def ledger_table(metadata: MetaData, name: str = LEDGER_TABLE_NAME) -> Table:
    """Define the ledger table in ``metadata``.

    One row per stored object: ``location`` (primary key), ``storage_key``,
    ``backend`` (what the refs to it name: the backend's ``backend_name`` when
    written, the target's key once ``granite-storage migrate`` moved it),
    ``size`` and ``checksum`` (known once
    the upload ended), ``created_at`` (the intent), ``updated_at`` (the last
    change of state: the grace period of released rows counts from it) and
    ``state`` (a :class:`LedgerState`). The index on ``(storage_key, state,
    updated_at)`` makes the collector's candidate query cost O(candidates):
    live rows, the bulk of the table, are never read by it. The table is
    marked in its ``info`` (``LEDGER_TABLE_MARK``).
    """
    states = ", ".join(f"'{state.value}'" for state in LedgerState)
    return Table(
        name,
        metadata,
        Column("location", String(MAX_LOCATION_LENGTH), primary_key=True),
        Column("storage_key", String(255), nullable=False),
        Column("backend", String(255), nullable=False),
        Column("size", BigInteger, nullable=True),
        Column("checksum", String(80), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("state", String(16), nullable=False),
        CheckConstraint(f"state IN ({states})", name=f"ck_{name}_state"),
        Index(f"ix_{name}_candidates", "storage_key", "state", "updated_at"),
        info={LEDGER_TABLE_MARK: True},
    )
