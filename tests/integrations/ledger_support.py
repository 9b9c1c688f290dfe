"""Models, clocks, counting backends and the per-test world of the object ledger tests.

The ledger's table lives in ``LedgerBase.metadata`` (as an application would put
it in its own ``Base.metadata``). Each test gets a fresh database (``db_engine``:
SQLite and PostgreSQL), a backend, a manager, a ledger with a clock the test can
move, and ``Doc`` configured with them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StorageManager, StoragePolicy, StoredContentMixin, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import (
    BatchDeleteResult,
    InUse,
    ObjectInfo,
    ObjectReader,
    PutResult,
    StorageBackend,
)
from granite_storage.integrations.sqlalchemy import (
    LedgerGarbageCollector,
    ObjectLedger,
    StoredObjectRefType,
    drain_pending_deletions,
)
from granite_storage.testing import manager_for
from tests.integrations.conftest import flushed


class LedgerBase(DeclarativeBase):
    pass


class Doc(StoredContentMixin, LedgerBase):
    __tablename__ = "ledger_doc"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "docs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(50), default="")
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


class Copy(LedgerBase):
    """A plain table (no mixin) that holds copies of refs."""

    __tablename__ = "ledger_copy"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


#: The ledger's table, defined once in the models' MetaData.
TABLE = ObjectLedger(LedgerBase.metadata).table
MIN_AGE = timedelta(milliseconds=200)


class Clock:
    """Real time shifted by ``offset``; a test moves it forward with :meth:`advance`."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


class CountingBackend(StorageBackend):
    """Wraps a backend and counts every primitive call (and the locations it touched)."""

    delete_batch_size = 1 << 30  # one _adelete_batch per adelete_many: the inner one batches

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.backend_name = inner.backend_name
        self.timestamp_resolution = inner.timestamp_resolution
        self.calls: Counter[str] = Counter()
        self.deleted: list[str] = []

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        self.calls["put"] += 1
        return await self.inner._aput(location, chunks, content_type)

    def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        self.calls["open"] += 1
        return self.inner._aopen(location, start, end)

    async def _adelete(self, location: str) -> None:
        self.calls["delete"] += 1
        self.deleted.append(location)
        await self.inner._adelete(location)

    async def _aexists(self, location: str) -> bool:
        self.calls["exists"] += 1
        return await self.inner._aexists(location)

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        self.calls["list"] += 1
        async for info in self.inner._aiter_objects(prefix):
            self.calls["listed"] += 1
            yield info

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        self.calls["delete_many"] += 1
        self.deleted.extend(locations)
        return await self.inner.adelete_many(locations)

    async def _acleanup_leftovers(
        self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
    ) -> int:
        self.calls["leftovers"] += 1
        return await self.inner.acleanup_leftovers(
            older_than=older_than, dry_run=dry_run, prefix=prefix, in_use=in_use
        )

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        return self.inner._translate_errors(action, location)


def make_manager(backend: StorageBackend, *, delete_replaced: bool = False) -> StorageManager:
    return manager_for(
        backend,
        StoragePolicy(
            "docs", "main", max_size=1024, key_prefix="docs", delete_replaced=delete_replaced
        ),
    )


@dataclass
class LedgerEnv:
    """One test's world."""

    engine: AsyncEngine
    backend: StorageBackend
    manager: StorageManager
    ledger: ObjectLedger
    clock: Clock
    factory: async_sessionmaker[AsyncSession]
    opened: list[AsyncSession] = field(default_factory=list)

    def session(self, **kwargs: Any) -> AsyncSession:
        session = self.factory(**kwargs)
        self.opened.append(session)
        return session

    async def adrain(self) -> None:
        for session in self.opened:
            await drain_pending_deletions(session)

    def configure(self, *, ledger: ObjectLedger | None, delete_replaced: bool = False) -> None:
        self.manager = make_manager(self.backend, delete_replaced=delete_replaced)
        Doc.configure_storage_manager(self.manager, ledger=ledger)

    def collector(self, **kwargs: Any) -> LedgerGarbageCollector:
        kwargs.setdefault("min_age", MIN_AGE)
        kwargs.setdefault("clock", self.clock)
        return LedgerGarbageCollector(
            self.manager, self.ledger, self.engine, reference_metadata=LedgerBase.metadata,
            **kwargs,
        )  # fmt: skip

    async def alocations(self) -> set[str]:
        return {info.location async for info in self.backend.aiter_objects()}

    async def arows(self) -> dict[str, str]:
        """The ledger: location -> state."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(TABLE.c.location, TABLE.c.state))
        return {row.location: row.state for row in rows}

    async def acommitted_doc(self, content: bytes = b"v1") -> tuple[uuid.UUID, StoredObjectRef]:
        async with self.session() as session:
            doc = await flushed(session, Doc())
            ref = await doc.aset_content(content)
            await session.commit()
            return doc.id, ref

    async def aorphan_intent(self, content: bytes = b"crash") -> StoredObjectRef:
        """What a process killed between its upload and its commit leaves: an
        intent row and an object."""
        location = self.manager.new_location(
            storage_key="docs", model_name="ledger_doc", entity_id=uuid.uuid4(), field_name="file"
        )
        await self.ledger.arecord_intent(
            self.engine, location=location, storage_key="docs", backend=self.backend.backend_name
        )
        return await self.manager.aput_stream(
            storage_key="docs", model_name="ledger_doc", entity_id="x", field_name="file",
            stream=content, location=location,
        )  # fmt: skip

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


async def amake_env(engine: AsyncEngine, backend: StorageBackend | None = None) -> LedgerEnv:
    async with engine.begin() as conn:
        await conn.run_sync(LedgerBase.metadata.create_all)
    clock = Clock()
    ledger = ObjectLedger(LedgerBase.metadata, clock=clock)
    store = backend if backend is not None else MemoryStorageBackend(clock=clock)
    env = LedgerEnv(
        engine=engine,
        backend=store,
        manager=make_manager(store),
        ledger=ledger,
        clock=clock,
        factory=async_sessionmaker(engine, expire_on_commit=False),
    )
    env.configure(ledger=ledger)
    return env
