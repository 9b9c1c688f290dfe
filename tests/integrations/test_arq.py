"""The arq job and cron helper, run by a real arq burst worker on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage import StoredObjectRef
from granite_storage.errors import ConfigurationError
from granite_storage.gc import StorageGarbageCollector
from tests.gc_support import Store, make_store
from tests.integrations.ledger_support import MIN_AGE, LedgerEnv, amake_env

arq = pytest.importorskip("arq")

from arq import create_pool  # noqa: E402 - after the importorskip
from arq.connections import ArqRedis, RedisSettings  # noqa: E402
from arq.worker import Worker  # noqa: E402

from granite_storage.integrations.arq import (  # noqa: E402
    COLLECTOR_CTX_KEY,
    MANAGER_CTX_KEY,
    REFERENCES_CTX_KEY,
    audit_garbage,
    collect_garbage,
    gc_cron_job,
)

pytestmark = [
    pytest.mark.redis,
    # arq 0.28's Worker.close() calls redis-py 5's deprecated close(); nothing we can change.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, so tests never pick each other's jobs."""
    return f"granite-gc-test-{uuid.uuid4().hex}"


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    return make_store("memory", tmp_path)


def worker_context(store: Store, kept: list[StoredObjectRef]) -> dict[str, Any]:
    seen_keys: list[str] = []

    async def references(storage_key: str) -> AsyncIterator[StoredObjectRef]:
        seen_keys.append(storage_key)
        for ref in kept:
            yield ref

    return {MANAGER_CTX_KEY: store.manager, REFERENCES_CTX_KEY: references, "seen": seen_keys}


def burst_worker(redis_url: str, queue: str, ctx: dict[str, Any], **kwargs: Any) -> Worker:
    return Worker(
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=queue,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        ctx=ctx,
        **kwargs,
    )


async def test_the_job_deletes_orphans_and_returns_the_report(
    redis_url: str, redis: ArqRedis, queue: str, store: Store
) -> None:
    kept = await store.aput()
    orphan = await store.aput()
    young = await store.aput(age=timedelta(minutes=5))
    ctx = worker_context(store, [kept])
    job = await redis.enqueue_job("collect_garbage", "docs", _queue_name=queue)
    assert job is not None

    worker = burst_worker(redis_url, queue, ctx, functions=[collect_garbage])
    try:
        assert await worker.run_check() == 1
    finally:
        await worker.close()

    result = await job.result(timeout=5)
    assert result["storage_key"] == "docs"
    assert result["dry_run"] is False
    assert (result["scanned"], result["referenced"], result["orphaned"]) == (3, 1, 2)
    assert (result["deleted"], result["skipped_too_young"]) == (1, 1)
    assert ctx["seen"] == ["docs"]
    assert not await store.backend.aexists(orphan)
    assert await store.backend.aexists(kept)
    assert await store.backend.aexists(young)


async def test_job_options_dry_run_and_min_age(
    redis_url: str, redis: ArqRedis, queue: str, store: Store
) -> None:
    young = await store.aput(age=timedelta(minutes=5))
    ctx = worker_context(store, [])
    dry = await redis.enqueue_job(
        "collect_garbage", "docs", delete=False, min_age_seconds=60, _queue_name=queue
    )
    assert dry is not None
    worker = burst_worker(redis_url, queue, ctx, functions=[collect_garbage])
    try:
        await worker.run_check()
    finally:
        await worker.close()
    result = await dry.result(timeout=5)
    assert (result["dry_run"], result["eligible"], result["deleted"]) == (True, 1, 0)
    assert result["orphan_sample"] == [young.location]
    assert await store.backend.aexists(young)


async def test_the_cron_job_runs_in_a_worker(
    redis_url: str, redis: ArqRedis, queue: str, store: Store
) -> None:
    kept = await store.aput()
    orphan = await store.aput()
    cron_job = gc_cron_job("docs", hour=3, run_at_startup=True, min_age_seconds=0)
    assert cron_job.name == "cron:granite_storage_gc:docs"
    assert (cron_job.hour, cron_job.minute, cron_job.second) == (3, 0, 0)
    assert cron_job.unique

    worker = burst_worker(redis_url, queue, worker_context(store, [kept]), cron_jobs=[cron_job])
    try:
        assert await worker.run_check() == 1
    finally:
        await worker.close()
    assert not await store.backend.aexists(orphan)
    assert await store.backend.aexists(kept)


async def test_a_context_without_the_manager_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=MANAGER_CTX_KEY):
        await collect_garbage({}, "docs")


