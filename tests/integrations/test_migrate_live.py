"""A migration while the FastAPI example app serves writers and readers: no request fails."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from examples.fastapi_app import Base, Settings, create_app
from granite_storage import StoragePolicy
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs, ref_rewriter
from granite_storage.migrate import MigrationReport, amigrate
from granite_storage.testing import manager_for


async def test_writers_and_readers_during_a_migration(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'documents.db'}"
    engine = create_async_engine(url)
    try:
        await _amigrate_while_serving(tmp_path, url, engine)
    finally:
        await engine.dispose()


async def _amigrate_while_serving(tmp_path: Path, url: str, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    settings = Settings(storage_root=tmp_path / "storage", database_url=url, fsync=False)
    new = MemoryStorageBackend()
    manager = manager_for(
        LocalStorageBackend(settings.storage_root, fsync=False),
        StoragePolicy("documents", "local", key_prefix="documents", delete_replaced=True),
        backend_key="local",
        extra_backends={"new": new},
    )
    app = create_app(settings, manager)

    async def migrate() -> MigrationReport:
        return await amigrate(
            manager,
            lambda: iter_metadata_storage_refs(engine, Base.metadata),
            ref_rewriter(engine, Base.metadata),
            storage_key="documents",
            to="new",
            concurrency=3,
        )

    expected: dict[str, bytes] = {}
    failures: list[str] = []
    migrated = anyio.Event()
    rng = random.Random(19)

    async with (
        manager,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):

        async def upload(content: bytes) -> None:
            files = {"file": ("a.bin", content, "application/octet-stream")}
            response = await client.post("/documents", files=files)
            if response.status_code != 201:
                failures.append(f"upload: {response.status_code} {response.text}")
            else:
                expected[response.json()["id"]] = content

        for n in range(40):
            await upload(f"before {n} ".encode() * 200)

        async def writer() -> None:
            n = 0
            while not migrated.is_set():
                n += 1
                doc_id = rng.choice(list(expected))
                content = f"replaced {n} ".encode() * 150
                files = {"file": ("b.bin", content, "application/octet-stream")}
                response = await client.put(f"/documents/{doc_id}/content", files=files)
                if response.status_code != 200:
                    failures.append(f"replace: {response.status_code} {response.text}")
                else:
                    expected[doc_id] = content
                await upload(f"during {n} ".encode() * 100)

        async def reader() -> None:
            while not migrated.is_set():
                doc_id = rng.choice(list(expected))
                content = expected[doc_id]
                response = await client.get(f"/documents/{doc_id}/content")
                # A replace may have committed meanwhile: either version is right.
                if response.status_code != 200:
                    failures.append(f"download: {response.status_code} {response.text}")
                elif response.content != content and response.content != expected[doc_id]:
                    failures.append(f"download {doc_id}: wrong content")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            tg.start_soon(reader)
            tg.start_soon(reader)
            report = await migrate()
            migrated.set()

        assert failures == []
        # Refs a writer replaced between their read and their rewrite keep the writer's.
        assert report.copied + len(report.failed) >= 40
        assert 0 < report.rewritten <= report.copied
        # The reasons a run races writers: a replaced object deleted before its copy.
        assert all("missing" in reason for reason in report.failed.values()), report.failed
        for doc_id, content in expected.items():
            response = await client.get(f"/documents/{doc_id}/content")
            assert response.status_code == 200 and response.content == content
        again = await migrate()
        assert again.failed == {}
        for doc_id, content in expected.items():
            response = await client.get(f"/documents/{doc_id}/content")
            assert response.content == content
    assert len(new) >= len(expected)
