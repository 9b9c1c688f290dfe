"""A collection never aborts an upload still in progress, however long it
runs, nor one outside its own policy's prefix; an upload idle for longer than
the leftover age is removed (issue 17).

Two policies (``a`` and ``b``) share one backend. A slow upload of ``b``
keeps sending data while collections of both policies run at a small
``min_age`` and ``leftover_min_age``; it must complete. Abandoned uploads of
each policy are removed only by a collection of their own policy, and one
whose location the ``in_use`` hook claims (the object ledger's intents) is
kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from granite_storage import StorageManager
from granite_storage.backends.local import TEMP_PREFIX, LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.gc import GarbageCollectionReport, StorageGarbageCollector
from granite_storage.testing import manager_for
from tests.local_temp import temp_files

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part
SMALL = timedelta(seconds=1)


def two_policies(backend: StorageBackend) -> StorageManager:
    return manager_for(backend, "a", "b")


async def slow(chunks: int, size: int, pause: float) -> AsyncIterator[bytes]:
    """A client on a slow link: ``chunks`` chunks of ``size`` bytes, ``pause`` apart."""
    for number in range(chunks):
        yield bytes([number]) * size
        await anyio.sleep(pause)


async def upload_while_collecting(
    manager: StorageManager,
    stream: AsyncIterator[bytes],
    *,
    ready: Callable[[], Awaitable[bool]],
    leftover_min_age: timedelta,
) -> tuple[Any, list[GarbageCollectionReport]]:
    """Upload ``stream`` to policy ``b`` while collections of ``a`` and ``b``
    run again and again (once ``ready()``); return the ref and the reports."""
    gc = StorageGarbageCollector(manager, list, min_age=SMALL, leftover_min_age=leftover_min_age)
    reports: list[GarbageCollectionReport] = []
    done = anyio.Event()

    async def collect() -> None:
        while not await ready():  # noqa: ASYNC110 - polls the server
            await anyio.sleep(0.05)
        while not done.is_set():
            for key in ("a", "b"):
                reports.append(await gc.acollect(storage_key=key, dry_run=False))
            await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        ref = await manager.aput_stream(
            storage_key="b", model_name="m", entity_id=1, field_name="f", stream=stream
        )
        done.set()
    return ref, reports


# --------------------------------------------------------------------------- S3


@pytest.mark.s3
async def test_slow_active_s3_upload_survives_collections_of_both_policies(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    from tests.backends.conftest import open_s3_backend

    async def pending() -> dict[str, str]:
        response = await s3_client.list_multipart_uploads(Bucket=s3_bucket)
        return {u["Key"]: u["UploadId"] for u in response.get("Uploads", [])}

    # Abandoned uploads of each policy: one part, then nothing.
    for key in ("a/m/1/f/idle.bin", "b/m/1/f/idle.bin", "b/m/1/f/claimed.bin"):
        upload = await s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        await s3_client.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )

    async def first_part_received() -> bool:
        # moto reports every upload as initiated in 2010: until its first
        # part arrives, an upload would look idle for years. On S3 the
        # initiation time is real; so collections start after the first part.
        for key, upload_id in (await pending()).items():
            if key.startswith("b/m/1/f/") and not key.endswith(("idle.bin", "claimed.bin")):
                parts = await s3_client.list_parts(Bucket=s3_bucket, Key=key, UploadId=upload_id)
                return bool(parts.get("Parts"))
        return False

    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        manager = two_policies(backend)
        # Ten 5 MiB parts, 0.5 s apart: 5 s, longer than both ages (the
        # leftover age of 3 s is widened by S3's 1 s timestamp resolution).
        ref, reports = await upload_while_collecting(
            manager,
            slow(10, PART, 0.5),
            ready=first_part_received,
            leftover_min_age=timedelta(seconds=3),
        )
        assert ref.size == 10 * PART
        assert await manager.aget(ref, verify=True)
        assert len(reports) >= 6 and all(r.failed == 0 for r in reports)
        # The idle uploads were aborted each by its own policy's collection
        # (once idle for 3 s and the 1 s timestamp resolution), nothing else.
        assert sum(r.leftovers_removed for r in reports if r.storage_key == "a") == 1
        assert sum(r.leftovers_removed for r in reports if r.storage_key == "b") == 2
        assert await pending() == {}


@pytest.mark.s3
async def test_s3_cleanup_is_scoped_to_the_prefix_and_keeps_uploads_in_use(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    from tests.backends.conftest import open_s3_backend

    keys = ["a/m/1/f/x.bin", "b/m/1/f/y.bin", "b/m/1/f/z.bin", "ab/m/1/f/w.bin"]
    for key in keys:
        await s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    future = datetime.now(UTC) + timedelta(hours=1)

    async def in_use(locations: list[str]) -> list[str]:
        return [location for location in locations if location.endswith("z.bin")]

    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        assert await backend.acleanup_leftovers(older_than=future, prefix="b") == 2
        removed = await backend.acleanup_leftovers(
            older_than=future, prefix="b", in_use=in_use, dry_run=False
        )
        assert removed == 1
        response = await s3_client.list_multipart_uploads(Bucket=s3_bucket)
        assert sorted(u["Key"] for u in response["Uploads"]) == [keys[0], keys[3], keys[2]]
        # A part received after the cutoff keeps an upload however old it is.
        (upload,) = [u for u in response["Uploads"] if u["Key"] == keys[0]]
        await s3_client.upload_part(
            Bucket=s3_bucket, Key=keys[0], UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
        a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
        assert await backend.acleanup_leftovers(older_than=a_minute_ago, prefix="a") == 0
        assert await backend.acleanup_leftovers(older_than=future, prefix="a") == 1


# --------------------------------------------------------------------------- local disk


async def hanging(chunks: int | None = None) -> AsyncIterator[bytes]:
    """3 MiB (past the manager's read-ahead), then ``chunks`` is None: hang."""
    for _ in range(3):
        yield b"x" * MiB
    if chunks is None:
        await anyio.sleep_forever()


async def test_slow_active_local_upload_survives_collections_of_both_policies(
    tmp_path: Path,
) -> None:
    backend = LocalStorageBackend(tmp_path, fsync=False)
    manager = two_policies(backend)

    async def stalls(prefix: str) -> None:
        """An upload that sends 3 MiB and then hangs (until cancelled)."""
        await manager.aput_stream(
            storage_key=prefix, model_name="m", entity_id=2, field_name="f", stream=hanging()
        )

    async with anyio.create_task_group() as hung:
        for prefix in ("a", "b"):
            hung.start_soon(stalls, prefix)
        while len(idle := await anyio.to_thread.run_sync(temp_files, tmp_path)) < 2:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        # Each temporary file is next to its target (and names it).
        assert [str(path.parent.relative_to(tmp_path)) for path in idle] == ["a/m/2/f", "b/m/2/f"]
        assert all(path.name.startswith(TEMP_PREFIX + ".") for path in idle)

        async def always() -> bool:
            return True

        # Forty 64 KiB chunks, 0.1 s apart: 4 s, longer than both ages.
        ref, reports = await upload_while_collecting(
            manager, slow(40, 64 * 1024, 0.1), ready=always, leftover_min_age=2 * SMALL
        )
        assert ref.size == 40 * 64 * 1024
        assert await manager.aget(ref, verify=True)
        assert all(r.failed == 0 for r in reports)
        assert sum(r.leftovers_removed for r in reports if r.storage_key == "a") == 1
        assert sum(r.leftovers_removed for r in reports if r.storage_key == "b") == 1
        assert await anyio.to_thread.run_sync(temp_files, tmp_path) == []
        hung.cancel_scope.cancel()


async def test_local_cleanup_keeps_temporary_files_in_use(tmp_path: Path) -> None:
    backend = LocalStorageBackend(tmp_path, fsync=False)
    manager = two_policies(backend)
    release = anyio.Event()

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in hanging(3):
            yield chunk
        await release.wait()

    async def in_use(locations: list[str]) -> list[str]:
        return locations  # the ledger holds the intent of every one

    future = datetime.now(UTC) + timedelta(hours=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: manager.aput_stream(
                storage_key="b", model_name="m", entity_id=1, field_name="f", stream=stream()
            )
        )
        while not await anyio.to_thread.run_sync(temp_files, tmp_path):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        assert await backend.acleanup_leftovers(older_than=future, prefix="a") == 0
        assert await backend.acleanup_leftovers(older_than=future, prefix="b", in_use=in_use) == 0
        assert await backend.acleanup_leftovers(older_than=future, prefix="b") == 1  # dry run
        release.set()
    assert await anyio.to_thread.run_sync(temp_files, tmp_path) == []
