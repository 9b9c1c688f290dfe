"""Soak: the example FastAPI app on a real uvicorn server, PostgreSQL, local
disk or S3, at concurrency 32, while a garbage collector loops.

The client (:mod:`tests.reliability.soak_client`) runs chains of requests
(:mod:`tests.reliability.soak_plan`): committed uploads (multipart forms and
raw bodies, up to multipart size on S3), bodies over the limit (declared in
``Content-Length``, or found out while streaming a chunked body), clients that
disconnect mid-upload (FIN or RST), transactions that roll back (a title
PostgreSQL refuses at commit), replaces of all those kinds, downloads and
deletes. Meanwhile a :class:`StorageGarbageCollector` with its default
minimum age (one hour) collects in a loop and must delete nothing.

Afterwards, with the server stopped:

* every committed row exists, and no other; its object exists and its sha256
  is what the client last committed (objects lost: must be 0);
* after a final collection with ``min_age=0``, the backend holds exactly the
  referenced objects: no unreferenced object, no temporary file, no pending
  multipart upload (leftovers: must be 0).

On S3 the looping collector runs with ``cleanup_leftovers=False``: moto
reports every multipart upload as initiated in 2010 (see test_crash.py), so
leftover clean-up with any minimum age would abort the soak's uploads in
flight, which on real S3 it would not. The final collection cleans leftovers.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from examples.fastapi_app import Document
from granite_storage import StorageError, StorageManager, StoredObjectRef
from granite_storage.gc import GarbageCollectionReport, StorageGarbageCollector
from granite_storage.integrations.sqlalchemy import iter_model_storage_refs
from tests.local_temp import temp_files
from tests.reliability.conftest import Figures
from tests.reliability.s3_support import moto_client, pending_uploads
from tests.reliability.scale import SCALE, SEED
from tests.reliability.soak_client import SoakClient, SoakState
from tests.reliability.soak_plan import Op, plan_chains
from tests.reliability.soak_server import soak_manager

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(SCALE.timeout)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
MAX_SIZE = 6 * MiB
#: The steps whose upload must leave nothing behind.
FAULTS = {
    Op.CREATE_TOO_LARGE_DECLARED,
    Op.CREATE_TOO_LARGE_STREAMED,
    Op.CREATE_DISCONNECT,
    Op.CREATE_ROLLBACK,
    Op.REPLACE_TOO_LARGE,
    Op.REPLACE_DISCONNECT,
    Op.REPLACE_ROLLBACK,
}


# --------------------------------------------------------------------------- the server


def _start(config: dict[str, Any], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the server on a socket bound here; wait until it answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = {**config, "fd": sock.fileno()}
    with sock, log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.soak_server", json.dumps(config)],
            cwd=REPO_ROOT,
            pass_fds=[sock.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the soak server exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/documents", timeout=5).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"the soak server did not answer within 60 s: {log.read_text()}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: uvicorn finishes the requests in flight, then runs the lifespan's end."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@asynccontextmanager
async def running_server(config: dict[str, Any], log: Path) -> AsyncIterator[int]:
    process, port = await anyio.to_thread.run_sync(_start, config, log)
    try:
        yield port
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, process)


# --------------------------------------------------------------------------- the soak


async def collect_in_a_loop(
    gc: StorageGarbageCollector, stop: anyio.Event, reports: list[GarbageCollectionReport]
) -> None:
    while not stop.is_set():
        reports.append(await gc.acollect(storage_key="documents", dry_run=False))
        with anyio.move_on_after(0.2):
            await stop.wait()


async def run_chains(port: int, state: SoakState) -> None:
    chains = iter(plan_chains(random.Random(SEED), SCALE.soak_uploads, MAX_SIZE))
    limits = httpx.Limits(
        max_connections=SCALE.soak_concurrency, max_keepalive_connections=SCALE.soak_concurrency
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
    ) as client:
        soak = SoakClient(client, port, state)

        async def worker() -> None:
            for chain in chains:  # the workers share one iterator
                await soak.run_chain(chain)

        async with anyio.create_task_group() as tg:
            for _ in range(SCALE.soak_concurrency):
                tg.start_soon(worker)


async def committed_refs(engine: AsyncEngine) -> dict[str, StoredObjectRef | None]:
    async with AsyncSession(engine) as session:
        docs = (await session.scalars(select(Document))).all()
        return {str(doc.id): doc.file_ref for doc in docs}


async def soak(
    config: dict[str, Any],
    engine: AsyncEngine,
    log: Path,
    figures: Figures,
    leftovers_of: Any,
) -> None:
    """Run the soak against a server for ``config``; check and record the figures.

    ``leftovers_of()`` returns the backend's incomplete uploads (temporary
    files, pending multipart uploads).
    """
    state = SoakState()
    gc_reports: list[GarbageCollectionReport] = []
    async with soak_manager(config) as manager:
        gc = StorageGarbageCollector(
            manager,
            lambda: iter_model_storage_refs(engine, Document, "file_ref"),
            cleanup_leftovers=config["backend"] != "s3",  # see the module docstring
        )
        async with running_server(config, log) as port:
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect_in_a_loop, gc, stop, gc_reports)
                try:
                    await run_chains(port, state)
                finally:
                    stop.set()
        # The server has stopped: nothing is written any more. The final
        # collection also removes incomplete uploads, on S3 too.
        final_gc = StorageGarbageCollector(
            manager, lambda: iter_model_storage_refs(engine, Document, "file_ref")
        )
        await check_afterwards(manager, engine, final_gc, state, gc_reports, figures, leftovers_of)
    if state.problems or figures.lost or figures.leftovers:
        tail = (await anyio.Path(log).read_text())[-3000:]
        figures.notes.append(f"server log tail: {tail!r}")
    assert state.problems == [], "\n".join(state.problems)
    assert (figures.lost, figures.leftovers) == (0, 0)


async def check_afterwards(
    manager: StorageManager,
    engine: AsyncEngine,
    gc: StorageGarbageCollector,
    state: SoakState,
    gc_reports: list[GarbageCollectionReport],
    figures: Figures,
    leftovers_of: Any,
) -> None:
    figures.uploads = state.uploads
    figures.faults = sum(n for op, n in state.counts.items() if op in FAULTS)
    figures.notes.append(", ".join(f"{op}: {n}" for op, n in sorted(state.counts.items())))
    figures.notes.append(f"oversized uploads refused: {dict(state.refusals)}")

    # The looping collector ran, with its default minimum age, and deleted nothing.
    assert gc_reports
    assert all(r.min_age == timedelta(hours=1) for r in gc_reports)
    assert [(r.deleted, r.failed, r.leftovers_removed) for r in gc_reports] == [(0, 0, 0)] * len(
        gc_reports
    )
    figures.notes.append(f"collections during the soak: {len(gc_reports)}, deleted 0")

    # Every committed row, and no other; each object whole.
    refs = await committed_refs(engine)
    assert set(refs) == set(state.expected), "rows differ from what the client committed"
    lost = 0
    for doc, ref in refs.items():
        if ref is None or ref.checksum != f"sha256:{state.expected[doc]}":
            lost += 1
            figures.notes.append(f"lost {doc}: its ref is {ref}")
            continue
        try:  # read it all, in chunks: a missing or different object raises
            async with manager.aopen(ref, verify=True) as reader:
                async for _ in reader:
                    pass
        except StorageError as exc:
            lost += 1
            figures.notes.append(f"lost {doc}: {exc}")
    figures.lost = lost

    # What a collection with min_age=0 finds, then removes.
    found = await gc.acollect(storage_key="documents", dry_run=True, min_age=timedelta(0))
    final = await gc.acollect(storage_key="documents", dry_run=False, min_age=timedelta(0))
    figures.notes.append(
        f"before the final collection: {found.orphaned} unreferenced objects, "
        f"{found.leftovers_removed} incomplete uploads; the final one deleted {final.deleted} "
        f"and removed {final.leftovers_removed}"
    )
    assert final.failed == 0, final.failures
    # The server stopped gracefully: every failed, cancelled or oversized
    # upload had to clean up after itself, leaving nothing for the collector.
    assert found.leftovers_removed == 0, "incomplete uploads were left behind"
    backend = manager.get_backend_for_policy(manager.get_policy("documents"))
    listed = {location async for location in backend.aiter_locations()}
    referenced = {ref.location for ref in refs.values() if ref is not None}
    unreferenced = listed - referenced
    incomplete = await leftovers_of()
    figures.leftovers = len(unreferenced) + len(incomplete)
    figures.lost += len(referenced - listed)
    assert referenced <= listed


async def test_soak_local_disk_and_postgres(
    tmp_path: Path, pg_engine: AsyncEngine, figures: Figures
) -> None:
    root = tmp_path / "storage"
    config = {
        "backend": "local",
        "storage_root": str(root),
        "database_url": pg_engine.url.render_as_string(hide_password=False),
        "max_size": MAX_SIZE,
    }

    async def temporary_files() -> list[str]:
        return [str(path) for path in await anyio.to_thread.run_sync(temp_files, root)]

    await soak(config, pg_engine, tmp_path / "server.log", figures, temporary_files)


@pytest.mark.s3
async def test_soak_s3_and_postgres(
    tmp_path: Path,
    pg_engine: AsyncEngine,
    s3_endpoint_url: str,
    s3_bucket: str,
    aioboto3_session: Any,
    figures: Figures,
) -> None:
    config = {
        "backend": "s3",
        "endpoint_url": s3_endpoint_url,
        "bucket": s3_bucket,
        "database_url": pg_engine.url.render_as_string(hide_password=False),
        "max_size": MAX_SIZE,
    }

    async def multipart_uploads() -> list[Any]:
        async with moto_client(aioboto3_session, s3_endpoint_url) as moto:
            return await pending_uploads(moto, s3_bucket)

    await soak(config, pg_engine, tmp_path / "server.log", figures, multipart_uploads)
