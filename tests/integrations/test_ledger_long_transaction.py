"""Why the ledger exists: a transaction that stays open far longer than the
grace period after its upload, while the collector runs in a loop.

The collector's clock runs ``HELD`` (ten grace periods) ahead of real time, so
every run sees the upload as ten times older than the minimum age, as if the
transaction had been open that long; the transaction commits only after the
collector has run several times meanwhile. With the ledger, every run skips the
upload (the transaction holds its claim) and the committed row reads its
content back. Without it, the same scenario deletes the object under the
committed row.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage import ObjectNotFoundError
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.gc import GarbageCollectionReport, StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs
from tests.backends.conftest import open_s3_backend
from tests.integrations.ledger_support import MIN_AGE, Doc, LedgerBase, LedgerEnv, amake_env

HELD = MIN_AGE * 10
RUNS_WHILE_OPEN = 4
DATA = b"committed after a long wait"

Collect = Callable[[int], Awaitable[GarbageCollectionReport]]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend_spec(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    if request.param == "s3":
        return (
            "s3",
            request.getfixturevalue("s3_endpoint_url"),
            request.getfixturevalue("s3_bucket"),
        )
    return "local", "", ""


async def _open_backend(
    stack: AsyncExitStack, spec: tuple[str, str, str], tmp_path: Path
) -> StorageBackend:
    kind, endpoint_url, bucket = spec
    if kind == "s3":
        return await stack.enter_async_context(open_s3_backend(endpoint_url, bucket))
    return LocalStorageBackend(tmp_path / "storage", fsync=False)


def _ahead() -> datetime:
    return datetime.now(UTC) + HELD


async def _run_scenario(env: LedgerEnv, collect: Collect) -> list[GarbageCollectionReport]:
    """Upload, let the collector run RUNS_WHILE_OPEN times, then commit."""
    runs: list[GarbageCollectionReport] = []
    enough, stop = anyio.Event(), anyio.Event()

    async def loop() -> None:
        while not stop.is_set():
            runs.append(await collect(len(runs)))
            if len(runs) >= RUNS_WHILE_OPEN:
                enough.set()
            await anyio.sleep(0.01)

    async with env.session() as session:
        doc = Doc(id=uuid.uuid4())  # set here: on SQLite the claim takes the write lock
        session.add(doc)
        await doc.aset_content(DATA)
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            await enough.wait()
            await session.commit()
            stop.set()
    return runs


async def test_with_the_ledger_a_long_transaction_keeps_its_upload(
    db_engine: AsyncEngine, backend_spec: tuple[str, str, str], tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        env = await amake_env(db_engine, await _open_backend(stack, backend_spec, tmp_path))
        collector = env.collector(clock=_ahead)

        async def collect(run: int) -> GarbageCollectionReport:
            # Alternate the listing-free collection and the listing audit.
            if run % 2 == 0:
                return await collector.acollect(storage_key="docs", dry_run=False)
            return await collector.aaudit(storage_key="docs", dry_run=False)

        runs = await _run_scenario(env, collect)
        await env.adrain()
        while_open = runs[:RUNS_WHILE_OPEN]
        assert [(r.deleted, r.skipped_in_use) for r in while_open] == [(0, 1)] * RUNS_WHILE_OPEN
        assert sum(r.deleted for r in runs) == 0
        async with env.session() as session:
            doc = (await session.scalars(select(Doc))).one()
            assert await doc.aget_content(verify=True) == DATA
        assert set((await env.arows()).values()) == {"live"}


async def test_without_the_ledger_the_same_transaction_loses_its_upload(
    db_engine: AsyncEngine, backend_spec: tuple[str, str, str], tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        env = await amake_env(db_engine, await _open_backend(stack, backend_spec, tmp_path))
        env.configure(ledger=None)
        collector = StorageGarbageCollector(
            env.manager,
            lambda: iter_metadata_storage_refs(env.engine, LedgerBase.metadata),
            min_age=MIN_AGE,
            clock=_ahead,
        )

        async def collect(run: int) -> GarbageCollectionReport:
            return await collector.acollect(storage_key="docs", dry_run=False)

        runs = await _run_scenario(env, collect)
        await env.adrain()
        assert sum(r.deleted for r in runs) == 1  # deleted while the transaction was open
        async with env.session() as session:
            doc = (await session.scalars(select(Doc))).one()
            assert doc.file_ref is not None  # the committed row points at ...
            with pytest.raises(ObjectNotFoundError):
                await doc.aget_content()  # ... nothing


async def test_an_upload_slower_than_the_grace_period_is_held_while_it_streams(
    db_engine: AsyncEngine,
) -> None:
    """The claim is taken before the first byte: a collector that runs while the
    upload streams (ten grace periods after its intent) skips it."""
    env = await amake_env(db_engine)
    collector = env.collector(clock=_ahead)
    runs: list[GarbageCollectionReport] = []

    async def slow_source() -> AsyncIterator[bytes]:
        yield b"first half, "
        for _ in range(3):  # the upload is in flight
            runs.append(await collector.acollect(storage_key="docs", dry_run=False))
        yield b"second half"

    async with env.session() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        await doc.aset_content_from_stream(slow_source())
        await session.commit()
    await env.adrain()
    assert [(r.scanned, r.deleted, r.skipped_in_use) for r in runs] == [(1, 0, 1)] * 3
    async with env.session() as session:
        loaded = (await session.scalars(select(Doc))).one()
        assert await loaded.aget_content(verify=True) == b"first half, second half"
