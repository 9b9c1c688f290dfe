"""Turn section_item.content_markdown from text into a stored-object ref.

Each non-null text becomes ``{"legacy_inline_text": <text>}``, exactly what
granite-storage 0.1.0's documented migration wrote, so a database migrated
with 0.1.0 and one migrated with this file are in the same state. Such a ref
has no object: ``await item.aget_content_text()`` returns the text, and the
next ``aset_content`` moves the field to storage. Nothing is uploaded here,
so the migration is fast and needs no storage credentials.

PostgreSQL converts the column in place (``USING``); SQLite rewrites the
values, then rebuilds the table with the new type (batch mode).

The downgrade restores the texts (also from refs in the full shape, whose
``extra`` holds the text), and refuses to run while rows hold stored
objects (their content would be lost): read them back first.

Revision ID: 0003_section_markdown_to_ref
Revises: 0002_document_file_ref
Create Date: 2025-06-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from granite_storage import portable_storage_ref_type

revision: str = "0003_section_markdown_to_ref"
down_revision: str | Sequence[str] | None = "0002_document_file_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "legacy_inline_text"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "section_item",
            "content_markdown",
            existing_type=sa.Text(),
            type_=portable_storage_ref_type(),
            existing_nullable=True,
            postgresql_using=f"CASE WHEN content_markdown IS NULL THEN NULL "
            f"ELSE jsonb_build_object('{_KEY}', content_markdown) END",
        )
        return
    op.execute(
        f"UPDATE section_item SET content_markdown = json_object('{_KEY}', content_markdown) "
        "WHERE content_markdown IS NOT NULL"
    )
    with op.batch_alter_table("section_item") as batch:
        batch.alter_column(
            "content_markdown",
            existing_type=sa.Text(),
            type_=portable_storage_ref_type(),
            existing_nullable=True,
        )


def downgrade() -> None:
    section_item = sa.table("section_item", sa.column("content_markdown", sa.JSON()))
    stored = op.get_bind().scalar(
        sa.select(sa.func.count()).where(
            section_item.c.content_markdown["location"].as_string() != ""
        )
    )
    if stored:
        raise RuntimeError(
            f"{stored} section_item rows hold stored objects, which a text column cannot "
            "keep: read them back (aget_content_text) into inline text before downgrading"
        )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "section_item",
            "content_markdown",
            existing_type=portable_storage_ref_type(),
            type_=sa.Text(),
            existing_nullable=True,
            postgresql_using=f"COALESCE(content_markdown ->> '{_KEY}', "
            f"content_markdown -> 'extra' ->> '{_KEY}')",
        )
        return
    op.execute(
        "UPDATE section_item SET content_markdown = COALESCE("
        f"json_extract(content_markdown, '$.{_KEY}'), "
        f"json_extract(content_markdown, '$.extra.{_KEY}'))"
    )
    with op.batch_alter_table("section_item") as batch:
        batch.alter_column(
            "content_markdown",
            existing_type=portable_storage_ref_type(),
            type_=sa.Text(),
            existing_nullable=True,
        )
