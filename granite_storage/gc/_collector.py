"""The collectors: what every collector shares (its settings, a run's plan,
``acollect``), and the listing collector of this package."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from granite_storage._util import as_utc
from granite_storage.contracts import StorageBackend
from granite_storage.errors import ConfigurationError, UnsafeCollectionError
from granite_storage.gc._refs import ReferenceSource
from granite_storage.gc._report import GarbageCollectionReport
from granite_storage.gc._run import CollectionRun, Plan, ProgressCallback, RunOptions
from granite_storage.locations import is_under_prefix
from granite_storage.manager import StorageManager
from granite_storage.policy import StoragePolicy

logger = logging.getLogger("granite_storage.gc")

#: The default grace period: objects younger than this are never deleted.
DEFAULT_MIN_AGE = timedelta(hours=1)
#: How long an incomplete upload must be idle before a collection removes it
#: (the order of the AbortIncompleteMultipartUpload lifecycle rule AWS recommends).
DEFAULT_LEFTOVER_MIN_AGE = timedelta(hours=24)


class BaseCollector(ABC):
    """What every collector shares: its checked settings, one run's :class:`Plan`,
    and :meth:`acollect`. A collector implements :meth:`_arun`."""

    #: Whether :meth:`acollect` lists the backend: then another policy whose
    #: objects can lie under the collected prefix makes the run unsafe.
    _lists_backend: ClassVar[bool] = True
    #: Called with a :class:`GarbageCollectionProgress` as a run goes on
    #: (see the collector's ``progress`` parameter); ``None``: not called.
    progress: ProgressCallback | None = None
    #: A progress call at least every this many references or objects.
    progress_every: int = 10_000

    def __init__(
        self,
        manager: StorageManager,
        min_age: timedelta,
        max_deletions: int | None,
        batch_size: int,
        cleanup_leftovers: bool,
        clock: Callable[[], datetime] | None,
        /,
        leftover_min_age: timedelta = DEFAULT_LEFTOVER_MIN_AGE,
    ) -> None:
        self.min_age = check_min_age(min_age)
        self.leftover_min_age = check_min_age(leftover_min_age, "leftover_min_age")
        self.max_deletions = check_max_deletions(max_deletions)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.manager = manager
        self.batch_size = batch_size
        self.cleanup_leftovers = cleanup_leftovers
        self.clock = clock or _utcnow

    async def acollect(
        self,
        *,
        storage_key: str,
        dry_run: bool = True,
        min_age: timedelta | None = None,
        max_deletions: int | None = None,
        backend_key: str | None = None,
        leftover_min_age: timedelta | None = None,
        delete_source: bool = False,
    ) -> GarbageCollectionReport:
        """Collect the orphans of one policy.

        :param storage_key: the policy to collect.
        :param dry_run: report what would be deleted and delete nothing (the default).
        :param min_age: override the collector's grace period for this run.
        :param max_deletions: override the collector's deletion cap for this run.
        :param backend_key: collect the policy's prefix on this backend instead
            of the policy's own (a backend the policy's objects are moving
            from or to). Every ref protects its location on every backend,
            whatever backend it names (unless ``delete_source``).
        :param leftover_min_age: override the collector's leftover age for this run.
        :param delete_source: the last step of a move (see "Moving between
            backends"): on ``backend_key``, a backend the policy has moved away
            from, a ref that names another registered backend by its key (what
            ``granite-storage migrate`` writes once it has verified the copy there)
            no longer protects its location, so the source copies of moved
            objects are collected like orphans, with the usual grace period,
            dry run and deletion cap. Refs that still name a backend by its
            ``backend_name`` (not migrated, or written before the move) keep
            protecting theirs. Refused unless ``backend_key`` is given, is not
            the policy's backend, and shares no storage with the backends the
            moved refs name (a ``MirrorBackend`` that still writes to the target).
        :returns: the report; failed deletions are counted in it, not raised.
        :raises StorageError: (a ``ConfigurationError``) for an unknown storage
            key; see the collector for the other errors it raises.
        :raises ValueError: if the clock returns a naive datetime.
        """
        plan = self._plan(
            storage_key,
            dry_run,
            min_age,
            max_deletions,
            self._lists_backend,
            backend_key=backend_key,
            leftover_min_age=leftover_min_age,
            delete_source=delete_source,
        )
        report = await self._arun(plan)
        logger.info("%s", report)
        return report

    @abstractmethod
    async def _arun(self, plan: Plan) -> GarbageCollectionReport:
        """Run one collection of ``plan``."""

    def _plan(
        self,
        storage_key: str,
        dry_run: bool,
        min_age: timedelta | None,
        max_deletions: int | None,
        lists_backend: bool,
        backend_key: str | None = None,
        leftover_min_age: timedelta | None = None,
        delete_source: bool = False,
    ) -> Plan:
        """Resolve the policy and its backend, apply the overrides, fix the start."""
        policy = self.manager.get_policy(storage_key)
        backend = self.manager.get_backend_for_policy(policy)
        if backend_key is not None:
            if backend_key not in self.manager.backends:
                raise ConfigurationError(
                    f"unknown backend {backend_key!r}; the manager's backends are "
                    f"{sorted(self.manager.backends)}"
                )
            backend = self.manager.backends[backend_key]
        if lists_backend:
            check_separable(self.manager, policy, backend)
        released = (
            released_backends(self.manager, policy, backend_key) if delete_source else frozenset()
        )
        return Plan(
            policy=policy,
            backend=backend,
            backend_key=policy.backend_key if backend_key is None else backend_key,
            dry_run=dry_run,
            min_age=check_min_age(self.min_age if min_age is None else min_age),
            max_deletions=check_max_deletions(
                self.max_deletions if max_deletions is None else max_deletions
            ),
            now=as_utc(self.clock()),
            leftover_min_age=check_min_age(
                self.leftover_min_age if leftover_min_age is None else leftover_min_age,
                "leftover_min_age",
            ),
            released_backends=released,
        )


def released_backends(
    manager: StorageManager, policy: StoragePolicy, backend_key: str | None
) -> frozenset[str]:
    """The backend keys whose refs protect nothing on ``backend_key`` in a
    ``delete_source`` collection, after checking that such a collection is safe.

    A ref names a backend by key (rule 1 of the manager's resolution) only when
    ``granite-storage migrate`` verified its copy there; a ref that names a
    ``backend_name`` keeps protecting its location everywhere.

    :raises ConfigurationError: without ``backend_key``, when it is the policy's
        own backend, or when it shares storage with a backend moved refs name.
    """
    if backend_key is None:
        raise ConfigurationError(
            "delete_source=True needs backend_key=: the backend the policy's objects "
            "moved away from"
        )
    if backend_key == policy.backend_key:
        raise ConfigurationError(
            f"{backend_key!r} is still the backend of policy {policy.storage_key!r}: switch "
            "the policy to the backend its objects moved to before deleting the sources"
        )
    own = manager.get_backend_for_policy(policy).backend_name
    collected = manager.backends[backend_key]
    released = frozenset(key for key in manager.backends if key not in (backend_key, own))
    for key in sorted(released):
        shared = {id(store) for store in collected.stores} & {
            id(store) for store in manager.backends[key].stores
        }
        if shared:
            raise ConfigurationError(
                f"backend {backend_key!r} ({collected!r}) writes to the same storage as "
                f"{key!r}: deleting its sources would delete moved objects too; register "
                "the old backend on its own (not a MirrorBackend) for this collection"
            )
    return released


class StorageGarbageCollector(BaseCollector):
    """Deletes the objects of a policy that no reference points at.

    :meth:`acollect` also raises :class:`UnsafeCollectionError` if another
    policy shares the backend and no key prefix separates the two (nothing is
    read or deleted then), ``BackendError`` if listing the backend fails
    (deletions already done stay done; a note on the exception says how
    many), a ``ConfigurationError`` if the reference source yields something
    else than refs, and whatever the reference source raises (nothing has
    been deleted then).

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
    :param cleanup_leftovers: also remove the policy's incomplete uploads
        (temporary files, multipart uploads) that no part or chunk reached for
        ``leftover_min_age`` (and ``min_age``). One still receiving data is
        never removed, however long it runs; nor one outside the policy's prefix.
    :param leftover_min_age: how long an incomplete upload must be idle before
        it is removed (default 24 h).
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
        leftover_min_age: timedelta = DEFAULT_LEFTOVER_MIN_AGE,
    ) -> None:
        super().__init__(
            manager, min_age, max_deletions, batch_size, cleanup_leftovers, clock, leftover_min_age
        )
        for name, value in (
            ("delete_concurrency", delete_concurrency),
            ("listing_buffer", listing_buffer),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.iter_references = iter_references
        self.delete_concurrency = delete_concurrency
        self.listing_buffer = listing_buffer
        self.progress = progress
        self.progress_every = check_progress_every(progress_every)

    async def _arun(self, plan: Plan) -> GarbageCollectionReport:
        options = RunOptions(
            iter_references=self.iter_references,
            batch_size=self.batch_size,
            delete_concurrency=self.delete_concurrency,
            listing_buffer=self.listing_buffer,
            cleanup_leftovers=self.cleanup_leftovers,
            progress=self.progress,
            progress_every=self.progress_every,
        )
        return await CollectionRun(options, plan).arun()


def check_progress_every(value: int) -> int:
    """``value``, if at least 1.

    :raises ValueError: otherwise.
    """
    if value < 1:
        raise ValueError(f"progress_every must be at least 1, got {value}")
    return value


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


def check_min_age(min_age: timedelta, name: str = "min_age") -> timedelta:
    """``min_age`` if it is a non-negative ``timedelta``; else TypeError or ValueError."""
    if not isinstance(min_age, timedelta):
        raise TypeError(f"{name} must be a datetime.timedelta, got {type(min_age).__name__}")
    if min_age < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {min_age}")
    return min_age


def check_max_deletions(max_deletions: int | None) -> int | None:
    """``max_deletions`` if it is ``None`` or non-negative; else ValueError."""
    if max_deletions is not None and max_deletions < 0:
        raise ValueError(f"max_deletions must not be negative, got {max_deletions}")
    return max_deletions


def _utcnow() -> datetime:
    return datetime.now(UTC)
