"""The object ledger reserves a direct upload when it is created (#17): its
collector leaves a live direct upload alone even with ``min_age=0``,
attaching it claims the reservation, and an abandoned one is released once
older than ``leftover_min_age``. SQLite and PostgreSQL; parts go to moto's
server over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

pytest.importorskip("aioboto3")

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    ConfigurationError,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.direct import DirectUpload
from granite_storage.integrations.sqlalchemy import (
    LedgerGarbageCollector,
    ObjectLedger,
    drain_pending_deletions,
)
from tests.backends.conftest import open_s3_backend
from tests.backends.test_direct_multipart import everything

pytestmark = pytest.mark.s3

ZERO = timedelta(0)


class Base(DeclarativeBase):
    pass


class Clip(StoredContentMixin, Base):
    __tablename__ = "clip"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "clips"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    manager: StorageManager
    ledger: ObjectLedger
    collector: LedgerGarbageCollector
    sessions: async_sessionmaker[AsyncSession]
    engine: AsyncEngine
    clock: Clock

    async def states(self) -> dict[str, str]:
        table = self.ledger.table
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(table.c.location, table.c.state))
        return {row.location: row.state for row in rows}

    async def send(self, clip_id: int, data: bytes = b"frames") -> DirectUpload:
        """Create a direct upload for clip ``clip_id`` and PUT its first part, as a browser."""
        upload = await self.manager.acreate_direct_upload(
            storage_key="clips", model_name="clip", entity_id=clip_id, field_name="file_ref",
            original_filename="clip.mp4",
        )  # fmt: skip
        url = await self.manager.apresign_upload_part(upload, 1)
        async with httpx.AsyncClient() as browser:
            assert (await browser.put(url, content=data)).status_code == 200
        return upload


@pytest.fixture
async def env(
    db_engine: AsyncEngine, s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> AsyncIterator[Env]:
    clock = Clock()
    ledger = ObjectLedger(Base.metadata, intent_bind=db_engine, clock=clock)
    async with db_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        manager = StorageManager(
            backends={"s3": backend},
            policies={"clips": StoragePolicy("clips", "s3", key_prefix="clips")},
        )
        Clip.configure_storage_manager(manager, ledger=ledger)
        collector = LedgerGarbageCollector(
            manager, ledger, db_engine, reference_metadata=Base.metadata, min_age=ZERO,
            cleanup_leftovers=True, clock=clock,
        )  # fmt: skip
        sessions = async_sessionmaker(db_engine, expire_on_commit=False)
        async with sessions() as session, session.begin():
            session.add_all([Clip(id=1), Clip(id=2), Clip(id=3)])
        yield Env(manager, ledger, collector, sessions, db_engine, clock)


async def test_a_live_direct_upload_is_reserved_then_claimed(
    env: Env, s3_client: Any, s3_bucket: str
) -> None:
    upload = await env.send(1)
    assert await env.states() == {upload.location: "uploading"}

    # Collections at min_age=0, listing-free and listing, leave the live upload alone.
    report = await env.collector.acollect(storage_key="clips", dry_run=False)
    assert (report.deleted, report.skipped_too_young) == (0, 1)
    audit = await env.collector.aaudit(storage_key="clips", dry_run=False, min_age=ZERO)
    assert audit.deleted == 0
    assert await env.states() == {upload.location: "uploading"}
    assert await everything(s3_client, s3_bucket) == ([], [upload.location])

    async with env.sessions() as session, session.begin():
        clip = await session.get_one(Clip, 1)
        ref = await clip.aattach_direct_upload(upload)
    assert await env.states() == {upload.location: "live"}
    report = await env.collector.acollect(storage_key="clips", dry_run=False)
    assert report.deleted == 0
    assert await env.manager.aget(ref, verify=True) == b"frames"


async def test_a_ref_set_by_hand_is_claimed_by_the_flush(env: Env) -> None:
    """The router's way: complete, then set the ref on the row (on_complete)."""
    upload = await env.send(2)
    ref = await env.manager.acomplete_direct_upload(upload)
    assert await env.states() == {upload.location: "uploading"}  # still reserved
    async with env.sessions() as session, session.begin():
        (await session.get_one(Clip, 2)).file_ref = ref
    assert await env.states() == {upload.location: "live"}
    assert (await env.collector.acollect(storage_key="clips", dry_run=False)).deleted == 0
    assert await env.manager.aexists(ref)


async def test_an_attach_that_rolls_back_gives_the_object_back_to_the_collector(
    env: Env, s3_client: Any, s3_bucket: str
) -> None:
    upload = await env.send(2)
    async with env.sessions() as session:
        clip = await session.get_one(Clip, 2)
        await clip.aattach_direct_upload(upload)
        await session.rollback()
        await drain_pending_deletions(session)  # the rollback clean-up deletes object and row
    assert await env.states() == {}
    assert await everything(s3_client, s3_bucket) == ([], [])


async def test_an_abandoned_direct_upload_is_released_after_leftover_min_age(
    env: Env, s3_client: Any, s3_bucket: str
) -> None:
    upload = await env.send(3)
    env.clock.now += timedelta(hours=23)  # idle, but younger than leftover_min_age (24 h)
    assert (await env.collector.acollect(storage_key="clips", dry_run=False)).deleted == 0
    assert await env.states() == {upload.location: "uploading"}

    env.clock.now += timedelta(hours=2)
    dry = await env.collector.acollect(storage_key="clips", dry_run=True)
    assert dry.orphan_sample == [upload.location]
    await env.collector.acollect(storage_key="clips", dry_run=False)
    assert await env.states() == {}


async def test_an_aborted_direct_upload_is_released_at_once(
    env: Env, s3_client: Any, s3_bucket: str
) -> None:
    upload = await env.send(3)
    await env.manager.aabort_direct_upload(upload)
    assert await env.states() == {}
    assert await everything(s3_client, s3_bucket) == ([], [])
    await env.manager.aabort_direct_upload(upload)  # twice: still no error


async def test_a_ledger_without_intent_bind_says_what_it_needs(env: Env) -> None:
    Clip.configure_storage_manager(env.manager, ledger=ObjectLedger(Base.metadata))
    assert len(env.manager.direct_upload_hooks) == 1  # the new ledger replaced the old one
    with pytest.raises(ConfigurationError, match="intent_bind"):
        await env.manager.acreate_direct_upload(
            storage_key="clips", model_name="clip", entity_id=1, field_name="file_ref"
        )
    Clip.configure_storage_manager(
        env.manager, ledger=ObjectLedger(Base.metadata, record_intents=False)
    )
    upload = await env.manager.acreate_direct_upload(
        storage_key="clips", model_name="clip", entity_id=1, field_name="file_ref"
    )
    assert await env.states() == {}  # nothing reserved with record_intents=False
    await env.manager.aabort_direct_upload(upload)
