"""``amigrate`` from local disk to S3 (moto's server) against a raw copy loop (#19).

The parent stores N small objects and one large one on local disk, with
their refs in a SQLite table (WAL) naming the local backend, and lists
them in a manifest. Each run (a fresh child) starts from that state: the
migration copies the table first and creates its own empty bucket, outside
the measurement, as does the raw loop, which reads each file and hands it to
aioboto3's ``upload_fileobj``, ``concurrency`` at a time. Both then read
every object back (size and sha256 against the manifest); the migration's
child also checks that every ref names the S3 backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._context import (
    Context,
    Job,
    extra,
    memory_mib,
    read_into_page_cache,
    throughput_mib_s,
)
from benchmarks._data import make_source_file, random_block
from benchmarks._harness import MIB, Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY

__all__ = ["run"]

_REGION = "us-east-1"
_PREFIX = "bench"
_TARGET = "s3"
#: Objects read back at once by the checks after the measurement.
_CHECKS_AT_ONCE = 8
RAW_LABEL = "read + aioboto3 upload_fileobj"

#: A manifest: location -> (size, "sha256:<hex>").
Manifest = dict[str, tuple[int, str]]


# -- the parent: the objects, their refs and the manifest ---------------------------


def _seed(root: Path, count: int, size: int, big: int) -> Manifest:
    """``count`` objects of ``size`` bytes (each different) and one of ``big``
    bytes under ``root``, laid out as granite_storage writes them."""
    block = random_block(size)
    manifest: Manifest = {}
    for index in range(count + 1):
        location = f"{_PREFIX}/document/{index}/file/{uuid.uuid4().hex}.bin"
        path = root / location
        path.parent.mkdir(parents=True, exist_ok=True)
        if index == count:
            manifest[location] = (big, make_source_file(path, big))
            continue
        content = (index.to_bytes(8, "little") + block[8:])[:size]
        path.write_bytes(content)
        manifest[location] = (size, f"sha256:{hashlib.sha256(content).hexdigest()}")
    return manifest


def _metadata() -> Any:
    """A ``document`` table with one ``StoredObjectRefType`` column, ``file``."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from granite_storage.integrations.sqlalchemy import StoredObjectRefType

    metadata = MetaData()
    Table(
        "document",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("file", StoredObjectRefType(), nullable=True),
    )
    return metadata


def _make_database(path: Path, manifest: Manifest) -> None:
    """A SQLite database in WAL mode (the refs are rewritten while a cursor
    reads them) with a row per object whose ref names the local backend."""
    from sqlalchemy import create_engine, insert

    from granite_storage import StoredObjectRef

    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    metadata = _metadata()
    engine = create_engine(f"sqlite:///{path}")
    rows = [
        {"id": index, "file": StoredObjectRef(STORAGE_KEY, "local", location, size, checksum)}
        for index, (location, (size, checksum)) in enumerate(manifest.items())
    ]
    with engine.begin() as connection:
        metadata.create_all(connection)
        connection.execute(insert(metadata.tables["document"]), rows)
    engine.dispose()
    with sqlite3.connect(path) as connection:  # everything in the file the children copy
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _read_manifest(path: str) -> Manifest:
    with open(path, encoding="utf-8") as file:
        return {location: (size, checksum) for location, size, checksum in json.load(file)}


# -- the children's checks ----------------------------------------------------------


async def _run_workers(concurrency: int, work: Any, items: Iterator[str]) -> None:
    """``concurrency`` tasks that ``await work(item)`` until ``items`` is exhausted."""

    async def worker() -> None:
        for item in items:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _alist(client: Any, bucket: str) -> dict[str, int]:
    found: dict[str, int] = {}
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update((item["Key"], item["Size"]) for item in page.get("Contents", []))
    return found


