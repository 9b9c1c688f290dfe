"""granite-storage migrate: verified, resumable copies whose refs are rewritten in the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import granite_storage.migrate
from granite_storage import StorageManager, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import PutResult, StorageBackend
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.arq import (
    MANAGER_CTX_KEY,
    REFERENCES_CTX_KEY,
    REWRITE_CTX_KEY,
    collect_garbage,
    migrate_objects,
)
from granite_storage.integrations.sqlalchemy import (
    StoredObjectRefType,
    iter_metadata_storage_refs,
    ref_rewriter,
)
from granite_storage.migrate import MigrationReport, RefRewriter, amigrate
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "mig_doc"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class Attachment(Base):
    __tablename__ = "mig_attachment"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class Site:
    """A policy on the backend ``old``, a target ``new``, and rows in a database."""

    def __init__(self, engine: AsyncEngine, old: StorageBackend, new: StorageBackend) -> None:
        self.engine = engine
        self.manager = manager_for(old, "docs", backend_key="old", extra_backends={"new": new})
        self.old, self.new = old, new
        self.rewrite = ref_rewriter(engine, Base.metadata)

    async def aput(self, n: int, content: bytes = b"") -> StoredObjectRef:
        ref = await self.manager.aput_bytes(
            storage_key="docs", model_name="doc", entity_id=n, field_name="file",
            content=content or f"content {n}".encode() * 50,
        )  # fmt: skip
        async with self.engine.begin() as conn:
            table = Doc if n % 2 else Attachment
            column = "file_ref" if n % 2 else "ref"
            await conn.execute(insert(table).values(id=n, **{column: ref}))
        return ref

    def references(self) -> AsyncIterator[StoredObjectRef]:
        return iter_metadata_storage_refs(self.engine, Base.metadata)

    async def refs(self) -> list[StoredObjectRef]:
        return [ref async for ref in self.references()]

    async def amigrate(self, rewrite: RefRewriter | None = None, **kwargs: Any) -> MigrationReport:
        return await amigrate(
            self.manager, self.references, rewrite or self.rewrite,
            storage_key="docs", to="new", **kwargs,
        )  # fmt: skip


@pytest.fixture
async def tables(db_engine: AsyncEngine) -> AsyncEngine:
    async with db_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return db_engine


@pytest.fixture
def site(tables: AsyncEngine) -> Site:
    return Site(tables, MemoryStorageBackend(), MemoryStorageBackend())


async def test_every_object_is_copied_verified_and_its_ref_rewritten(site: Site) -> None:
    refs = [await site.aput(n) for n in range(1, 8)]
    missing = await site.aput(8)
    await site.old.adelete(missing)
    async with site.engine.begin() as conn:  # another policy's ref, and a 0.1.0 inline one
        other = StoredObjectRef("other", "old", "else/x", 1, "sha256:00")
        await conn.execute(insert(Doc).values(id=101, file_ref=other))
        await conn.execute(
            insert(Doc).values(id=103, file_ref={"storage_key": "docs", "legacy_inline_text": "hi"})
        )

    report = await site.amigrate(concurrency=3)

    assert (report.copied, report.verified, report.rewritten) == (7, 0, 7)
    assert report.bytes == sum(ref.size for ref in refs)
    assert report.failed == {missing.location: "the source object is missing"}
    assert report.skipped == 1  # the inline text
    stored = await site.refs()
    moved = [ref for ref in stored if ref.storage_key == "docs" and ref.location]
    assert sorted(r.backend for r in moved) == ["memory"] + ["new"] * 7
    assert other in stored
    for ref in moved:
        if ref.location != missing.location:
            assert site.manager.get_backend_for_ref(ref) is site.new
            assert await site.manager.aget(ref, verify=True) == await site.old.aget(ref)
    assert len(site.old) == 7  # the source is never deleted
    assert "failed 1" in str(report) and "source object is missing" in str(report)

    again = await site.amigrate()
    assert (again.copied, again.verified, again.rewritten, again.skipped) == (0, 0, 0, 8)
    assert json.loads(json.dumps(again.to_dict()))["failed"] == report.failed


async def test_a_dry_run_changes_nothing(site: Site) -> None:
    refs = [await site.aput(n) for n in range(1, 4)]
    report = await site.amigrate(dry_run=True)
    assert (report.copied, report.bytes, report.rewritten) == (3, sum(r.size for r in refs), 0)
    assert len(site.new) == 0
    assert {ref.backend for ref in await site.refs()} == {"memory"}


class Counting(MemoryStorageBackend):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        self.puts.append(location)
        return await super()._aput(location, chunks, content_type)


async def test_a_run_killed_half_way_resumes_without_copying_twice(
    tables: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tables, MemoryStorageBackend(), Counting())
    assert isinstance(site.new, Counting)
    monkeypatch.setattr(granite_storage.migrate, "REWRITE_BATCH", 3)
    for n in range(1, 11):
        await site.aput(n)
    calls = 0

    async def all_readable() -> None:
        for ref in await site.refs():
            assert await site.manager.aget(ref, verify=True)

    async def killed_on_the_second_batch(refs: Sequence[StoredObjectRef], target: str) -> int:
        nonlocal calls
        calls += 1
        await all_readable()
        if calls == 2:
            scope.cancel()  # the process dies between copying and rewriting
            await anyio.sleep_forever()
        changed = await site.rewrite(refs, target)
        await all_readable()
        return changed

    with anyio.CancelScope() as scope:
        await site.amigrate(killed_on_the_second_batch, concurrency=1)
    halfway = [ref.backend for ref in await site.refs()]
    assert halfway.count("new") == 3
    await all_readable()

    report = await site.amigrate(concurrency=2)

    assert report.verified == 3  # copied before the kill, ref not rewritten: read back
    assert report.copied == 4 and report.skipped == 3 and report.rewritten == 7
    assert sorted(site.new.puts) == sorted(set(site.new.puts))  # nothing copied twice
    assert len(site.new.puts) == 10
    assert {ref.backend for ref in await site.refs()} == {"new"}
    await all_readable()


class FlipsAByte(MemoryStorageBackend):
    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        async def flipped() -> AsyncIterator[bytes]:
            first = True
            async for chunk in chunks:
                if first and chunk:
                    chunk, first = bytes([chunk[0] ^ 1]) + chunk[1:], False
                yield chunk

        return await super()._aput(location, flipped(), content_type)


async def test_a_corrupted_copy_is_caught_removed_and_its_ref_kept(tables: AsyncEngine) -> None:
    site = Site(tables, MemoryStorageBackend(), FlipsAByte())
    ref = await site.aput(1)
    report = await site.amigrate()
    assert report.copied == 0 and report.rewritten == 0
    assert "checksum" in report.failed[ref.location]
    assert len(site.new) == 0
    assert (await site.refs()) == [ref]
    assert await site.manager.aget(ref, verify=True)


async def test_a_corrupted_object_left_on_the_target_is_copied_again(site: Site) -> None:
    ref = await site.aput(1)
    await site.new.aput_stream(key=ref.location, chunks=_one(b"garbage"))
    report = await site.amigrate()
    assert (report.copied, report.verified, report.rewritten) == (1, 0, 1)
    assert await site.new.aget(ref, verify=True)


async def test_a_row_a_writer_changed_meanwhile_is_left_as_the_writer_left_it(
    site: Site,
) -> None:
    ref = await site.aput(1)
    replacement = await site.manager.aput_bytes(
        storage_key="docs", model_name="doc", entity_id=1, field_name="file", content=b"new"
    )

    async def writer_first(refs: Sequence[StoredObjectRef], target: str) -> int:
        async with site.engine.begin() as conn:
            await conn.execute(update(Doc).where(Doc.id == 1).values(file_ref=replacement))
        return await site.rewrite(refs, target)

    report = await site.amigrate(writer_first)
    assert report.copied == 1 and report.rewritten == 0
    async with site.engine.connect() as conn:
        assert (await conn.execute(select(Doc.file_ref))).scalar_one() == replacement
    assert ref.location != replacement.location


async def test_the_target_must_be_known_and_unambiguous(site: Site) -> None:
    with pytest.raises(ConfigurationError, match="unknown target backend 'nope'"):
        await amigrate(site.manager, list, site.rewrite, storage_key="docs", to="nope")
    site.manager.backends["memory"] = MemoryStorageBackend()
    with pytest.raises(ConfigurationError, match="register the target under another key"):
        await amigrate(site.manager, list, site.rewrite, storage_key="docs", to="memory")


async def test_the_arq_job(site: Site) -> None:
    await site.aput(1)
    ctx = {
        MANAGER_CTX_KEY: site.manager,
        REFERENCES_CTX_KEY: lambda key: site.references(),
        REWRITE_CTX_KEY: site.rewrite,
    }
    result = await migrate_objects(ctx, "docs", "new")
    assert (result["copied"], result["rewritten"], result["failed"]) == (1, 1, {})
    with pytest.raises(ConfigurationError, match="granite_storage_rewrite"):
        await migrate_objects({**ctx, REWRITE_CTX_KEY: None}, "docs", "new")
    # Then, with the policy switched, the gc job deletes the source.
    (ref,) = await site.refs()
    switched = manager_for(site.new, "docs", backend_key="new", extra_backends={"old": site.old})
    job = {**ctx, MANAGER_CTX_KEY: switched}
    report = await collect_garbage(
        job, "docs", min_age_seconds=0, backend_key="old", delete_source=True
    )
    assert (report["deleted"], report["failed"]) == (1, 0)
    assert not await site.old.aexists(ref) and await switched.aget(ref, verify=True)


@pytest.mark.s3
@pytest.mark.parametrize("direction", ["local->s3", "s3->local"])
async def test_between_local_disk_and_s3(
    tables: AsyncEngine,
    tmp_path: Path,
    s3_endpoint_url: str,
    s3_bucket: str,
    aioboto3_session: Any,
    direction: str,
) -> None:
    local = LocalStorageBackend(tmp_path / "files", fsync=False)
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as s3:
        old, new = (local, s3) if direction == "local->s3" else (s3, local)
        site = Site(tables, old, new)
        refs = [await site.aput(n, content=bytes([n]) * (n * 70_000)) for n in range(1, 6)]
        report = await site.amigrate(concurrency=2)
        assert (report.copied, report.rewritten, report.failed) == (5, 5, {})
        for ref in await site.refs():
            assert site.manager.get_backend_for_ref(ref) is new
            assert await site.manager.aget(ref, verify=True) == await old.aget(ref)
        assert len([loc async for loc in old.aiter_locations("docs")]) == len(refs)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --------------------------------------------------------------------------- the command

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def factory() -> AsyncIterator[tuple[StorageManager, Any, RefRewriter]]:
    """The command's factory: local disk ``old`` and ``new`` under $MIGRATE_ROOT, SQLite;
    the policy on $MIGRATE_POLICY_BACKEND (default ``old``)."""
    root = Path(os.environ["MIGRATE_ROOT"])
    policy_backend = os.environ.get("MIGRATE_POLICY_BACKEND", "old")
    engine = create_async_engine(f"sqlite+aiosqlite:///{root / 'app.db'}")
    try:
        backends = {name: LocalStorageBackend(root / name) for name in ("old", "new")}
        async with manager_for(
            backends.pop(policy_backend),
            "docs",
            backend_key=policy_backend,
            extra_backends=backends,
        ) as manager:
            yield (
                manager,
                lambda: iter_metadata_storage_refs(engine, Base.metadata),
                ref_rewriter(engine, Base.metadata),
            )
    finally:
        await engine.dispose()


def test_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_ROOT", str(tmp_path))

    async def seed() -> list[StoredObjectRef]:
        async with factory() as (manager, _, _):
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            site = Site(engine, manager.backends["old"], manager.backends["new"])
            refs = [await site.aput(n) for n in (1, 2, 3)]
            await engine.dispose()
            return refs

    refs = anyio.run(seed)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "granite_storage", "migrate", *args]
        command += ["--app-dir", str(REPO), "--progress-interval", "0"]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    spec = "tests.integrations.test_migrate:factory"
    dry = cli(spec, "--storage-key", "docs", "--to", "new", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would copy 3 objects" in dry.stdout
    assert not (tmp_path / "new").exists()

    done = cli(spec, "--storage-key", "docs", "--to", "new", "--concurrency", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == 3
    assert "migrate: " in done.stderr  # progress lines
    for ref in refs:
        assert (tmp_path / "new" / ref.location).read_bytes() == (
            tmp_path / "old" / ref.location
        ).read_bytes()

    # The last step, once the policy is switched: the collector deletes the sources.
    monkeypatch.setenv("MIGRATE_POLICY_BACKEND", "new")
    gc = [sys.executable, "-m", "granite_storage", "gc", spec, "--storage-key", "docs"]
    gc += ["--app-dir", str(REPO), "--min-age", "0", "--backend-key", "old", "--json"]
    kept = subprocess.run([*gc, "--delete"], capture_output=True, text=True, check=False)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["deleted"] == 0  # without --delete-source refs protect them
    dry_delete = subprocess.run([*gc, "--delete-source"], capture_output=True, text=True)
    dry_report = json.loads(dry_delete.stdout)
    assert (dry_report["orphaned"], dry_report["eligible"], dry_report["deleted"]) == (3, 3, 0)
    assert all((tmp_path / "old" / ref.location).exists() for ref in refs)
    gone = subprocess.run([*gc, "--delete-source", "--delete"], capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["deleted"] == 3
    for ref in refs:
        assert not (tmp_path / "old" / ref.location).exists()
        assert (tmp_path / "new" / ref.location).exists()
    monkeypatch.setenv("MIGRATE_POLICY_BACKEND", "old")
    refused = subprocess.run([*gc, "--delete-source"], capture_output=True, text=True)
    assert refused.returncode == 1 and "switch the policy" in refused.stderr

    unknown = cli(spec, "--storage-key", "docs", "--to", "nope")
    assert unknown.returncode == 1 and "unknown target backend" in unknown.stderr
    off_protocol = cli("examples.gc_factory:storage", "--storage-key", "docs", "--to", "new")
    assert off_protocol.returncode == 2 and "(manager, iter_references, rewrite)" in (
        off_protocol.stderr
    )


async def test_rewrites_wait_for_the_end_when_sqlite_is_locked_by_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Without WAL, the reference source's open cursor locks SQLite against writes.
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}", connect_args={"timeout": 0.5}
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    site = Site(engine, MemoryStorageBackend(), MemoryStorageBackend())
    monkeypatch.setattr(granite_storage.migrate, "REWRITE_BATCH", 2)
    for n in range(1, 17, 2):  # one table: its cursor is open at the first rewrite
        await site.aput(n)

    def streamed() -> AsyncIterator[StoredObjectRef]:
        return iter_metadata_storage_refs(engine, Base.metadata, batch_size=2)

    try:
        report = await amigrate(
            site.manager, streamed, site.rewrite, storage_key="docs", to="new", concurrency=1
        )
        assert (report.copied, report.rewritten, report.failed) == (8, 8, {})
        assert "the rewrites wait until all are read" in caplog.text
        assert {ref.backend for ref in await site.refs()} == {"new"}
    finally:
        await engine.dispose()
