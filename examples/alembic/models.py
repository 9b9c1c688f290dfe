"""The example application's models, as the migrations in versions/ leave them.

``document.file_ref`` was added by 0002; ``section_item.content_markdown`` was
a text column that 0003 turned into a ref (its old text is served by
``aget_content_text()``; new content goes to storage); 0004 created the
object ledger's table.
"""

from __future__ import annotations

from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StoredContentMixin, StoredObjectRef, StoredObjectRefType
from granite_storage.integrations.sqlalchemy import ObjectLedger


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    __tablename__ = "document"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


class SectionItem(StoredContentMixin, Base):
    __tablename__ = "section_item"
    __stored_content_field_name__ = "content_markdown"
    __stored_content_storage_key__ = "sections"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_markdown: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


# Speeds up the "is this object still referenced?" check that runs after a
# commit when replaced objects are deleted (see versions/0002).
Index("ix_document_file_ref_location", Document.__table__.c.file_ref["location"].as_string())

# The object ledger's table (versions/0004), in the models' MetaData so that
# autogenerate sees it. Opt in with
# ``StoredContentMixin.configure_storage_manager(manager, ledger=ledger)``.
ledger = ObjectLedger(Base.metadata)
