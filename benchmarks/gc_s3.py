"""Garbage collection on S3 (moto's server): N objects, some orphans deleted per run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks._context import Context, Job, seconds
from benchmarks._data import SMALL_CONTENT, make_object_tree, read_lines
from benchmarks._harness import Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, legacy

__all__ = ["run"]

BUCKET = "granite-bench-gc"
PREFIX = "gc"
_REGION = "us-east-1"
_FAKE_CHECKSUM = "sha256:" + "0" * 64


def _check_deleted(deleted: int, expected: int) -> None:
    if deleted != expected:
        raise RuntimeError(f"deleted {deleted} orphans, expected {expected}")


async def granite_gc_s3(
    timer: Timer, *, endpoint: str, references: str, orphans: int, ready_file: str
) -> dict[str, float]:
    from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
    from granite_storage.backends.s3 import S3StorageBackend
    from granite_storage.gc import StorageGarbageCollector

    refs = [
        StoredObjectRef(STORAGE_KEY, "s3", location, len(SMALL_CONTENT), _FAKE_CHECKSUM)
        for location in read_lines(references)
    ]
    backend = S3StorageBackend(
        bucket=BUCKET, client_kwargs={"endpoint_url": endpoint, "region_name": _REGION}
    )
    policies = {STORAGE_KEY: StoragePolicy(STORAGE_KEY, "s3", key_prefix=PREFIX)}
    async with StorageManager(backends={"s3": backend}, policies=policies) as manager:
        await backend.aget_client()  # open the client outside the measurement, as 0.1.0's is
        collector = StorageGarbageCollector(manager, lambda: refs, min_age=timedelta(0))
        _wait_until_ready(ready_file)
        with timer:
            report = await collector.acollect(
                storage_key=STORAGE_KEY, dry_run=False, min_age=timedelta(0)
            )
    _check_deleted(report.deleted, orphans)
    return {"scanned": report.scanned, "deleted": report.deleted}


def legacy_gc_s3(
    timer: Timer, *, endpoint: str, references: str, orphans: int, ready_file: str
) -> dict[str, float]:
    import boto3

    models = legacy("models")
    refs = [
        models.StoredObjectRef(STORAGE_KEY, "s3", location, len(SMALL_CONTENT), _FAKE_CHECKSUM)
        for location in read_lines(references)
    ]
    client = boto3.client("s3", endpoint_url=endpoint, region_name=_REGION)
    client.list_buckets()  # connect outside the measurement
    backend = legacy("backends.s3").S3StorageBackend(bucket=BUCKET, client=client)
    manager = legacy("manager").StorageManager(
        backends={"s3": backend},
        policies={STORAGE_KEY: legacy("policies").StoragePolicy(STORAGE_KEY, "s3", None, PREFIX)},
    )
    collector = legacy("gc").StorageGarbageCollector(manager, lambda: refs)
    _wait_until_ready(ready_file)
    with timer:
        report = collector.collect(storage_key=STORAGE_KEY, dry_run=False)
    _check_deleted(report.deleted, orphans)
    return {"scanned": report.scanned, "deleted": report.deleted}


def boto3_list_only(timer: Timer, *, endpoint: str, objects: int) -> dict[str, float]:
    """Only the listing every collector needs: the floor of any collection's time."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=_REGION)
    client.list_buckets()
    with timer:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
        found = sum(len(page.get("Contents", [])) for page in pages)
    if found != objects:
        raise RuntimeError(f"listed {found} objects, expected {objects}")
    return {"scanned": found}


def _put_all(client: Any, keys: list[str]) -> None:
    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=SMALL_CONTENT)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


def _wait_until_ready(ready_file: str) -> None:
    """Wait until the objects written before this run are older than a
    collector's cutoff plus S3's one-second timestamp resolution."""
    ready_at = float(Path(ready_file).read_text())
    time.sleep(max(0.0, ready_at - time.time()))


def run(ctx: Context) -> list[Row]:
    import boto3
    from botocore.config import Config

    n, orphans = ctx.sizes.s3_gc_objects, ctx.sizes.s3_gc_orphans
    scenario = f"GC, {n:,} S3 objects / {orphans:,} orphans deleted"
    data = ctx.scratch("gc-s3")
    tree = make_object_tree(n, n - orphans, prefix=PREFIX)
    references_file, _ = tree.write_lists(data)
    ready_file = data / "ready-at.txt"
    server = ctx.moto()
    client = boto3.client(
        "s3", endpoint_url=server.url, region_name=_REGION, config=Config(max_pool_connections=16)
    )
    client.create_bucket(Bucket=BUCKET)
    ctx.log(f"  uploading {n:,} objects ...")
    _put_all(client, [*tree.referenced, *tree.orphans])
    floor = ctx.run("benchmarks.gc_s3:boto3_list_only", {"endpoint": server.url, "objects": n})
    state = {"complete": True}

    def restore() -> None:
        if not state["complete"]:
            _put_all(client, tree.orphans)
        state["complete"] = False
        ready_file.write_text(str(time.time() + 1.1))

    kwargs = {
        "endpoint": server.url,
        "references": str(references_file),
        "orphans": orphans,
        "ready_file": str(ready_file),
    }
    out = ctx.compare(
        {
            "granite": Job("benchmarks.gc_s3:granite_gc_s3", kwargs),
            "0.1.0": Job("benchmarks.gc_s3:legacy_gc_s3", kwargs, legacy=True),
        },
        before_each=restore,
    )
    return [
        Row(
            scenario,
            "collect time",
            "s",
            False,
            out["granite"].figure("granite_storage", seconds),
            [floor.figure("boto3 listing alone (floor)", seconds, short="listing only")],
            ctx.legacy_figure(out["0.1.0"], seconds),
            [Target(">= 8x 0.1.0", 8.0, against="granite-storage 0.1.0")],
            note="0.1.0 deletes one object per request, granite_storage 1,000 per "
            "DeleteObjects; both must list every object first (the floor)",
        )
    ]
