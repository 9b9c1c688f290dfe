"""Garbage collection with the object ledger: N local objects, 10 of them orphans.

Three collections of the same state, each in a fresh child process:

* **ledger** (``LedgerGarbageCollector.acollect``): finds the 10 orphans in
  the ledger (SQLite, one index range scan), wins them and deletes them;
  it never lists the directory and never reads the N references;
* **listing** (``StorageGarbageCollector.acollect``, the plain mode): lists
  every object and reads every reference from the database;
* **ledger audit** (``LedgerGarbageCollector.aaudit``): the listing run, each
  orphan won through the ledger before it is deleted.

Between runs the orphans' files and their ledger rows (``intent``, as a
process killed before its commit leaves them) are written again.

Plugs into ``benchmarks/__main__.py`` as::

    Scenario("ledger", "GC with the object ledger", "benchmarks.ledger:run",
             ("granite_storage.integrations.sqlalchemy",)),

It uses ``ctx.sizes.gc_objects`` objects (20,000; ``--quick``: 1,000).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._context import Context, Job, memory_mib, seconds
from benchmarks._data import make_object_tree, write_objects
from benchmarks._harness import Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, granite_local_manager

if TYPE_CHECKING:
    from sqlalchemy import MetaData

__all__ = ["ORPHANS", "ledger_audit", "ledger_gc", "listing_gc", "run"]

ORPHANS = 10
PREFIX = "ledger"
_CHECKSUM = "sha256:" + "0" * 64
#: When the orphans' intents were recorded: far older than any grace period.
_LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def _schema() -> tuple[MetaData, Any, Any]:
    """The benchmark's tables: ``bench_doc`` (one ref column) and the ledger."""
    from sqlalchemy import Column, Index, Integer, MetaData, Table

    from granite_storage.integrations.sqlalchemy import ObjectLedger, StoredObjectRefType

    metadata = MetaData()
    docs = Table(
        "bench_doc",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("file_ref", StoredObjectRefType()),
    )
    # The index docs/ledger.md recommends per ref column: the reference check
    # of the ledger's candidates is then an index lookup, not a table scan.
    Index("ix_bench_doc_file_ref_location", docs.c.file_ref["location"].as_string())
    return metadata, docs, ObjectLedger(metadata)


def _check_deleted(deleted: int) -> None:
    if deleted != ORPHANS:
        raise RuntimeError(f"deleted {deleted} orphans, expected {ORPHANS}")


async def _collector(root: str, db: str) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    from granite_storage.integrations.sqlalchemy import LedgerGarbageCollector

    metadata, _, ledger = _schema()
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    manager = granite_local_manager(root, fsync=False, key_prefix=PREFIX)
    return LedgerGarbageCollector(
        manager, ledger, engine, reference_metadata=metadata, min_age=timedelta(hours=1)
    )


async def ledger_gc(timer: Timer, *, root: str, db: str) -> dict[str, float]:
    collector = await _collector(root, db)
    with timer:
        report = await collector.acollect(storage_key=STORAGE_KEY, dry_run=False)
    await collector.bind.dispose()
    _check_deleted(report.deleted)
    return {"scanned": report.scanned, "deleted": report.deleted}


async def ledger_audit(timer: Timer, *, root: str, db: str) -> dict[str, float]:
    collector = await _collector(root, db)
    with timer:
        report = await collector.aaudit(
            storage_key=STORAGE_KEY, dry_run=False, min_age=timedelta(0)
        )
    await collector.bind.dispose()
    _check_deleted(report.deleted)
    return {"scanned": report.scanned, "deleted": report.deleted}


async def listing_gc(timer: Timer, *, root: str, db: str) -> dict[str, float]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from granite_storage.gc import StorageGarbageCollector
    from granite_storage.integrations.sqlalchemy import iter_metadata_storage_refs

    metadata, _, _ = _schema()
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    manager = granite_local_manager(root, fsync=False, key_prefix=PREFIX)
    collector = StorageGarbageCollector(
        manager, lambda: iter_metadata_storage_refs(engine, metadata), min_age=timedelta(0)
    )
    with timer:
        report = await collector.acollect(storage_key=STORAGE_KEY, dry_run=False)
    await engine.dispose()
    _check_deleted(report.deleted)
    return {"scanned": report.scanned, "deleted": report.deleted}


