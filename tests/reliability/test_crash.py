"""A process killed with SIGKILL in the middle of a 64 MiB upload.

The child (:mod:`tests.reliability.crash_upload`) streams 64 MiB through a
``StorageManager``; once a chosen share of it has gone to the backend, the
parent kills it with SIGKILL: no ``finally``, no abort, no clean-up. Then:

* no object exists at the upload's final location, nor anywhere else in the
  backend's listing;
* its leftover is there (a temporary file on local disk, a multipart upload
  on S3) and survives a collection while younger than the collector's
  minimum age;
* the next collection once it is older removes it, and nothing remains.

Ageing: a leftover is removed once idle for the leftover age (24 h). On
local disk the temporary file's mtime is set 25 hours back with
``os.utime``. moto reports the same initiation time for every multipart
upload, 2010-11-10T20:48:33Z, but its parts' real times; the test proves
that the age check is applied to S3 leftovers by collecting first with a
clock set just after that time (the upload is then too young and kept), and
then with a clock a day ahead (its last part is then a day old).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import pytest

from granite_storage import StorageManager, StoredObjectRef
from granite_storage.backends.local import TEMP_PREFIX, LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.gc import StorageGarbageCollector
from granite_storage.testing import manager_for
from tests.backends.conftest import S3_TEST_PART_SIZE, open_s3_backend
from tests.reliability.conftest import Figures
from tests.reliability.s3_support import moto_client, pending_uploads, stored_objects
from tests.reliability.scale import SCALE

pytestmark = pytest.mark.timeout(SCALE.timeout)

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
SIZE = 64 * MiB
#: moto's fixed ``Initiated`` of every multipart upload.
MOTO_INITIATED = datetime(2010, 11, 10, 20, 48, 33, tzinfo=UTC)


def no_references() -> list[StoredObjectRef]:
    return []


def manager_on(backend: StorageBackend) -> StorageManager:
    return manager_for(backend, "docs", backend_key="store")


def kill_midway(config: dict[str, Any], log: Path) -> str:
    """Run the child until it reports MIDWAY, SIGKILL it; return the location
    it was writing. Blocking: call it in a worker thread."""
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_upload", json.dumps(config)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert child.stdout is not None
        line = _read_line(child.stdout, timeout=60)
        assert line.startswith(b"MIDWAY "), f"child said {line!r}; its log:\n{log.read_text()}"
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert b"DONE" not in rest  # killed before the upload could finish
    return line.split()[1].decode()


def _read_line(stream: IO[bytes], *, timeout: float) -> bytes:
    """The child's next line (``b""`` if it died first)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from the child within {timeout} s")
    return stream.readline().strip()


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file())


def ref_at(location: str) -> StoredObjectRef:
    return StoredObjectRef("docs", "any", location, SIZE, "sha256:unknown")


@pytest.mark.parametrize("fraction", SCALE.crash_points)
async def test_local_upload_killed_midway(
    tmp_path: Path, fraction: float, figures: Figures
) -> None:
    root = tmp_path / "storage"
    config = {
        "backend": "local",
        "root": str(root),
        "size": SIZE,
        "report_at": int(SIZE * fraction),
    }
    location = await anyio.to_thread.run_sync(kill_midway, config, tmp_path / "child.log")
    figures.uploads, figures.faults = 1, 1

    backend = LocalStorageBackend(root, fsync=False)
    manager = manager_on(backend)
    assert location.startswith("docs/crash/1/file/")
    assert not await manager.aexists(ref_at(location))
    assert [info async for info in backend.aiter_objects()] == []
    files = await anyio.to_thread.run_sync(lambda: sorted(files_under(root)))
    # The one leftover, next to its target, nothing else.
    (temp,) = files
    assert temp.parent == root / location.rpartition("/")[0]
    assert temp.name.startswith(TEMP_PREFIX + ".")
    assert 0 < (await anyio.Path(temp).stat()).st_size < SIZE

    gc = StorageGarbageCollector(manager, no_references)  # the default minimum age
    young = await gc.acollect(storage_key="docs", dry_run=False)
    assert (young.scanned, young.deleted, young.leftovers_removed) == (0, 0, 0)
    assert await anyio.Path(temp).exists()  # too young: an upload may still be writing it

    # Idle for longer than the leftover age (24 h by default): abandoned.
    a_day_ago = time.time() - 25 * 3600
    await anyio.to_thread.run_sync(os.utime, temp, (a_day_ago, a_day_ago))
    old = await gc.acollect(storage_key="docs", dry_run=False)
    assert (old.deleted, old.leftovers_removed, old.failed) == (0, 1, 0)
    leftovers = await anyio.to_thread.run_sync(lambda: sorted(files_under(root)))
    figures.leftovers = len(leftovers)
    assert leftovers == []
    assert await anyio.to_thread.run_sync(os.listdir, root) == []  # its directories pruned


@pytest.mark.s3
@pytest.mark.parametrize("fraction", SCALE.crash_points)
async def test_s3_upload_killed_midway(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any, tmp_path: Path, fraction: float,
    figures: Figures,
) -> None:  # fmt: skip
    report_at = int(SIZE * fraction)
    config = {
        "backend": "s3",
        "endpoint_url": s3_endpoint_url,
        "bucket": s3_bucket,
        "size": SIZE,
        "report_at": report_at,
    }
    # Past one part and two chunks the multipart upload was created; before
    # one part, nothing was sent yet. In between it depends on timing.
    assert not S3_TEST_PART_SIZE <= report_at < S3_TEST_PART_SIZE + 2 * MiB
    started_multipart = report_at >= S3_TEST_PART_SIZE
    location = await anyio.to_thread.run_sync(kill_midway, config, tmp_path / "child.log")
    figures.uploads, figures.faults = 1, 1

    async with (
        moto_client(aioboto3_session, s3_endpoint_url) as moto,
        open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend,
    ):
        manager = manager_on(backend)
        assert not await manager.aexists(ref_at(location))
        assert await stored_objects(moto, s3_bucket) == {}
        uploads = await pending_uploads(moto, s3_bucket)
        assert [upload["Key"] for upload in uploads] == ([location] if started_multipart else [])
        if started_multipart:
            (upload,) = uploads
            parts = await moto.list_parts(
                Bucket=s3_bucket, Key=location, UploadId=upload["UploadId"]
            )
            assert len(parts.get("Parts", [])) >= 1  # killed with data on the server
            assert upload["Initiated"] == MOTO_INITIATED  # moto's fixed time, see above

        # With the clock half an hour after moto's initiation time, the
        # upload is younger than the default minimum age of one hour: kept.
        just_after = StorageGarbageCollector(
            manager, no_references, clock=lambda: MOTO_INITIATED + timedelta(minutes=30)
        )
        young = await just_after.acollect(storage_key="docs", dry_run=False)
        assert (young.deleted, young.leftovers_removed) == (0, 0)
        assert len(await pending_uploads(moto, s3_bucket)) == len(uploads)

        # A day later no part arrived any more: abandoned (the leftover age is 24 h).
        gc = StorageGarbageCollector(
            manager, no_references, clock=lambda: datetime.now(UTC) + timedelta(hours=25)
        )
        old = await gc.acollect(storage_key="docs", dry_run=False)
        assert (old.deleted, old.leftovers_removed, old.failed) == (0, len(uploads), 0)
        remaining = await pending_uploads(moto, s3_bucket)
        objects = await stored_objects(moto, s3_bucket)
        figures.leftovers = len(remaining) + len(objects)
        assert (remaining, objects) == ([], {})
