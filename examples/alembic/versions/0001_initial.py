"""The application before granite_storage: documents, and sections whose
markdown is kept inline as text.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "document",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
    )
    op.create_table(
        "section_item",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("content_markdown", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("section_item")
    op.drop_table("document")
