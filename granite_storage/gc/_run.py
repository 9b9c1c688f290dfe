"""One garbage collection run: the tasks and the state they share.

See :mod:`granite_storage.gc` for the design; this module holds its moving parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from granite_storage._concurrency import aclose_quietly
from granite_storage.contracts import InUse, ObjectInfo, StorageBackend
from granite_storage.gc._deletions import DeleteBatch, adelete_counted, stop_at_cap
from granite_storage.gc._refs import ReferenceIndex, ReferenceSource, aread_references
from granite_storage.gc._report import (
    ORPHAN_SAMPLE_SIZE,
    GarbageCollectionProgress,
    GarbageCollectionReport,
    Phase,
)
from granite_storage.locations import is_under_prefix
from granite_storage.policy import StoragePolicy

logger = logging.getLogger("granite_storage.gc")

_LEFTOVERS = "(leftovers)"
#: Listed objects passed through the stream at once.
LISTING_CHUNK = 500

ProgressCallback = Callable[[GarbageCollectionProgress], object]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one collection is about, fixed before it reads anything."""

    policy: StoragePolicy
    backend: StorageBackend
    #: The key ``backend`` is registered under (the policy's, or ``backend_key=``).
    backend_key: str
    dry_run: bool
    min_age: timedelta
    max_deletions: int | None
    #: The run's start (aware, UTC); the age cutoff is ``now - min_age``.
    now: datetime
    #: How long an incomplete upload must have been idle to be removed.
    leftover_min_age: timedelta = timedelta(hours=24)
    #: Backend keys whose refs protect nothing on ``backend`` (``delete_source``).
    released_backends: frozenset[str] = frozenset()

    @property
    def cutoff(self) -> datetime:
        return self.now - self.min_age

    @property
    def leftover_cutoff(self) -> datetime:
        """Incomplete uploads idle since before this are removed: a part or
        chunk received within ``min_age`` or ``leftover_min_age`` keeps one."""
        return self.now - max(self.min_age, self.leftover_min_age)

    def new_report(self) -> GarbageCollectionReport:
        """An empty report of this collection."""
        return GarbageCollectionReport(
            storage_key=self.policy.storage_key,
            key_prefix=self.policy.key_prefix,
            dry_run=self.dry_run,
            min_age=self.min_age,
            cutoff=self.cutoff,
        )


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The collector's settings a run needs (see ``StorageGarbageCollector``)."""

    iter_references: ReferenceSource
    batch_size: int
    delete_concurrency: int = 4
    listing_buffer: int = 10_000
    cleanup_leftovers: bool = True
    progress: ProgressCallback | None = None
    progress_every: int = 10_000
    #: Deletes one batch of orphans instead of ``backend.adelete_many`` (the
    #: object ledger's audit wins each location first). Locations it neither
    #: deletes nor reports failed count as ``skipped_in_use``.
    delete_batch: DeleteBatch | None = None
    #: Which target locations of incomplete uploads are still in use (the
    #: object ledger's intents); their uploads are never aborted.
    in_use: InUse | None = None


