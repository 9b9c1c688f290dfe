"""Create the object ledger's table, ``granite_storage_objects``.

Opt-in: only applications that configure an ``ObjectLedger`` need it (see
docs/ledger.md). The DDL is spelled out with SQLAlchemy's own types, so this
file keeps working whatever happens to the library's classes later; it matches
``granite_storage.integrations.sqlalchemy.ledger_table``.

The index on ``(storage_key, state, updated_at)`` is what makes a listing-free
collection cost O(candidates): the collector's query reads only rows in state
``intent``, ``released`` or ``deleting``, never the live bulk of the table.

Existing objects need no backfill: refs written before the ledger existed are
protected as before (references and the grace period), the listing audit
(``LedgerGarbageCollector.aaudit``) still collects their orphans, and every
new upload is recorded.

Revision ID: 0004_object_ledger
Revises: 0003_section_markdown_to_ref
Create Date: 2025-06-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_object_ledger"
down_revision: str | Sequence[str] | None = "0003_section_markdown_to_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "granite_storage_objects"
_INDEX = "ix_granite_storage_objects_candidates"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("location", sa.String(1024), nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.String(80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "state IN ('intent', 'uploading', 'live', 'released', 'deleting')",
            name="ck_granite_storage_objects_state",
        ),
        sa.PrimaryKeyConstraint("location"),
    )
    op.create_index(_INDEX, _TABLE, ["storage_key", "state", "updated_at"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    op.drop_table(_TABLE)
