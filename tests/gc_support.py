"""Helpers shared by the garbage-collector tests: stores whose objects can be aged
without sleeping, and backends that fail on purpose.

* memory: a ``MemoryStorageBackend(clock=...)`` whose clock the test moves back
  while it writes "old" objects;
* local: a ``LocalStorageBackend`` whose files get an old mtime with ``os.utime``
  (in a worker thread, never on the event loop).
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import BatchDeleteResult, ObjectInfo, StorageBackend
from granite_storage.errors import BackendError
from granite_storage.integrations.sqlalchemy import StoredObjectRefType

OLD = timedelta(hours=2)


class Clock:
    """Real time, unless a test pins it with ``clock.now = ...``."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


class FailingMemoryBackend(MemoryStorageBackend):
    """Deleting one chosen location raises, like a disk or network error."""

    def __init__(self, *, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.fail_on: set[str] = set()

    async def _adelete(self, location: str) -> None:
        if location in self.fail_on:
            raise BackendError(f"simulated failure deleting {location!r}")
        await super()._adelete(location)


class FailingLocalBackend(LocalStorageBackend):
    """Deleting one chosen location raises, like a disk or network error."""

    def __init__(self, root_dir: Path) -> None:
        super().__init__(root_dir, fsync=False)
        self.fail_on: set[str] = set()

    def _delete(self, location: str) -> None:
        # The primitive both single and batch deletes run in a worker thread.
        if location in self.fail_on:
            raise OSError(errno.EIO, f"simulated failure deleting {location!r}")
        super()._delete(location)


@dataclass
class Store:
    """A manager over one backend, plus helpers to write objects of a given age."""

    kind: str
    backend: FailingMemoryBackend | FailingLocalBackend
    manager: StorageManager
    clock: Clock
    root: Path | None = None
    written: list[StoredObjectRef] = field(default_factory=list)

    async def aput(
        self,
        storage_key: str = "docs",
        *,
        age: timedelta = OLD,
        content: bytes = b"content",
    ) -> StoredObjectRef:
        """Write one object that looks ``age`` old to the backend."""
        when = datetime.now(UTC) - age
        self.clock.now = when  # the memory backend stamps objects with its clock
        try:
            ref = await self.manager.aput_bytes(
                storage_key=storage_key,
                model_name="document",
                entity_id=len(self.written),
                field_name="file",
                content=content,
            )
        finally:
            self.clock.now = None
        if self.kind == "local":
            await aset_mtime(self.path(ref.location), when)
        self.written.append(ref)
        return ref

    def path(self, location: str) -> Path:
        assert self.root is not None
        return self.root / location

    async def alocations(self, prefix: str | None = None) -> set[str]:
        return {location async for location in self.backend.aiter_locations(prefix)}


async def aset_mtime(path: Path, when: datetime) -> None:
    stamp = when.timestamp()
    await anyio.to_thread.run_sync(os.utime, path, (stamp, stamp))


def make_store(
    kind: str,
    tmp_path: Path,
    policies: Mapping[str, StoragePolicy] | None = None,
) -> Store:
    """A store on ``kind`` ("memory" or "local") with policies over backend "main"."""
    clock = Clock()
    backend: FailingMemoryBackend | FailingLocalBackend
    root = None
    if kind == "memory":
        backend = FailingMemoryBackend(clock=clock)
    else:
        root = tmp_path / "storage"
        backend = FailingLocalBackend(root)
    if policies is None:
        policies = {
            "docs": StoragePolicy("docs", "main", key_prefix="docs"),
            "docs2": StoragePolicy("docs2", "main", key_prefix="docs2"),
        }
    manager = StorageManager(backends={"main": backend}, policies=policies)
    return Store(kind=kind, backend=backend, manager=manager, clock=clock, root=root)


class ListingBackend(MemoryStorageBackend):
    """A memory backend whose listing is generated lazily, counted, and may fail.

    ``produced`` tells how far a consumer pulled the listing; ``ignore_prefix``
    lists everything (a buggy backend); ``fail_after`` raises mid-listing.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        fail_after: int | None = None,
        ignore_prefix: bool = False,
    ) -> None:
        super().__init__(clock=clock)
        self.produced = 0
        self.fail_after = fail_after
        self.ignore_prefix = ignore_prefix
        self.deleted_batches: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        async for info in super()._aiter_objects(None if self.ignore_prefix else prefix):
            if self.fail_after is not None and self.produced >= self.fail_after:
                raise BackendError("simulated listing failure")
            self.produced += 1
            yield info

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        self.deleted_batches.append(len(locations))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.01)  # let other batches start if the collector allows it
            return await super()._adelete_batch(locations)
        finally:
            self.in_flight -= 1


def single_backend_manager(backend: StorageBackend, prefix: str | None = "docs") -> StorageManager:
    return StorageManager(
        backends={"main": backend},
        policies={"docs": StoragePolicy("docs", "main", key_prefix=prefix)},
    )


# --------------------------------------------------------------------------- CLI factories

#: Where the CLI test factories below keep their objects.
CLI_ROOT_ENV = "GC_TEST_ROOT"


class UndeletableLocalBackend(LocalStorageBackend):
    """Every delete fails, like a read-only mount."""

    def _delete(self, location: str) -> None:
        # The primitive both single and batch deletes run in a worker thread.
        raise PermissionError(errno.EACCES, f"simulated: permission denied deleting {location!r}")


@asynccontextmanager
async def failing_storage() -> AsyncIterator[tuple[StorageManager, object]]:
    """A factory whose deletions all fail (the CLI must exit 1)."""
    backend = UndeletableLocalBackend(os.environ[CLI_ROOT_ENV], fsync=False)
    manager = StorageManager(
        backends={"local": backend},
        policies={"documents": StoragePolicy("documents", "local", key_prefix="documents")},
    )
    async with manager:
        yield manager, list


def not_a_context_manager() -> int:
    """A factory that does not follow the protocol (the CLI must exit 2)."""
    return 42


@asynccontextmanager
async def yields_only_the_manager() -> AsyncIterator[StorageManager]:
    """A factory that yields the wrong shape (the CLI must exit 2)."""
    yield StorageManager(backends={}, policies={})


# --------------------------------------------------------------------------- database models


class GcBase(DeclarativeBase):
    pass


class GcDocument(GcBase):
    """A plain model with one ref column (what iter_model_storage_refs reads)."""

    __tablename__ = "gc_document"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class GcAttachment(GcBase):
    """A second table whose refs may belong to other policies."""

    __tablename__ = "gc_attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)