class _Fixture:
    """N objects on disk, their refs in ``bench_doc``, the ledger in SQLite."""

    def __init__(self, directory: Path, objects: int) -> None:
        from sqlalchemy import create_engine, insert

        from granite_storage import StoredObjectRef

        self.root = directory / "root"
        self.db = directory / "ledger.db"
        self.tree = make_object_tree(objects, objects - ORPHANS, prefix=PREFIX)
        write_objects(self.root, [*self.tree.referenced, *self.tree.orphans])
        metadata, docs, ledger = _schema()
        self.engine = create_engine(f"sqlite:///{self.db}")
        self.ledger_table = ledger.table
        metadata.create_all(self.engine)
        refs = [
            {"id": i, "file_ref": StoredObjectRef(STORAGE_KEY, "local", loc, 21, _CHECKSUM)}
            for i, loc in enumerate(self.tree.referenced)
        ]
        live = [self._row(location, "live") for location in self.tree.referenced]
        with self.engine.begin() as conn:
            conn.execute(insert(docs), refs)
            conn.execute(insert(self.ledger_table), live)

    def _row(self, location: str, state: str) -> dict[str, Any]:
        return {
            "location": location, "storage_key": STORAGE_KEY, "backend": "local", "size": 21,
            "checksum": None, "created_at": _LONG_AGO, "updated_at": _LONG_AGO, "state": state,
        }  # fmt: skip

    def restore(self) -> None:
        """The orphans again: their files, and intent rows older than any grace period."""
        from sqlalchemy import delete, insert

        write_objects(self.root, self.tree.orphans)
        table = self.ledger_table
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.location.in_(self.tree.orphans)))
            conn.execute(insert(table), [self._row(loc, "intent") for loc in self.tree.orphans])
        time.sleep(0.05)  # coarse file-system clocks: older than the listing's cutoff

    def kwargs(self) -> dict[str, Any]:
        return {"root": str(self.root), "db": str(self.db)}


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.gc_objects
    scenario = f"GC, {n:,} local objects / {ORPHANS} orphans"
    ctx.log(f"  creating {n:,} objects and their ledger ...")
    fixture = _Fixture(ctx.scratch("ledger"), n)
    mod = "benchmarks.ledger"
    out = ctx.compare(
        {
            "ledger": Job(f"{mod}:ledger_gc", fixture.kwargs()),
            "listing": Job(f"{mod}:listing_gc", fixture.kwargs()),
            "audit": Job(f"{mod}:ledger_audit", fixture.kwargs()),
        },
        before_each=fixture.restore,
    )
    fixture.engine.dispose()
    listing_label = "listing collection (plain mode)"
    audit_label = "ledger audit (listing)"
    return [
        Row(
            scenario,
            "collect time",
            "s",
            False,
            out["ledger"].figure("granite_storage ledger, listing-free", seconds),
            [
                out["listing"].figure(listing_label, seconds, short="listing"),
                out["audit"].figure(audit_label, seconds, short="audit"),
            ],
            # A run's fixed cost (a few SQLite commits) dominates small trees.
            targets=[Target(">= 10x the listing collection", 10.0, against=listing_label)]
            if n >= 10_000
            else [],
            note="the ledger run reads 10 candidate rows; the others list and read every ref",
        ),
        Row(
            scenario,
            "peak RSS growth",
            "MiB",
            False,
            out["ledger"].figure("granite_storage ledger, listing-free", memory_mib, worst=True),
            [
                out["listing"].figure(listing_label, memory_mib, worst=True, short="listing"),
                out["audit"].figure(audit_label, memory_mib, worst=True, short="audit"),
            ],
            show_ratios=False,
        ),
    ]
