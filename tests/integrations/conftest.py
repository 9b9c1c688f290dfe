"""Models and fixtures for the SQLAlchemy integration tests.

Every test gets a fresh database (``db_engine``: SQLite through aiosqlite and
PostgreSQL 15 through asyncpg), a fresh in-memory backend, and models
configured with a manager of its own: nothing is shared between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.sqlalchemy import drain_pending_deletions, stored_content_field
from granite_storage.testing import manager_for


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    """The contract's example: one stored field through the class variables."""

    __tablename__ = "document"
    __stored_content_field_name__ = "_file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(100), default="")
    _file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class EagerDocument(StoredContentMixin, Base):
    """Opts in to deleting replaced objects at the model level."""

    __tablename__ = "eager_document"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "documents"
    __stored_content_delete_replaced__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


class User(StoredContentMixin, Base):
    """Two stored fields with their own policies; the key is not called ``id``."""

    __tablename__ = "user_account"

    user_id: Mapped[int] = mapped_column(primary_key=True)
    avatar_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())
    banner_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())

    avatar = stored_content_field("avatar_ref", storage_key="avatars")
    banner = stored_content_field("banner_ref", storage_key="banners", delete_replaced=True)


class Membership(StoredContentMixin, Base):
    """A composite primary key, and a model name override."""

    __tablename__ = "membership"
    __stored_content_field_name__ = "badge_ref"
    __stored_content_storage_key__ = "documents"
    __stored_content_model_name__ = "member"

    org: Mapped[str] = mapped_column(String(50), primary_key=True)
    member_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    badge_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


class Attachment(Base):
    """A plain table (no mixin) that may hold copies of refs."""

    __tablename__ = "attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("document.id"))
    ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


class SectionItem(StoredContentMixin, Base):
    """A column migrated from text by 0.1.0's documented migration."""

    __tablename__ = "section_item"
    __stored_content_field_name__ = "content_markdown"
    __stored_content_storage_key__ = "sections"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_markdown: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


T = TypeVar("T")


async def flushed(session: AsyncSession, obj: T) -> T:
    """``obj``, added to ``session`` and flushed: its primary key is known."""
    session.add(obj)
    await session.flush()
    return obj


MIXIN_MODELS: tuple[type[StoredContentMixin], ...] = (
    Document,
    EagerDocument,
    User,
    Membership,
    SectionItem,
)


def make_manager(backend: MemoryStorageBackend, *, delete_replaced: bool = False) -> StorageManager:
    """``documents`` and ``sections`` follow ``delete_replaced``; ``avatars``
    keeps replaced objects and ``banners`` deletes them."""
    return manager_for(
        backend,
        StoragePolicy(
            "documents", "memory", max_size=1024, key_prefix="docs", delete_replaced=delete_replaced
        ),
        StoragePolicy("sections", "memory", key_prefix="sections"),
        "avatars",
        StoragePolicy("banners", "memory", key_prefix="banners", delete_replaced=True),
        backend_key="memory",
    )


@dataclass
class Env:
    """One test's world: database, backend, manager, sessions."""

    engine: AsyncEngine
    backend: MemoryStorageBackend
    manager: StorageManager
    factory: async_sessionmaker[AsyncSession]
    opened: list[AsyncSession] = field(default_factory=list)

    def sessions(self, **kwargs: Any) -> AsyncSession:
        """A new session (``expire_on_commit=False`` unless given); its cleanups
        are drained when the test ends."""
        session = self.factory(**kwargs)
        self.opened.append(session)
        return session

    async def adrain(self) -> None:
        """Wait for the cleanups of every session opened so far."""
        for session in self.opened:
            await drain_pending_deletions(session)

    def configure(self, *, delete_replaced: bool = False) -> StorageManager:
        """Give every model a new manager over the same backend."""
        self.manager = make_manager(self.backend, delete_replaced=delete_replaced)
        for model in MIXIN_MODELS:
            model.configure_storage_manager(self.manager)
        return self.manager

    async def alocations(self) -> set[str]:
        """The locations in the backend."""
        return {info.location async for info in self.backend.aiter_objects()}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


@pytest.fixture
async def env(db_engine: AsyncEngine) -> AsyncIterator[Env]:
    async with db_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    backend = MemoryStorageBackend()
    world = Env(
        engine=db_engine,
        backend=backend,
        manager=make_manager(backend),
        factory=async_sessionmaker(db_engine, expire_on_commit=False),
    )
    world.configure()
    yield world
    await world.adrain()