async def test_a_context_without_references_is_a_clear_error(store: Store) -> None:
    with pytest.raises(ConfigurationError, match=REFERENCES_CTX_KEY):
        await collect_garbage({MANAGER_CTX_KEY: store.manager}, "docs")


def test_cron_job_needs_a_storage_key() -> None:
    with pytest.raises(ValueError, match="storage key"):
        gc_cron_job("")


# -- with the object ledger: a collector of the application's own in the context -----


@pytest.fixture
async def lenv(db_engine: AsyncEngine) -> AsyncIterator[LedgerEnv]:
    env = await amake_env(db_engine)
    yield env
    await env.adrain()


def ledger_context(env: LedgerEnv) -> dict[str, Any]:
    return {MANAGER_CTX_KEY: env.manager, COLLECTOR_CTX_KEY: env.collector()}


async def test_the_job_runs_the_ledger_collector_from_the_context(
    redis_url: str, redis: ArqRedis, queue: str, lenv: LedgerEnv
) -> None:
    orphan = await lenv.aorphan_intent()
    _, kept = await lenv.acommitted_doc()
    lenv.clock.advance(MIN_AGE * 10)
    assert await lenv.alocations() == {orphan.location, kept.location}
    job = await redis.enqueue_job("collect_garbage", "docs", _queue_name=queue)
    assert job is not None
    worker = burst_worker(redis_url, queue, ledger_context(lenv), functions=[collect_garbage])
    try:
        assert await worker.run_check() == 1
    finally:
        await worker.close()
    result = await job.result(timeout=5)
    # The ledger's candidates (one intent row), not a listing of the backend.
    assert (result["scanned"], result["deleted"], result["dry_run"]) == (1, 1, False)
    assert await lenv.alocations() == {kept.location}
    assert await lenv.arows() == {kept.location: "live"}


async def test_the_audit_cron_job_finds_what_the_ledger_never_knew(
    redis_url: str, redis: ArqRedis, queue: str, lenv: LedgerEnv
) -> None:
    _, kept = await lenv.acommitted_doc()
    foreign = await lenv.manager.aput_bytes(
        storage_key="docs", model_name="x", entity_id=1, field_name="f", content=b"foreign"
    )
    lenv.clock.advance(MIN_AGE * 10)
    ctx = ledger_context(lenv)
    # The ledger's own collection does not list: the foreign object is not its candidate.
    plain = await collect_garbage(ctx, "docs")
    assert (plain["scanned"], plain["deleted"]) == (0, 0)
    assert foreign.location in await lenv.alocations()

    cron_job = gc_cron_job("docs", audit=True, weekday=6, hour=4, run_at_startup=True)
    assert cron_job.name == "cron:granite_storage_audit:docs"
    worker = burst_worker(redis_url, queue, ctx, cron_jobs=[cron_job])
    try:
        assert await worker.run_check() == 1
    finally:
        await worker.close()
    assert await lenv.alocations() == {kept.location}


async def test_the_audit_job_needs_the_ledger_collector(store: Store) -> None:
    ctx = worker_context(store, [])
    with pytest.raises(ConfigurationError, match="LedgerGarbageCollector"):
        await audit_garbage(ctx, "docs")
    plain = StorageGarbageCollector(store.manager, list)
    with pytest.raises(ConfigurationError, match="StorageGarbageCollector"):
        await audit_garbage({**ctx, COLLECTOR_CTX_KEY: plain}, "docs")
    with pytest.raises(ConfigurationError, match="not a garbage collector"):
        await collect_garbage({**ctx, COLLECTOR_CTX_KEY: object()}, "docs")


async def test_a_plain_collector_in_the_context_is_used_with_the_jobs_options(
    store: Store,
) -> None:
    kept = await store.aput()
    orphan = await store.aput(age=timedelta(minutes=5))
    collector = StorageGarbageCollector(store.manager, lambda: [kept], min_age=timedelta(hours=1))
    ctx = {MANAGER_CTX_KEY: store.manager, COLLECTOR_CTX_KEY: collector}
    own = await collect_garbage(ctx, "docs")  # the collector's grace period: too young
    assert (own["skipped_too_young"], own["deleted"]) == (1, 0)
    assert await store.backend.aexists(orphan)
    result = await collect_garbage(ctx, "docs", min_age_seconds=60)  # the job's
    assert result["deleted"] == 1
    assert not await store.backend.aexists(orphan)
    assert await store.backend.aexists(kept)
