"""The object ledger's collector: listing-free runs from the ledger, and a listing audit."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage.contracts import BatchDeleteResult
from granite_storage.errors import ConfigurationError, LockUnavailableError
from granite_storage.gc import (
    DEFAULT_LEFTOVER_MIN_AGE,
    DEFAULT_MIN_AGE,
    GarbageCollectionReport,
    ReferenceSource,
)
from granite_storage.gc._collector import BaseCollector, check_progress_every, check_separable
from granite_storage.gc._deletions import DeleteBatch, adelete_counted, stop_at_cap
from granite_storage.gc._report import ORPHAN_SAMPLE_SIZE, GarbageCollectionProgress, Phase
from granite_storage.gc._run import (
    CollectionRun,
    Plan,
    ProgressCallback,
    RunOptions,
    acleanup_leftovers,
)
from granite_storage.integrations.sqlalchemy._db import arun_on_connection
from granite_storage.integrations.sqlalchemy._ledger import ObjectLedger
from granite_storage.integrations.sqlalchemy._ledger_moves import sort_sources
from granite_storage.integrations.sqlalchemy._ledger_sweep import (
    Candidates,
    Won,
    count_candidates,
    forget,
    intents,
    sample_candidates,
    win_candidates,
    win_locations,
)
from granite_storage.integrations.sqlalchemy.refs import iter_metadata_storage_refs
from granite_storage.integrations.sqlalchemy.types import stored_ref_columns
from granite_storage.locations import is_under_prefix
from granite_storage.manager import StorageManager

logger = logging.getLogger("granite_storage.gc")


class LedgerGarbageCollector(BaseCollector):
    """Deletes the orphans of a policy strictly, finding them in the ledger.

    :meth:`acollect` never lists the backend. Its candidates come from the
    ledger (an index range scan): ``intent`` rows (an upload whose transaction
    rolled back, or whose process died), ``released`` rows (a ref replaced,
    cleared or deleted) and ``deleting`` rows (a run that stopped half-way),
    last changed before ``now - min_age``, that name the collected backend
    (its ``backend_name``, or its key once ``migrate`` moved them; on the
    policy's own backend, also a backend no longer registered, such as the
    ``MirrorBackend`` of a finished move). Each batch is *won* in one short
    transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, READ COMMITTED;
    SQLite: ``BEGIN IMMEDIATE``), checked against every ref column of the
    application's ``MetaData``, and committed as ``deleting``; then the
    objects are deleted (``adelete_many``), then their rows. A row that an
    open transaction holds is skipped whatever its age: a slow transaction
    never loses its upload. A run costs O(candidates) queries and requests.

    Its report counts: ``scanned``, the candidate rows; ``skipped_too_young``,
    those changed within ``min_age``; ``eligible``, the older ones, each
    ``deleted``, ``failed`` or ``skipped_in_use`` (held by an open
    transaction, or still referenced: those are also counted in
    ``referenced`` and go back to ``live``). Besides the errors every
    collector raises, it raises a ``ConfigurationError`` for a database other
    than PostgreSQL and SQLite, and ``sqlalchemy.exc.SQLAlchemyError`` if the
    database fails; rows already won stay ``deleting`` and the next run
    finishes them.

    :meth:`aaudit` is the periodic listing audit: the plain collector's run
    (listing plus every reference), except that each orphan is won through the
    ledger before it is deleted. It also catches objects the ledger never knew
    (written outside the library, or before the ledger existed).

    ``acollect(backend_key=OLD, delete_source=True)``, the last step of a
    move, is the exception that lists: the plain collector's run over ``OLD``
    (same semantics and refusals, ``UnsafeCollectionError`` included), each
    batch sorted in the ledger under its locks before anything is deleted. A
    moved copy goes and its row is left as it is; a ref naming a
    ``backend_name`` or a row an open transaction holds keeps the object
    (``skipped_in_use``); an unreferenced moved object (its row names
    another backend) loses its copy on ``OLD`` and keeps its row, for the
    collection of that backend; other unreferenced objects are won and
    forgotten as :meth:`aaudit` does. See "Moving between backends".

    See ``docs/ledger.md`` for the protocol and why it is safe.

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
        always does it). An incomplete upload whose intent the ledger holds
        is never removed.
    :param leftover_min_age: how long an incomplete upload must be idle before
        it is removed (default 24 h).
    :param progress: called with a ``GarbageCollectionProgress`` at each phase
        change, after each batch won in the ledger, and, in a listing run
        (:meth:`aaudit`, the last step of a move), every ``progress_every``
        references or objects; it runs on the event loop and must return quickly.
    :param clock: returns the current time, timezone-aware.
    :raises ValueError: for a negative ``min_age`` or ``max_deletions``, or a
        ``batch_size`` or ``progress_every`` below 1.
    :raises ConfigurationError: if ``reference_metadata`` has no ref column.
    """

    #: Candidates come from the ledger's rows of the policy, never from a listing.
    _lists_backend = False

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
        leftover_min_age: timedelta = DEFAULT_LEFTOVER_MIN_AGE,
        progress: ProgressCallback | None = None,
        progress_every: int = 10_000,
    ) -> None:
        super().__init__(
            manager, min_age, max_deletions, batch_size, cleanup_leftovers, clock, leftover_min_age
        )
        self.progress = progress
        self.progress_every = check_progress_every(progress_every)
        if not stored_ref_columns(reference_metadata):
            raise ConfigurationError(
                "reference_metadata has no StoredObjectRefType column, so the collector could "
                "not tell a referenced object from an orphan: pass the MetaData of your models "
                "(usually Base.metadata)"
            )
        self.ledger = ledger
        self.bind = bind
        self.reference_metadata = reference_metadata

    # -- listing-free ------------------------------------------------------------

    async def _arun(self, plan: Plan) -> GarbageCollectionReport:
        """Collect the orphans of one policy from the ledger, without listing
        (or, with ``delete_source``, the sources of a move: see below)."""
        if plan.released_backends:
            return await self._adelete_sources(plan)
        report, cap = plan.new_report(), plan.max_deletions
        started = time.monotonic()
        notify = functools.partial(self._notify, report, started)
        table, wanted = self.ledger.table, self._candidates(plan)
        old, young = await arun_on_connection(
            self.bind, lambda c: count_candidates(c, table, wanted)
        )
        report.scanned, report.skipped_too_young = old + young, young
        notify("sweep")
        if plan.dry_run:
            report.eligible = old if cap is None else min(old, cap)
            if cap is not None and old > cap:
                stop_at_cap(report, cap)
            report.orphan_sample = await arun_on_connection(
                self.bind, lambda c: sample_candidates(c, table, wanted, ORPHAN_SAMPLE_SIZE)
            )
        else:
            await self._asweep(report, plan, wanted, candidates=old, notify=notify)
        report.orphaned = report.skipped_too_young + report.eligible
        if self.cleanup_leftovers:
            notify("leftovers")
            in_use = functools.partial(self._aintents, plan.leftover_cutoff)
            await acleanup_leftovers(
                report, plan.backend, plan.policy, plan.leftover_cutoff, in_use
            )
        report.duration = time.monotonic() - started
        notify("done")
        return report

    def _notify(self, report: GarbageCollectionReport, started: float, phase: Phase) -> None:
        """Tell :attr:`progress` where a listing-free run is (no references are
        read; until the sweep ends, every candidate counts as an orphan)."""
        if self.progress is not None:
            swept = phase in ("leftovers", "done")
            self.progress(
                GarbageCollectionProgress(
                    storage_key=report.storage_key, phase=phase, references_read=0,
                    scanned=report.scanned, orphaned=report.orphaned if swept else report.scanned,
                    deleted=report.deleted, failed=report.failed,
                    elapsed=time.monotonic() - started,
                )
            )  # fmt: skip

    async def _aintents(self, reserved_cutoff: datetime, locations: list[str]) -> list[str]:
        """Which of ``locations`` the ledger holds an intent or a live
        reservation for: their incomplete uploads are never removed."""
        table = self.ledger.table
        return await arun_on_connection(
            self.bind, lambda c: intents(c, table, locations, reserved_cutoff)
        )

    async def _asweep(
        self,
        report: GarbageCollectionReport,
        plan: Plan,
        wanted: Candidates,
        *,
        candidates: int,
        notify: Callable[[Phase], None],
    ) -> None:
        """Win, check and delete batches of the ``wanted`` rows until none is left to win."""
        table, metadata, cap = self.ledger.table, self.reference_metadata, plan.max_deletions

        def win(conn: Connection, limit: int) -> Won:
            return win_candidates(
                conn, table, metadata, wanted,
                stamp=plan.now, limit=limit, lock_wait=self.ledger.lock_timeout,
            )  # fmt: skip

        won_total = 0
        while True:
            limit = self.batch_size
            if cap is not None:
                limit = min(limit, cap - report.deleted - report.failed)
                if limit <= 0:
                    stop_at_cap(report, cap)
                    break
            try:
                won = await arun_on_connection(self.bind, functools.partial(win, limit=limit))
            except LockUnavailableError as exc:
                logger.info("ledger collection of %r stopped: %s", plan.policy.storage_key, exc)
                break
            taken = len(won.deleting) + len(won.referenced)
            won_total += taken
            report.referenced += len(won.referenced)
            await self._adelete(report, plan, won.deleting)
            notify("sweep")
            if taken < limit:
                break  # fewer than asked for: nothing else is free to win
        report.skipped_in_use = max(0, candidates - won_total) + report.referenced
        if report.stopped_early:
            report.skipped_in_use = report.referenced
        report.eligible = report.deleted + report.failed + report.skipped_in_use

    async def _adelete(
        self, report: GarbageCollectionReport, plan: Plan, sizes: dict[str, int | None]
    ) -> None:
        doomed: dict[str, int | None] = {}
        for location, size in sizes.items():
            if is_under_prefix(location, plan.policy.key_prefix):
                doomed[location] = size
            else:  # never act outside the policy's prefix, whatever the ledger says
                report.add_failure(location, "outside the policy's key prefix; left 'deleting'")
        if not doomed:
            return
        # A failed batch is counted, not raised: its rows stay 'deleting' for next time.
        deleted = await adelete_counted(report, plan.backend.adelete_many, doomed)
        if deleted:
            await self._aforget(deleted)

    async def _aforget(self, deleted: list[str]) -> None:
        """Delete the ledger rows of objects that are gone."""
        table = self.ledger.table
        await arun_on_connection(self.bind, lambda c: forget(c, table, deleted))

    def _candidates(self, plan: Plan) -> Candidates:
        """The rows a listing-free collection of ``plan`` may take: on the
        policy's own backend, those naming a backend no longer registered too."""
        registered = None
        if plan.backend_key == plan.policy.backend_key:
            backends = self.manager.backends
            registered = frozenset({*backends, *(b.backend_name for b in backends.values())})
        return Candidates(
            plan.policy.storage_key, _row_backends(plan), plan.cutoff, plan.leftover_cutoff,
            registered,
        )  # fmt: skip

    # -- the last step of a move ---------------------------------------------------

    async def _adelete_sources(self, plan: Plan) -> GarbageCollectionReport:
        """``acollect(backend_key=OLD, delete_source=True)``: the plain collector's
        run over ``OLD`` (it lists), each batch sorted in the ledger first (see
        ``_ledger_moves``)."""
        check_separable(self.manager, plan.policy, plan.backend)
        return await self._alisting_run(plan, None, functools.partial(self._adelete_moved, plan))

    async def _adelete_moved(self, plan: Plan, locations: list[str]) -> BatchDeleteResult:
        """Delete the moved copies of ``locations`` from the old backend (their
        rows untouched) and the other unreferenced ones as the audit does."""
        table, metadata = self.ledger.table, self.reference_metadata
        released, old = plan.released_backends, _row_backends(plan)
        try:
            sources = await arun_on_connection(
                self.bind,
                lambda c: sort_sources(
                    c, table, metadata, locations=locations, released=released, old=old,
                    lock_wait=self.ledger.lock_timeout,
                ),
            )  # fmt: skip
        except LockUnavailableError:
            return BatchDeleteResult()  # all kept: a transaction holds the database
        moved = BatchDeleteResult()
        if sources.moved:
            moved = await plan.backend.adelete_many(sources.moved)
        orphans = BatchDeleteResult()
        if sources.unreferenced:
            orphans = await self._awin_and_delete(plan, sources.unreferenced)
        return BatchDeleteResult(
            deleted=[*moved.deleted, *orphans.deleted], failed={**moved.failed, **orphans.failed}
        )

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
        plan = self._plan(storage_key, dry_run, min_age, max_deletions, lists_backend=True)
        audit = await self._alisting_run(
            plan, iter_references, functools.partial(self._awin_and_delete, plan)
        )
        logger.info("%s", audit)
        return audit

    async def _alisting_run(
        self, plan: Plan, iter_references: ReferenceSource | None, delete_batch: DeleteBatch
    ) -> GarbageCollectionReport:
        """The plain collector's run over ``plan``, deleting through ``delete_batch``."""
        bind, metadata = self.bind, self.reference_metadata
        source = iter_references or (lambda: iter_metadata_storage_refs(bind, metadata))
        options = RunOptions(
            iter_references=source,
            batch_size=self.batch_size,
            delete_concurrency=1,
            delete_batch=delete_batch,
            in_use=functools.partial(self._aintents, plan.leftover_cutoff),
            progress=self.progress,
            progress_every=self.progress_every,
        )
        return await CollectionRun(options, plan).arun()

    async def _awin_and_delete(self, plan: Plan, locations: list[str]) -> BatchDeleteResult:
        """Win ``locations`` in the ledger, delete those won from the plan's
        backend, then forget their rows (the audit's deletion)."""
        backend, table = plan.backend, self.ledger.table
        wanted = dict.fromkeys(locations, (plan.policy.storage_key, backend.backend_name))
        try:
            won = await arun_on_connection(
                self.bind,
                lambda c: win_locations(
                    c,
                    table,
                    self.reference_metadata,
                    locations=wanted,
                    stamp=plan.now,
                    lock_wait=self.ledger.lock_timeout,
                    reserved_cutoff=plan.leftover_cutoff,
                ),
            )
        except LockUnavailableError:
            return BatchDeleteResult()  # all kept: a transaction holds the database
        if not won.deleting:
            return BatchDeleteResult()
        result = await backend.adelete_many(list(won.deleting))
        if result.deleted:
            await self._aforget(result.deleted)
        return result


def _row_backends(plan: Plan) -> frozenset[str]:
    """What the ledger rows of objects on the plan's backend name: its
    ``backend_name`` (written there) or its key (moved there by ``migrate``)."""
    return frozenset({plan.backend.backend_name, plan.backend_key})
