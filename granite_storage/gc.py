"""The garbage collector: delete stored objects that no reference points at.

How a run works (:meth:`StorageGarbageCollector.acollect`):

1. The age cutoff is fixed first: ``now - min_age``. An object is old
   enough to delete only if ``last_modified + backend.timestamp_resolution
   <= cutoff``, so an object written during the run (whose ref may be
   committed after the references were read) is never deleted, even with
   ``min_age=0``.
2. Two tasks start together in an anyio task group: the backend listing
   (``backend.aiter_objects(key_prefix)``) feeds a bounded memory object
   stream in chunks (at most :attr:`~StorageGarbageCollector.listing_buffer`
   objects, then it waits), while every reference is read into a set of
   protected locations.
3. Once all references are read, the listing is streamed against that set.
   Old-enough orphans accumulate into batches of
   :attr:`~StorageGarbageCollector.batch_size` that are handed to
   ``backend.adelete_many`` (S3: one DeleteObjects request per 1000 keys),
   at most :attr:`~StorageGarbageCollector.delete_concurrency` batches at once.
4. Leftovers older than the cutoff (stale temporary files, abandoned
   multipart uploads) are removed with ``backend.acleanup_leftovers``. They
   belong to the backend, not to a policy (no ref ever points at them), so
   collecting any policy cleans every leftover of its backend.

Memory is O(references) + O(listing buffer) + O(batch size x concurrency):
the listing is never held whole. The reference set costs about 80 bytes
per distinct referenced location (see :class:`ReferenceIndex`). Nothing is
deleted before the last reference was read, so a reference source that
fails deletes nothing.

The grace period is what protects uploads in flight. ``last_modified`` is
when the backend recorded the object, which can be well before the ref is
committed: the last write before the atomic rename on local disk, the
*start* of a multipart upload on S3. With ``min_age=0`` an upload that began
before the run and whose ref is committed after the references were read can
be deleted; use ``0`` only when nothing is being uploaded (tests, maintenance
windows), and otherwise a grace period longer than your slowest upload plus
its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from granite_storage._gc_refs import ReferenceIndex, ReferenceSource
from granite_storage._gc_report import GarbageCollectionProgress, GarbageCollectionReport
from granite_storage._gc_run import CollectionRun, ProgressCallback, RunOptions
from granite_storage.contracts import StorageBackend
from granite_storage.errors import UnsafeCollectionError
from granite_storage.locations import is_under_prefix
from granite_storage.manager import StorageManager
from granite_storage.policy import StoragePolicy

__all__ = [
    "DEFAULT_MIN_AGE",
    "GarbageCollectionProgress",
    "GarbageCollectionReport",
    "ProgressCallback",
    "ReferenceIndex",
    "ReferenceSource",
    "StorageGarbageCollector",
    "UnsafeCollectionError",
    "check_max_deletions",
    "check_min_age",
    "check_separable",
]

logger = logging.getLogger("granite_storage.gc")

#: The default grace period: objects younger than this are never deleted.
DEFAULT_MIN_AGE = timedelta(hours=1)


class StorageGarbageCollector:
    """Deletes the objects of a policy that no reference points at.

    :param manager: the manager whose policies and backends are collected.
    :param iter_references: a zero-argument callable returning an async or a
        sync iterable of ``StoredObjectRef | None``: every reference the
        application holds (for example
        ``lambda: iter_model_storage_refs(session, Document, "_file_ref")``).
        It is called once per run, on the event loop, so it must return
        quickly; a sync iterable is then iterated in one worker thread. Refs
        of every policy may be yielded: only those of the collected policy
        count as ``referenced``, but any ref pointing at a location under
        the collected prefix protects that object.
    :param min_age: the grace period; younger objects are reported, never
        deleted. ``timedelta(0)`` is allowed: objects written during the run
        are still protected by the cutoff fixed at its start, but uploads in
        flight when it starts are not (see the module docstring).
    :param max_deletions: stop a run once this many orphans were deleted
        (or, in a dry run, would be); ``None`` for no cap. The report says
        so (``stopped_early``); leftovers are still cleaned up.
    :param batch_size: locations per ``adelete_many`` call (S3 accepts 1000).
    :param delete_concurrency: ``adelete_many`` calls running at once.
    :param listing_buffer: listed objects buffered while references are read.
    :param cleanup_leftovers: also remove stale temporary files and abandoned
        multipart uploads older than the cutoff.
    :param progress: called with a :class:`GarbageCollectionProgress` at each
        phase change and every ``progress_every`` references or objects; it
        runs on the event loop and must return quickly.
    :param clock: returns the current time, timezone-aware (tests pass their own).
    :raises ValueError: for a negative ``min_age``, ``max_deletions`` or size.
    """

    def __init__(
        self,
        manager: StorageManager,
        iter_references: ReferenceSource,
        *,
        min_age: timedelta = DEFAULT_MIN_AGE,
        max_deletions: int | None = None,
        batch_size: int = 1000,
        delete_concurrency: int = 4,
        listing_buffer: int = 10_000,
        cleanup_leftovers: bool = True,
        progress: ProgressCallback | None = None,
        progress_every: int = 10_000,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        check_min_age(min_age)
        check_max_deletions(max_deletions)
        for name, value in (
            ("batch_size", batch_size),
            ("delete_concurrency", delete_concurrency),
            ("listing_buffer", listing_buffer),
            ("progress_every", progress_every),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.manager = manager
        self.iter_references = iter_references
        self.min_age = min_age
        self.max_deletions = max_deletions
        self.batch_size = batch_size
        self.delete_concurrency = delete_concurrency
        self.listing_buffer = listing_buffer
        self.cleanup_leftovers = cleanup_leftovers
        self.progress = progress
        self.progress_every = progress_every
        self.clock = clock or _utcnow

    async def acollect(
        self,
        *,
        storage_key: str,
        dry_run: bool = True,
        min_age: timedelta | None = None,
        max_deletions: int | None = None,
    ) -> GarbageCollectionReport:
        """Collect the orphans of one policy.

        :param storage_key: the policy to collect.
        :param dry_run: report what would be deleted and delete nothing (the default).
        :param min_age: override the collector's grace period for this run.
        :param max_deletions: override the collector's deletion cap for this run.
        :returns: the report; failed deletions are counted in it, not raised.
        :raises StorageError: (a ``ConfigurationError``) for an unknown storage
            key, or if the reference source yields something else than refs.
        :raises ValueError: if the clock returns a naive datetime.
        :raises UnsafeCollectionError: if another policy shares the backend and
            no key prefix separates the two; nothing is read or deleted.
        :raises BackendError: if listing the backend fails (deletions already
            done stay done; a note on the exception says how many).
        :raises Exception: whatever the reference source raises; nothing has
            been deleted then.
        """
        policy = self.manager.get_policy(storage_key)
        backend = self.manager.get_backend_for_policy(policy)
        self._check_separable(policy, backend)
        if min_age is None:
            min_age = self.min_age
        if max_deletions is None:
            max_deletions = self.max_deletions
        run = CollectionRun(
            RunOptions(
                iter_references=self.iter_references,
                batch_size=self.batch_size,
                delete_concurrency=self.delete_concurrency,
                listing_buffer=self.listing_buffer,
                cleanup_leftovers=self.cleanup_leftovers,
                progress=self.progress,
                progress_every=self.progress_every,
                clock=self.clock,
            ),
            policy=policy,
            backend=backend,
            dry_run=dry_run,
            min_age=check_min_age(min_age),
            max_deletions=check_max_deletions(max_deletions),
        )
        report = await run.arun()
        logger.info("%s", report)
        return report

    def _check_separable(self, policy: StoragePolicy, backend: StorageBackend) -> None:
        check_separable(self.manager, policy, backend)


def check_separable(
    manager: StorageManager, policy: StoragePolicy, backend: StorageBackend
) -> None:
    """Refuse when another policy's objects could lie under this policy's prefix.

    :raises UnsafeCollectionError: if another policy shares ``backend`` and no
        key prefix keeps the two policies' objects apart.
    """
    for other in manager.policies.values():
        if other.storage_key == policy.storage_key:
            continue
        if manager.get_backend_for_policy(other) is not backend:
            continue
        if _prefixes_overlap(policy.key_prefix, other.key_prefix):
            raise UnsafeCollectionError(
                f"cannot collect policy {policy.storage_key!r}: it shares its backend with "
                f"policy {other.storage_key!r} and their key prefixes "
                f"({policy.key_prefix!r} and {other.key_prefix!r}) do not keep their objects "
                f"apart, so objects of {other.storage_key!r} would look like orphans "
                f"(granite-storage 0.1.0 deleted them). Give each policy its own key_prefix, "
                f"neither inside the other (for example key_prefix={policy.storage_key!r} "
                f"and key_prefix={other.storage_key!r}), or give them separate backends"
            )


def _prefixes_overlap(a: str | None, b: str | None) -> bool:
    """Whether objects under prefix ``a`` and under prefix ``b`` can coincide."""
    if not a or not b:
        return True
    return a == b or is_under_prefix(a, b) or is_under_prefix(b, a)


def check_min_age(min_age: timedelta) -> timedelta:
    """``min_age`` if it is a non-negative ``timedelta``; else TypeError or ValueError."""
    if not isinstance(min_age, timedelta):
        raise TypeError(f"min_age must be a datetime.timedelta, got {type(min_age).__name__}")
    if min_age < timedelta(0):
        raise ValueError(f"min_age must not be negative, got {min_age}")
    return min_age


def check_max_deletions(max_deletions: int | None) -> int | None:
    """``max_deletions`` if it is ``None`` or non-negative; else ValueError."""
    if max_deletions is not None and max_deletions < 0:
        raise ValueError(f"max_deletions must not be negative, got {max_deletions}")
    return max_deletions


def _utcnow() -> datetime:
    return datetime.now(UTC)