class CollectionRun:
    """One collection: the state shared by its tasks."""

    def __init__(self, options: RunOptions, plan: Plan) -> None:
        self.options = options
        self.policy, self.backend, self.cutoff = plan.policy, plan.backend, plan.cutoff
        self.leftover_cutoff = plan.leftover_cutoff
        self.max_deletions = plan.max_deletions
        self.started = time.monotonic()
        self.report = plan.new_report()
        self.index = ReferenceIndex(
            storage_key=plan.policy.storage_key,
            key_prefix=plan.policy.key_prefix,
            released_backends=plan.released_backends,
        )
        self.phase: Phase = "references"
        #: Listed objects per stream item: the listing buffers at most
        #: ``listing_buffer`` objects in the stream plus one chunk being filled.
        self.chunk_size = min(LISTING_CHUNK, options.listing_buffer)
        self.listing_error: Exception | None = None

    # -- the run --------------------------------------------------------------

    async def arun(self) -> GarbageCollectionReport:
        failure: Exception | None = None
        send, receive = anyio.create_memory_object_stream[list[ObjectInfo]](
            max(1, self.options.listing_buffer // self.chunk_size)
        )
        with receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._alist, send)
                try:
                    self._notify()
                    await aread_references(
                        self.options.iter_references, self.index, on_batch=self._notify
                    )
                    self.report.referenced = self.index.referenced
                    self.report.references_read = self.index.references_read
                    if self.listing_error is not None:
                        raise self.listing_error  # before any deletion
                    self._set_phase("sweep")
                    await self._asweep(receive)
                except Exception as exc:
                    failure = exc
                    tg.cancel_scope.cancel()
                finally:
                    receive.close()  # stops the listing if the sweep ended early
        if failure is None and self.listing_error is not None and not self.report.stopped_early:
            failure = self.listing_error
        if failure is not None:
            if isinstance(failure, ExceptionGroup) and len(failure.exceptions) == 1:
                failure = failure.exceptions[0]
            if self.report.deleted:
                failure.add_note(
                    f"garbage collection of {self.policy.storage_key!r} stopped after deleting "
                    f"{self.report.deleted} orphaned objects"
                )
            raise failure
        if self.options.cleanup_leftovers:
            self._set_phase("leftovers")
            await self._acleanup_leftovers()
        self.report.duration = time.monotonic() - self.started
        self._set_phase("done")
        return self.report

    async def _alist(self, send: MemoryObjectSendStream[list[ObjectInfo]]) -> None:
        """Feed the listing into the bounded stream in chunks; errors are kept for the sweep.

        Chunks, not single objects: each stream hop costs an event-loop
        iteration, which would dominate a run over millions of objects.
        """
        size = self.chunk_size
        with send:
            objects = self.backend.aiter_objects(self.policy.key_prefix)
            try:
                chunk: list[ObjectInfo] = []
                async for info in objects:
                    chunk.append(info)
                    if len(chunk) >= size:
                        await send.send(chunk)
                        chunk = []
                if chunk:
                    await send.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the sweep stopped early
            except Exception as exc:
                self.listing_error = exc
            finally:
                await aclose_quietly(objects)

    async def _asweep(self, receive: MemoryObjectReceiveStream[list[ObjectInfo]]) -> None:
        """Stream the listing against the references; delete old orphans in batches."""
        batch_size = self.options.batch_size
        batch: list[ObjectInfo] = []
        slots = anyio.Semaphore(self.options.delete_concurrency)
        async with anyio.create_task_group() as deleters:
            async for chunk in receive:
                for info in chunk:
                    if self._examine(info):
                        batch.append(info)
                        if len(batch) >= batch_size:
                            await slots.acquire()  # back-pressure: at most N batches in flight
                            deleters.start_soon(self._adelete_batch, batch, slots)
                            batch = []
                    elif self.report.stopped_early:
                        break
                if self.report.stopped_early:
                    break
            if batch:
                await slots.acquire()
                deleters.start_soon(self._adelete_batch, batch, slots)

    def _examine(self, info: ObjectInfo) -> bool:
        """Count one listed object; ``True`` if it is to be deleted now.

        Sets ``stopped_early`` (and returns ``False``) when the deletion cap
        is reached before this object.
        """
        report = self.report
        # The backend promises to list only under the prefix; a run must never
        # act outside it even if one does not.
        if not is_under_prefix(info.location, self.policy.key_prefix):
            return False
        report.scanned += 1
        if report.scanned % self.options.progress_every == 0:
            self._notify()
        if info.location in self.index:
            return False
        too_young = info.last_modified + self.backend.timestamp_resolution > self.cutoff
        cap = self.max_deletions
        if not too_young and cap is not None and report.eligible >= cap:
            report.scanned -= 1  # not counted: the run stops before this object
            stop_at_cap(report, cap)
            return False
        report.orphaned += 1
        if too_young:
            report.skipped_too_young += 1
            return False
        report.eligible += 1
        if report.dry_run:
            if len(report.orphan_sample) < ORPHAN_SAMPLE_SIZE:
                report.orphan_sample.append(info.location)
            return False
        return True

    async def _adelete_batch(self, batch: list[ObjectInfo], slots: anyio.Semaphore) -> None:
        try:
            sizes = {info.location: info.size for info in batch}
            delete = self.options.delete_batch or self.backend.adelete_many
            await adelete_counted(self.report, delete, sizes)
        finally:
            slots.release()
        self._notify()

    async def _acleanup_leftovers(self) -> None:
        await acleanup_leftovers(
            self.report, self.backend, self.policy, self.leftover_cutoff, self.options.in_use
        )

    # -- progress ---------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._notify()

    def _notify(self) -> None:
        callback = self.options.progress
        if callback is None:
            return
        report = self.report
        callback(
            GarbageCollectionProgress(
                storage_key=report.storage_key,
                phase=self.phase,
                references_read=self.index.references_read,
                scanned=report.scanned,
                orphaned=report.orphaned,
                deleted=report.deleted,
                failed=report.failed,
                elapsed=time.monotonic() - self.started,
            )
        )


async def acleanup_leftovers(
    report: GarbageCollectionReport,
    backend: StorageBackend,
    policy: StoragePolicy,
    leftover_cutoff: datetime,
    in_use: InUse | None,
) -> None:
    """Remove the policy's incomplete uploads idle since before ``leftover_cutoff``
    (widened by the backend's timestamp resolution), except those ``in_use``
    names; count them in ``report``, and a failure as a failed deletion."""
    older_than = leftover_cutoff - backend.timestamp_resolution
    try:
        report.leftovers_removed = await backend.acleanup_leftovers(
            older_than=older_than, dry_run=report.dry_run, prefix=policy.key_prefix, in_use=in_use
        )
    except Exception as exc:  # counted like a failed deletion; the report still comes back
        report.add_failure(_LEFTOVERS, f"{type(exc).__name__}: {exc}")
        logger.warning("removing leftovers failed: %s", exc)
