"""Benchmark of ``granite-storage migrate`` (issue #19): local disk to moto's S3.

``python -m benchmarks.migrate_local_to_s3 [--small N] [--big-mib M]`` stores
N objects of 64 KiB (default 2,000) and one of M MiB (default 512) on local
disk, with their refs in a SQLite table (WAL), then in the same run:

* the raw loop: read each file from disk and ``upload_fileobj`` it (aioboto3),
  4 at a time;
* the migration: ``amigrate(..., concurrency=4)`` to another bucket, verifying
  every sha256 and rewriting every ref through ``ref_rewriter``.

It prints both times, the ratio (raw time / migration time; the target is at
least 0.9) and each phase's peak RSS growth (``VmHWM`` after resetting it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from examples.gc_factory import Base, Document
from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.s3 import S3StorageBackend
from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs, ref_rewriter
from granite_storage.migrate import amigrate
from tests.services import moto_s3_server


def _seed(root: Path, small: int, big_mib: int) -> list[StoredObjectRef]:
    refs = []
    sizes = [64 << 10] * small + [big_mib << 20]
    for n, size in enumerate(sizes):
        location = f"docs/doc/{n}/file"
        path = root / location
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with path.open("wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                digest.update(block)
                f.write(block)
                left -= len(block)
        checksum = f"sha256:{digest.hexdigest()}"
        refs.append(StoredObjectRef("docs", "local", location, size, checksum))
    return refs


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _hwm()


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    return 0


async def _raw(session: Any, endpoint: str, bucket: str, root: Path, refs: list[Any]) -> None:
    limit = anyio.Semaphore(4)
    async with session.client("s3", endpoint_url=endpoint) as s3:
        await s3.create_bucket(Bucket=bucket)

        async def one(ref: StoredObjectRef) -> None:
            async with limit:
                with (root / ref.location).open("rb") as f:
                    await s3.upload_fileobj(f, bucket, ref.location)

        async with anyio.create_task_group() as tg:
            for ref in refs:
                tg.start_soon(one, ref)


async def main(small: int, big_mib: int) -> None:
    import aioboto3

    tmp = Path(tempfile.mkdtemp(prefix="granite-migrate-bench-"))
    root = tmp / "files"
    refs = await anyio.to_thread.run_sync(_seed, root, small, big_mib)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # writes while a cursor reads
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            insert(Document), [{"id": i, "_file_ref": r} for i, r in enumerate(refs)]
        )
    total = sum(ref.size for ref in refs)
    with moto_s3_server() as endpoint:
        session = aioboto3.Session()
        base = _reset_peak()
        started = time.perf_counter()
        await _raw(session, endpoint, "raw", root, refs)
        raw_s, raw_mem = time.perf_counter() - started, _hwm() - base
        async with session.client("s3", endpoint_url=endpoint) as s3:
            await s3.create_bucket(Bucket="moved")
        s3_backend = S3StorageBackend(
            bucket="moved", session=session, client_kwargs={"endpoint_url": endpoint}
        )
        async with StorageManager(
            {"local": LocalStorageBackend(root, fsync=False), "s3-new": s3_backend},
            {"docs": StoragePolicy(storage_key="docs", backend_key="local", key_prefix="docs")},
        ) as manager:
            base = _reset_peak()
            started = time.perf_counter()
            report = await amigrate(
                manager,
                lambda: iter_metadata_storage_refs(engine, Base.metadata),
                ref_rewriter(engine, Base.metadata),
                storage_key="docs",
                to="s3-new",
                concurrency=4,
            )
            mig_s, mig_mem = time.perf_counter() - started, _hwm() - base
    await engine.dispose()
    assert report.ok and report.copied == len(refs) and report.rewritten == len(refs), report
    mib = total / (1 << 20)
    print(f"{len(refs)} objects, {mib:.0f} MiB")
    print(f"raw loop  {raw_s:7.2f} s  {mib / raw_s:6.1f} MiB/s  peak RSS +{raw_mem >> 20} MiB")
    print(f"migrate   {mig_s:7.2f} s  {mib / mig_s:6.1f} MiB/s  peak RSS +{mig_mem >> 20} MiB")
    print(f"ratio (raw time / migrate time): {raw_s / mig_s:.2f} (target >= 0.9)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=512)
    args = parser.parse_args()
    anyio.run(main, args.small, args.big_mib)
