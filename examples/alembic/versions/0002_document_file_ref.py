"""Add a stored-object ref column to document.

``portable_storage_ref_type()`` is JSON everywhere and JSONB on PostgreSQL,
the DDL of ``StoredObjectRefType``, built from SQLAlchemy's own types so this
file does not depend on the library's classes.

The expression index on the ref's location keeps the check that runs after a
commit with ``delete_replaced=True`` ("does any other row still reference
this object?") an index lookup instead of a table scan. Add one per ref
column if you opt in to deleting replaced objects.

Revision ID: 0002_document_file_ref
Revises: 0001_initial
Create Date: 2025-06-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from granite_storage import portable_storage_ref_type

revision: str = "0002_document_file_ref"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_document_file_ref_location"


def upgrade() -> None:
    op.add_column("document", sa.Column("file_ref", portable_storage_ref_type(), nullable=True))
    file_ref = sa.column("file_ref", portable_storage_ref_type())
    op.create_index(_INDEX, "document", [file_ref["location"].as_string()])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="document")
    op.drop_column("document", "file_ref")