async def _acheck_bucket(client: Any, bucket: str, manifest: Manifest) -> None:
    """Every object of ``manifest`` is in ``bucket`` (and nothing else), with
    its size and sha256, read back in full."""
    listed = await _alist(client, bucket)
    if listed != {location: size for location, (size, _) in manifest.items()}:
        missing = sorted(set(manifest) - set(listed))[:3]
        raise RuntimeError(
            f"bucket {bucket} holds {len(listed)} objects, expected {len(manifest)} "
            f"(missing e.g. {missing}, or sizes differ)"
        )

    async def check(location: str) -> None:
        response = await client.get_object(Bucket=bucket, Key=location)
        digest = hashlib.sha256()
        body = response["Body"]
        try:
            while chunk := await body.read(MIB):
                digest.update(chunk)
        finally:
            body.close()
        if f"sha256:{digest.hexdigest()}" != manifest[location][1]:
            raise RuntimeError(f"{location} in {bucket} does not have the sha256 of its source")

    await _run_workers(_CHECKS_AT_ONCE, check, iter(list(manifest)))


async def _aremove_bucket(client: Any, bucket: str) -> None:
    keys = [{"Key": key} for key in await _alist(client, bucket)]
    for start in range(0, len(keys), 1000):
        await client.delete_objects(
            Bucket=bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
        )
    await client.delete_bucket(Bucket=bucket)


async def _acheck_refs(engine: Any, metadata: Any, manifest: Manifest) -> None:
    """Every row's ref names the S3 backend, with its location, size and checksum unchanged."""
    from sqlalchemy import select

    async with engine.connect() as connection:
        result = await connection.execute(select(metadata.tables["document"].c.file))
        refs = [row[0] for row in result]
    moved = {ref.location: (ref.size, ref.checksum) for ref in refs if ref.backend == _TARGET}
    if len(refs) != len(manifest) or moved != manifest:
        raise RuntimeError(
            f"{len(moved)} of {len(refs)} refs name {_TARGET!r} with their object's "
            f"size and checksum; expected all {len(manifest)}"
        )


# -- the workloads ---------------------------------------------------------------------


