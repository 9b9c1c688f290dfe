"""A process SIGKILLed after its upload and before its commit: the next
listing-free collection finds the object in the ledger and deletes it, and
makes no LIST request (counted with a botocore hook on S3, by a counting
wrapper on local disk).

The kill gives no chance to clean up: no rollback handler, no ``finally``. Its
intent row was committed before the upload; the claim died with the
transaction, so the row is an intent again once the database notices the
dead connection (PostgreSQL releases the row lock; SQLite rolls back the hot
journal and frees its write lock).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.gc import GarbageCollectionReport
from tests.backends.conftest import open_s3_backend
from tests.integrations.ledger_support import CountingBackend, LedgerEnv, amake_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "s3":
        return {
            "backend": "s3",
            "endpoint_url": request.getfixturevalue("s3_endpoint_url"),
            "bucket": request.getfixturevalue("s3_bucket"),
        }
    return {"backend": "local", "root": str(tmp_path / "storage")}


@pytest.fixture
async def env(db_engine: AsyncEngine, backend_spec: dict[str, Any]) -> AsyncIterator[LedgerEnv]:
    backend: StorageBackend
    if backend_spec["backend"] == "s3":
        async with open_s3_backend(backend_spec["endpoint_url"], backend_spec["bucket"]) as s3:
            yield await amake_env(db_engine, s3)
        return
    local = LocalStorageBackend(backend_spec["root"], fsync=False)
    backend = CountingBackend(local)
    yield await amake_env(db_engine, backend)


async def _upload_and_get_killed(env: LedgerEnv, spec: dict[str, Any], *, flush_first: bool) -> str:
    """Run the child until it has uploaded, SIGKILL it; the uploaded location."""
    config = {
        **spec,
        "database_url": env.engine.url.render_as_string(hide_password=False),
        "flush_first": flush_first,
    }
    command = [sys.executable, "-m", "tests.integrations.ledger_crash_child", json.dumps(config)]
    process: Process = await anyio.open_process(command, cwd=ROOT, env=dict(os.environ))
    async with process:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive(1)
                line += chunk
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    word, location = line.decode().split()
    assert word == "UPLOADED", line
    return location


async def _count_requests(env: LedgerEnv) -> Counter[str]:
    """Count every request the backend sends from now on (S3), or every
    primitive call (the counting wrapper on local disk)."""
    if isinstance(env.backend, CountingBackend):
        env.backend.calls.clear()
        return env.backend.calls
    counts: Counter[str] = Counter()
    client = await env.backend.aget_client()  # type: ignore[attr-defined]

    def count(model: Any, **_: Any) -> None:
        counts[model.name] += 1

    client.meta.events.register("before-call.s3", count)
    return counts


async def _collect_until_deleted(env: LedgerEnv) -> list[GarbageCollectionReport]:
    """PostgreSQL ends the dead client's transaction once it sees the
    connection close: until then the row is held, and skipped."""
    collector = env.collector(min_age=timedelta(0))
    reports = []
    for _ in range(100):
        report = await collector.acollect(storage_key="docs", dry_run=False)
        reports.append(report)
        if report.deleted or report.scanned == 0:
            break
        await anyio.sleep(0.05)
    return reports


async def test_a_killed_upload_is_collected_without_listing(
    env: LedgerEnv, backend_spec: dict[str, Any]
) -> None:
    location = await _upload_and_get_killed(env, backend_spec, flush_first=env.dialect != "sqlite")
    assert await env.alocations() == {location}
    assert await env.arows() == {location: "intent"}
    requests = await _count_requests(env)
    reports = await _collect_until_deleted(env)
    assert reports[-1].deleted == 1
    assert sum(r.deleted for r in reports) == 1
    assert all(r.failed == 0 for r in reports)
    listing = {name: n for name, n in requests.items() if name.startswith("List") or name == "list"}
    assert listing == {}
    assert requests["DeleteObjects"] + requests["delete_many"] == 1
    assert await env.alocations() == set()
    assert await env.arows() == {}


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
@pytest.mark.parametrize("backend_spec", ["local"], indirect=True)
async def test_on_sqlite_an_upload_after_a_write_is_left_to_the_audit(
    env: LedgerEnv, backend_spec: dict[str, Any]
) -> None:
    """After a flush the SQLite transaction holds the write lock, so its claim
    was made inside it and died with it: the ledger has no row; the listing
    audit finds the object."""
    location = await _upload_and_get_killed(env, backend_spec, flush_first=True)
    assert await env.arows() == {}
    collector = env.collector(min_age=timedelta(0))
    assert (await collector.acollect(storage_key="docs", dry_run=False)).scanned == 0
    assert await env.alocations() == {location}
    report = await collector.aaudit(storage_key="docs", dry_run=False)
    assert report.deleted == 1
    assert await env.alocations() == set()
    assert await env.arows() == {}
