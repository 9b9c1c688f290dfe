"""Strict garbage collection with the object ledger: listing-free runs, and a
listing audit.

:meth:`LedgerGarbageCollector.acollect` never lists the backend. Its
candidates come from the ledger (an index range scan): ``intent`` rows (an
upload whose transaction rolled back, or whose process died), ``released``
rows (a ref replaced, cleared or deleted) and ``deleting`` rows (a run that
stopped half-way), last changed before ``now - min_age``. Each batch is *won*
in one short transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, READ
COMMITTED; SQLite: ``BEGIN IMMEDIATE``), checked against every ref column of
the application's ``MetaData``, and committed as ``deleting``; then the
objects are deleted (``adelete_many``), then their rows. A row that an open
transaction holds is skipped whatever its age: a slow transaction never loses
its upload. A run costs O(candidates) queries and requests.

:meth:`LedgerGarbageCollector.aaudit` is the periodic listing audit: the
plain collector's run (listing plus every reference), except that each orphan
is won through the ledger before it is deleted. It also catches objects the
ledger never knew (written outside the library, or before the ledger existed).

See ``docs/ledger.md`` for the protocol and why it is safe.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage._gc_refs import ReferenceSource
from granite_storage._gc_report import ORPHAN_SAMPLE_SIZE, GarbageCollectionReport, cap_reason
from granite_storage._gc_run import CollectionRun, RunOptions
from granite_storage._util import as_utc
from granite_storage.contracts import BatchDeleteResult, StorageBackend
from granite_storage.errors import ConfigurationError
from granite_storage.gc import (
    DEFAULT_MIN_AGE,
    check_max_deletions,
    check_min_age,
    check_separable,
)
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger import ObjectLedger
from granite_storage.integrations.sqlalchemy._ledger_sweep import (
    LockUnavailableError,
    Won,
    count_candidates,
    forget,
    sample_candidates,
    win_candidates,
    win_locations,
)
from granite_storage.integrations.sqlalchemy.refs import iter_metadata_storage_refs
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns
from granite_storage.locations import is_under_prefix
from granite_storage.manager import StorageManager
from granite_storage.policy import StoragePolicy

__all__ = ["LedgerGarbageCollector"]

logger = logging.getLogger("granite_storage.gc")


class LedgerGarbageCollector:
    """Deletes the orphans of a policy strictly, finding them in the ledger.

    :param manager: the manager whose policies and backends are collected.
    :param ledger: the ledger the models were configured with.
    :param bind: an engine on the application's database (the collector takes
        connections of its own from it).
    :param reference_metadata: the ``MetaData`` of every table that holds
        refs (usually ``Base.metadata``): a won object that any
        ``StoredObjectRefType`` column references is kept. Give each ref
        column an index on its location (``docs/ledger.md``) or this check
        scans the tables.
    :param min_age: the grace period. It protects *availability*, not data:
        an upload whose intent is older than this and not yet claimed fails
        with ``LedgerConflictError``, and released objects stay readable this
        long after their release. ``timedelta(0)`` is allowed.
    :param max_deletions: stop a run after this many deletions; ``None``: no cap.
    :param batch_size: rows won per transaction (and objects per ``adelete_many``).
    :param cleanup_leftovers: let :meth:`acollect` remove stale temporary files
        and multipart uploads too (this lists them: off by default; the audit
        always does it).
    :param clock: returns the current time, timezone-aware.
    :raises ValueError: for a negative ``min_age`` or ``max_deletions``, or a
        ``batch_size`` below 1.
    :raises ConfigurationError: if ``reference_metadata`` has no ref column.
    """

    def __init__(
        self,
        manager: StorageManager,
        ledger: ObjectLedger,
        bind: AsyncEngine | Engine,
        *,
        reference_metadata: MetaData,
        min_age: timedelta = DEFAULT_MIN_AGE,
        max_deletions: int | None = None,
        batch_size: int = 500,
        cleanup_leftovers: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not stored_ref_columns(reference_metadata):
            raise ConfigurationError(
                "reference_metadata has no StoredObjectRefType column, so the collector could "
                "not tell a referenced object from an orphan: pass the MetaData of your models "
                "(usually Base.metadata)"
            )
        self.manager = manager
        self.ledger = ledger
        self.bind = bind
        self.reference_metadata = reference_metadata
        self.min_age = check_min_age(min_age)
        self.max_deletions = check_max_deletions(max_deletions)
        self.batch_size = batch_size
        self.cleanup_leftovers = cleanup_leftovers
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- listing-free ------------------------------------------------------------

    async def acollect(
        self,
        *,
        storage_key: str,
        dry_run: bool = True,
        min_age: timedelta | None = None,
        max_deletions: int | None = None,
    ) -> GarbageCollectionReport:
        """Collect the orphans of one policy from the ledger, without listing.

        Report fields: ``scanned``, the candidate rows (intent, released or
        deleting); ``skipped_too_young``, those changed within ``min_age``;
        ``eligible``, the older ones, each ``deleted``, ``failed`` or
        ``skipped_in_use`` (held by an open transaction, or still referenced:
        those are also counted in ``referenced`` and go back to ``live``).

        :raises StorageError: (a ``ConfigurationError``) for an unknown
            storage key, or a database other than PostgreSQL and SQLite.
        :raises ValueError: if the clock returns a naive datetime.
        :raises sqlalchemy.exc.SQLAlchemyError: if the database fails; rows
            already won stay ``deleting`` and the next run finishes them.
        """
        policy = self.manager.get_policy(storage_key)
        backend = self.manager.get_backend_for_policy(policy)
        report, now = self._new_report(policy, dry_run, min_age)
        cap = check_max_deletions(self.max_deletions if max_deletions is None else max_deletions)
        started = time.monotonic()
        cutoff = now - report.min_age
        table, name = self.ledger.table, backend.backend_name
        old, young = await arun_on_connection(
            self.bind,
            lambda c: count_candidates(
                c, table, storage_key=storage_key, backend=name, cutoff=cutoff
            ),
        )
        report.scanned, report.skipped_too_young = old + young, young
        if dry_run:
            report.eligible = old if cap is None else min(old, cap)
            if cap is not None and old > cap:
                report.stopped_early, report.stop_reason = True, cap_reason(cap)
            report.orphan_sample = await arun_on_connection(
                self.bind,
                lambda c: sample_candidates(
                    c,
                    table,
                    storage_key=storage_key,
                    backend=name,
                    cutoff=cutoff,
                    limit=ORPHAN_SAMPLE_SIZE,
                ),
            )
        else:
            await self._asweep(report, policy, backend, now=now, cap=cap, candidates=old)
        report.orphaned = report.skipped_too_young + report.eligible
        report.duration = time.monotonic() - started
        logger.info("%s", report)
        return report

    async def _asweep(
        self,
        report: GarbageCollectionReport,
        policy: StoragePolicy,
        backend: StorageBackend,
        *,
        now: datetime,
        cap: int | None,
        candidates: int,
    ) -> None:
        """Win, check and delete batches until no candidate is left to win."""
        table, metadata = self.ledger.table, self.reference_metadata
        cutoff = now - report.min_age

        def win(conn: Connection, limit: int) -> Won:
            return win_candidates(
                conn,
                table,
                metadata,
                storage_key=policy.storage_key,
                backend=backend.backend_name,
                cutoff=cutoff,
                stamp=now,
                limit=limit,
                lock_wait=self.ledger.lock_timeout,
            )

        won_total = 0
        while True:
            limit = self.batch_size
            if cap is not None:
                limit = min(limit, cap - report.deleted - report.failed)
                if limit <= 0:
                    report.stopped_early, report.stop_reason = True, cap_reason(cap)
                    break
            try:
                won = await arun_on_connection(self.bind, functools.partial(win, limit=limit))
            except LockUnavailableError as exc:
                logger.info("ledger collection of %r stopped: %s", policy.storage_key, exc)
                break
            taken = len(won.deleting) + len(won.referenced)
            won_total += taken
            report.referenced += len(won.referenced)
            await self._adelete(report, policy, backend, won.deleting)
            if taken < limit:
                break  # fewer than asked for: nothing else is free to win
        report.skipped_in_use = max(0, candidates - won_total) + report.referenced
        if report.stopped_early:
            report.skipped_in_use = report.referenced
        report.eligible = report.deleted + report.failed + report.skipped_in_use

    async def _adelete(
        self,
        report: GarbageCollectionReport,
        policy: StoragePolicy,
        backend: StorageBackend,
        sizes: dict[str, int | None],
    ) -> None:
        doomed = []
        for location in sizes:
            if is_under_prefix(location, policy.key_prefix):
                doomed.append(location)
            else:  # never act outside the policy's prefix, whatever the ledger says
                report.add_failure(location, "outside the policy's key prefix; left 'deleting'")
        if not doomed:
            return
        try:
            result = await backend.adelete_many(doomed)
        except Exception as exc:  # counted, not raised: the rows stay 'deleting' for next time
            for location in doomed:
                report.add_failure(location, f"{type(exc).__name__}: {exc}")
            logger.warning("deleting a batch of %d objects failed: %s", len(doomed), exc)
            return
        for location in result.deleted:
            report.deleted += 1
            report.bytes_freed += sizes.get(location) or 0
        for location, reason in result.failed.items():
            report.add_failure(location, reason)
        if result.deleted:
            table = self.ledger.table
            await arun_on_connection(self.bind, lambda c: forget(c, table, result.deleted))

    # -- the listing audit ---------------------------------------------------------

    async def aaudit(
        self,
        *,
        storage_key: str,
        dry_run: bool = True,
        min_age: timedelta | None = None,
        max_deletions: int | None = None,
        iter_references: ReferenceSource | None = None,
    ) -> GarbageCollectionReport:
        """List the policy's prefix and delete the objects no reference points
        at, each won through the ledger first (``skipped_in_use`` counts the
        ones an open transaction holds or a reference committed meanwhile
        protects). Catches objects the ledger does not know.

        :param iter_references: the reference source (see
            ``StorageGarbageCollector``); default: every ref column of
            ``reference_metadata``, read on a connection of ``bind``.
        :raises UnsafeCollectionError: if another policy shares the backend and
            no key prefix separates the two.
        :raises StorageError: for an unknown storage key, or a listing failure
            (``BackendError``).
        """
        policy = self.manager.get_policy(storage_key)
        backend = self.manager.get_backend_for_policy(policy)
        check_separable(self.manager, policy, backend)
        report, now = self._new_report(policy, dry_run, min_age)
        bind, metadata, table = self.bind, self.reference_metadata, self.ledger.table
        source = iter_references or (lambda: iter_metadata_storage_refs(bind, metadata))

        async def delete_batch(locations: list[str]) -> BatchDeleteResult:
            wanted = dict.fromkeys(locations, (storage_key, backend.backend_name))
            try:
                won = await arun_on_connection(
                    bind,
                    lambda c: win_locations(
                        c,
                        table,
                        metadata,
                        locations=wanted,
                        stamp=now,
                        lock_wait=self.ledger.lock_timeout,
                    ),
                )
            except LockUnavailableError:
                return BatchDeleteResult()  # all kept: a transaction holds the database
            if not won.deleting:
                return BatchDeleteResult()
            result = await backend.adelete_many(list(won.deleting))
            if result.deleted:
                await arun_on_connection(bind, lambda c: forget(c, table, result.deleted))
            return result

        cap = check_max_deletions(self.max_deletions if max_deletions is None else max_deletions)
        run = CollectionRun(
            RunOptions(
                iter_references=source,
                batch_size=self.batch_size,
                delete_concurrency=1,
                listing_buffer=10_000,
                cleanup_leftovers=True,
                progress=None,
                progress_every=10_000,
                clock=lambda: now,
                delete_batch=delete_batch,
            ),
            policy=policy,
            backend=backend,
            dry_run=dry_run,
            min_age=report.min_age,
            max_deletions=cap,
        )
        audit = await run.arun()
        logger.info("%s", audit)
        return audit

    # -- helpers -----------------------------------------------------------------------

    def _new_report(
        self, policy: StoragePolicy, dry_run: bool, min_age: timedelta | None
    ) -> tuple[GarbageCollectionReport, datetime]:
        """A report with the run's grace period and cutoff, and the run's start."""
        grace = check_min_age(self.min_age if min_age is None else min_age)
        now = as_utc(self.clock())
        report = GarbageCollectionReport(
            storage_key=policy.storage_key,
            key_prefix=policy.key_prefix,
            dry_run=dry_run,
            min_age=grace,
            cutoff=now - grace,
        )
        return report, now