async def granite_migrate(
    timer: Timer, *, endpoint: str, root: str, database: str, manifest: str, concurrency: int
) -> dict[str, float]:
    """``amigrate(..., concurrency=concurrency)`` of every ref in a copy of
    ``database`` to a new bucket, verifying each sha256 and rewriting each ref."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from granite_storage import StorageManager, StoragePolicy
    from granite_storage.backends.local import LocalStorageBackend
    from granite_storage.backends.s3 import S3StorageBackend
    from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs, ref_rewriter
    from granite_storage.migrate import amigrate

    expected = _read_manifest(manifest)
    bucket = f"migrate-{uuid.uuid4().hex[:12]}"
    copy = Path(database).with_name(f"{bucket}.db")
    shutil.copyfile(database, copy)
    metadata = _metadata()
    engine = create_async_engine(f"sqlite+aiosqlite:///{copy}")
    backend = S3StorageBackend(
        bucket=bucket, client_kwargs={"endpoint_url": endpoint, "region_name": _REGION}
    )
    manager = StorageManager(
        backends={"local": LocalStorageBackend(root, fsync=False), _TARGET: backend},
        policies={STORAGE_KEY: StoragePolicy(STORAGE_KEY, "local", key_prefix=_PREFIX)},
    )
    async with manager:
        client = await backend.aget_client()  # opened outside the measurement, as the raw one
        await client.create_bucket(Bucket=bucket)
        async with engine.connect():  # the pool's connection, opened once
            pass
        with timer:
            report = await amigrate(
                manager,
                lambda: iter_metadata_storage_refs(engine, metadata),
                ref_rewriter(engine, metadata),
                storage_key=STORAGE_KEY,
                to=_TARGET,
                concurrency=concurrency,
            )
        count = len(expected)
        if not report.ok or report.copied != count or report.rewritten != count:
            raise RuntimeError(f"expected {count} objects copied and refs rewritten: {report}")
        await _acheck_bucket(client, bucket, expected)
        await _acheck_refs(engine, metadata, expected)
        await _aremove_bucket(client, bucket)
    await engine.dispose()
    copy.unlink()
    return {
        "part_size": backend.part_size,
        "max_concurrency": backend.max_concurrency,
    }


async def raw_upload_fileobj(
    timer: Timer, *, endpoint: str, root: str, manifest: str, concurrency: int
) -> None:
    """Each file opened and handed to aioboto3's ``upload_fileobj`` (its
    default transfer configuration), from ``concurrency`` tasks."""
    import aioboto3

    expected = _read_manifest(manifest)
    bucket = f"raw-{uuid.uuid4().hex[:12]}"
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=endpoint, region_name=_REGION) as client:
        await client.create_bucket(Bucket=bucket)

        async def upload(location: str) -> None:
            # Opened on the loop, as the simplest copy loop does (aioboto3 then
            # reads the sync file on the loop as well).
            with open(os.path.join(root, location), "rb") as file:  # noqa: ASYNC230
                await client.upload_fileobj(file, bucket, location)

        with timer:
            await _run_workers(concurrency, upload, iter(list(expected)))
        await _acheck_bucket(client, bucket, expected)
        await _aremove_bucket(client, bucket)


# -- the scenario ----------------------------------------------------------------------


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    count, kib, big_mib = sizes.migrate_objects, sizes.migrate_kib, sizes.migrate_big_mib
    concurrency = sizes.migrate_concurrency
    scenario = (
        f"migrate {count:,} x {kib} KiB + 1 x {big_mib} MiB, local disk to S3 (moto), "
        f"concurrency {concurrency}"
    )
    data = ctx.scratch("migrate")
    root = data / "root"
    manifest = _seed(root, count, kib * 1024, big_mib * MIB)
    manifest_file = data / "manifest.json"
    manifest_file.write_text(
        json.dumps([[loc, size, checksum] for loc, (size, checksum) in manifest.items()]),
        encoding="utf-8",
    )
    database = data / "refs.db"
    _make_database(database, manifest)
    kwargs = {"endpoint": ctx.moto().url, "root": str(root), "manifest": str(manifest_file),
              "concurrency": concurrency}  # fmt: skip
    sources = [root / location for location in manifest]
    mod = "benchmarks.migrate_local_to_s3"
    out = ctx.compare(
        {
            "granite": Job(f"{mod}:granite_migrate", {**kwargs, "database": str(database)}),
            "raw": Job(f"{mod}:raw_upload_fileobj", kwargs),
        },
        before_each=lambda: read_into_page_cache(*sources),
    )
    granite, raw = out["granite"], out["raw"]
    raw_label = f"{RAW_LABEL}, {concurrency} at a time"
    part = granite.figure("", extra("part_size")).value or 8 * MIB
    in_flight = granite.figure("", extra("max_concurrency")).value or 4
    bound = concurrency * part * (in_flight + 1) / MIB + 16
    total = sum(size for size, _ in manifest.values())
    speed = throughput_mib_s(total)
    cpu = extra("cpu_seconds")
    return [
        Row(scenario, "throughput", "MiB/s", True, granite.figure("granite_storage", speed),
            [raw.figure(raw_label, speed, short="raw loop")],
            targets=[Target(">= 0.9x raw loop", 0.9, against=raw_label)],
            note=f"{count + 1:,} objects, {total / MIB:,.0f} MiB; the migration also verifies "
                 "each sha256 and rewrites each ref in SQLite"),
        Row(scenario, "CPU seconds", "s", False, granite.figure("granite_storage", cpu),
            [raw.figure(raw_label, cpu, short="raw loop")],
            note="user+system CPU of the copying process, all threads (moto's server not "
                 "counted)"),
        Row(scenario, "peak RSS growth", "MiB", False,
            granite.figure("granite_storage", memory_mib, worst=True),
            [raw.figure(raw_label, memory_mib, worst=True, short="raw loop")],
            targets=[Target(f"<= {bound:.0f} MiB (concurrency x part x (parts in flight + 1) "
                            "+ 16)", bound)],
            show_ratios=False),
    ]  # fmt: skip
