"""A row takes a completed direct upload inside its session's transaction
(``aattach_direct_upload``), with and without the object ledger (issue 17)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytest.importorskip("aioboto3")

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    InvalidLocationError,
    StorageManager,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.integrations.sqlalchemy import ObjectLedger, drain_pending_deletions
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend
from tests.backends.test_direct_multipart import everything

pytestmark = pytest.mark.s3


class Base(DeclarativeBase):
    pass


class Video(StoredContentMixin, Base):
    __tablename__ = "video"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "videos"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


@pytest.fixture(params=["plain", "ledger"])
async def sessions(
    request: pytest.FixtureRequest,
    sqlite_engine: AsyncEngine,
    s3_endpoint_url: str,
    s3_bucket: str,
    aioboto3_session: Any,
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], StorageManager]]:
    async with sqlite_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        manager = manager_for(backend, "videos", backend_key="s3")
        # The ledger reserves direct uploads when they are created: it needs its engine.
        ledger = ObjectLedger(Base.metadata, intent_bind=sqlite_engine)
        Video.configure_storage_manager(
            manager, ledger=ledger if request.param == "ledger" else None
        )
        yield async_sessionmaker(sqlite_engine, expire_on_commit=False), manager


async def send(manager: StorageManager, entity_id: int, data: bytes) -> Any:
    upload = await manager.acreate_direct_upload(
        storage_key="videos", model_name="video", entity_id=entity_id, field_name="file_ref",
        original_filename="clip.mp4",
    )  # fmt: skip
    url = await manager.apresign_upload_part(upload, 1)
    async with httpx.AsyncClient() as browser:
        assert (await browser.put(url, content=data)).status_code == 200
    return upload


async def test_attach_sets_the_ref_in_the_transaction(
    sessions: tuple[async_sessionmaker[AsyncSession], StorageManager],
    s3_client: Any,
    s3_bucket: str,
) -> None:
    maker, manager = sessions
    async with maker() as session:
        video = Video(id=1)
        session.add(video)
        await session.commit()

        upload = await send(manager, 1, b"frames")
        elsewhere = await send(manager, 2, b"other")
        with pytest.raises(InvalidLocationError):
            await video.aattach_direct_upload(elsewhere)  # another row's upload
        ref = await video.aattach_direct_upload(upload)
        assert video.file_ref is ref and ref.original_filename == "clip.mp4"
        await session.commit()
    async with maker() as session:
        loaded = await session.get_one(Video, 1)
        assert await loaded.aget_content(verify=True) == b"frames"

    # A rollback deletes the completed object, as for any upload.
    async with maker() as session:
        video = await session.get_one(Video, 1)
        again = await send(manager, 1, b"second")
        second = await video.aattach_direct_upload(again)
        await session.rollback()
        await drain_pending_deletions(session)
    assert not await manager.aexists(second)
    assert await manager.aexists(ref)
    await manager.aabort_direct_upload(elsewhere)
    objects, uploads = await everything(s3_client, s3_bucket)
    assert (objects, uploads) == ([ref.location], [])
