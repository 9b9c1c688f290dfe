"""Run the garbage collector as an `arq <https://arq-docs.helpmanual.io/>`_ job.

:func:`collect_garbage` is a ready job function and :func:`gc_cron_job`
schedules it. Both read two keys of the worker context, which your
``on_startup`` sets:

* ``ctx["granite_storage_manager"]`` (:data:`MANAGER_CTX_KEY`): the
  :class:`~granite_storage.StorageManager`;
* ``ctx["granite_storage_references"]`` (:data:`REFERENCES_CTX_KEY`): a
  callable taking the storage key being collected and returning an async or
  sync iterable of ``StoredObjectRef | None``, every reference the
  application holds (an async generator function that opens its own
  session is the usual choice; it is closed when the run ends)::

    async def references(storage_key: str) -> AsyncIterator[StoredObjectRef]:
        async with AsyncSession(engine) as session:
            async for ref in iter_metadata_storage_refs(session, Base.metadata):
                yield ref

    async def startup(ctx):
        ctx[MANAGER_CTX_KEY] = StorageManager(backends=..., policies=...)
        ctx[REFERENCES_CTX_KEY] = references

    class WorkerSettings:
        functions = [collect_garbage]
        cron_jobs = [gc_cron_job("documents", hour=3, minute=15)]
        on_startup = startup

The job's result is the report as a dict
(:meth:`~granite_storage.gc.GarbageCollectionReport.to_dict`).

With the object ledger, put the strict collector under
``ctx["granite_storage_collector"]`` (:data:`COLLECTOR_CTX_KEY`) instead of
the references callable: :func:`collect_garbage` then runs its listing-free
collection, and :func:`audit_garbage` (``gc_cron_job(..., audit=True)``) its
periodic listing audit::

    async def startup(ctx):
        manager = StorageManager(backends=..., policies=...)
        ctx[MANAGER_CTX_KEY] = manager
        ctx[COLLECTOR_CTX_KEY] = LedgerGarbageCollector(
            manager, ledger, engine, reference_metadata=Base.metadata
        )

    class WorkerSettings:
        functions = [collect_garbage, audit_garbage]
        cron_jobs = [
            gc_cron_job("documents", minute={0, 30}),         # every half hour
            gc_cron_job("documents", audit=True, weekday=6, hour=4),  # weekly audit
        ]
        on_startup = startup
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeAlias

from arq.cron import CronJob, cron
from arq.typing import OptionType, WeekdayOptionType

from granite_storage.errors import ConfigurationError
from granite_storage.gc import GarbageCollectionReport, StorageGarbageCollector
from granite_storage.manager import StorageManager
from granite_storage.migrate import amigrate
from granite_storage.refs import StoredObjectRef

__all__ = [
    "COLLECTOR_CTX_KEY",
    "MANAGER_CTX_KEY",
    "REFERENCES_CTX_KEY",
    "REWRITE_CTX_KEY",
    "ReferencesForKey",
    "audit_garbage",
    "collect_garbage",
    "gc_cron_job",
    "migrate_objects",
]

logger = logging.getLogger("granite_storage.gc")

#: The worker-context key holding the ``StorageManager``.
MANAGER_CTX_KEY = "granite_storage_manager"
#: The worker-context key holding the references callable (storage key -> refs).
REFERENCES_CTX_KEY = "granite_storage_references"

#: The worker-context key holding the migration's ref rewriter (see :func:`migrate_objects`).
REWRITE_CTX_KEY = "granite_storage_rewrite"

#: The worker-context key holding a collector built at startup (optional): a
#: ``LedgerGarbageCollector`` (or a ``StorageGarbageCollector`` with options
#: of your own). The jobs then use it instead of building one from the
#: references callable.
COLLECTOR_CTX_KEY = "granite_storage_collector"

#: What ``ctx[REFERENCES_CTX_KEY]`` holds.
ReferencesForKey: TypeAlias = Callable[
    [str], AsyncIterable[StoredObjectRef | None] | Iterable[StoredObjectRef | None]
]


async def collect_garbage(
    ctx: Mapping[str, Any],
    storage_key: str,
    *,
    delete: bool = True,
    min_age_seconds: float | None = None,
    max_deletions: int | None = None,
    backend_key: str | None = None,
    delete_source: bool = False,
) -> dict[str, Any]:
    """An arq job: collect the orphans of ``storage_key`` and return the report as a dict.

    Enqueue it with ``await redis.enqueue_job("collect_garbage", "documents")``.

    :param delete: ``False`` for a dry run (reports, deletes nothing). Unlike
        the collector, the job deletes by default: it is meant to be scheduled.
    :param min_age_seconds: the grace period (default: the collector's, one
        hour unless the collector in the context says otherwise).
    :param max_deletions: stop after this many deletions.
    :param backend_key: collect this backend instead of the policy's (a move
        between backends), and with ``delete_source=True`` delete the source
        copies of moved objects there: see ``StorageGarbageCollector.acollect``.
    :raises ConfigurationError: if the context lacks the manager or the
        references callable, and holds no collector (see the module docstring).
    :raises StorageError: as :meth:`StorageGarbageCollector.acollect` does.
    """
    collector = ctx.get(COLLECTOR_CTX_KEY)
    if collector is None:
        manager, references = _manager_and_references(ctx)
        collector = StorageGarbageCollector(manager, lambda: references(storage_key))
    elif not callable(getattr(collector, "acollect", None)):
        raise ConfigurationError(
            f"ctx[{COLLECTOR_CTX_KEY!r}] holds {type(collector).__name__}, not a garbage "
            "collector: set it to a LedgerGarbageCollector (or StorageGarbageCollector)"
        )
    report = await collector.acollect(
        storage_key=storage_key,
        dry_run=not delete,
        min_age=_min_age(min_age_seconds),
        max_deletions=max_deletions,
        backend_key=backend_key,
        delete_source=delete_source,
    )
    return _reported(report, "garbage collection", storage_key)


async def audit_garbage(
    ctx: Mapping[str, Any],
    storage_key: str,
    *,
    delete: bool = True,
    min_age_seconds: float | None = None,
    max_deletions: int | None = None,
) -> dict[str, Any]:
    """An arq job: the object ledger's periodic listing audit of ``storage_key``
    (``LedgerGarbageCollector.aaudit``: lists the backend, so it also finds
    objects the ledger never knew); returns the report as a dict.

    It uses the collector under ``ctx["granite_storage_collector"]``
    (:data:`COLLECTOR_CTX_KEY`). The options are those of :func:`collect_garbage`.

    :raises ConfigurationError: if the context holds no ``LedgerGarbageCollector``.
    """
    collector = ctx.get(COLLECTOR_CTX_KEY)
    aaudit = getattr(collector, "aaudit", None)
    if not callable(aaudit):
        found = "nothing" if collector is None else type(collector).__name__
        raise ConfigurationError(
            f"audit_garbage needs the object ledger's collector, and ctx[{COLLECTOR_CTX_KEY!r}] "
            f"holds {found}: set it to LedgerGarbageCollector(manager, ledger, engine, "
            "reference_metadata=Base.metadata) in your WorkerSettings.on_startup (without the "
            "ledger, collect_garbage already lists the backend)"
        )
    report = await aaudit(
        storage_key=storage_key,
        dry_run=not delete,
        min_age=_min_age(min_age_seconds),
        max_deletions=max_deletions,
    )
    return _reported(report, "ledger audit", storage_key)


def _min_age(seconds: float | None) -> timedelta | None:
    """The run's grace period; ``None``: the collector's own."""
    return None if seconds is None else timedelta(seconds=seconds)


def _reported(report: GarbageCollectionReport, what: str, storage_key: str) -> dict[str, Any]:
    if not report.ok:
        logger.warning("%s of %r had %d failures", what, storage_key, report.failed)
    return report.to_dict()


def _manager_and_references(ctx: Mapping[str, Any]) -> tuple[StorageManager, ReferencesForKey]:
    manager = ctx.get(MANAGER_CTX_KEY)
    if not isinstance(manager, StorageManager):
        raise ConfigurationError(
            f"the arq worker context has no StorageManager under {MANAGER_CTX_KEY!r}; set "
            f"ctx[{MANAGER_CTX_KEY!r}] = manager in your WorkerSettings.on_startup"
        )
    references = ctx.get(REFERENCES_CTX_KEY)
    if not callable(references):
        raise ConfigurationError(
            f"the arq worker context has no references callable under {REFERENCES_CTX_KEY!r}; "
            f"set ctx[{REFERENCES_CTX_KEY!r}] to a function taking the storage key and returning "
            "the application's StoredObjectRefs, in your WorkerSettings.on_startup"
        )
    return manager, references


def gc_cron_job(
    storage_key: str,
    *,
    delete: bool = True,
    min_age_seconds: float | None = None,
    max_deletions: int | None = None,
    audit: bool = False,
    name: str | None = None,
    month: OptionType = None,
    day: OptionType = None,
    weekday: WeekdayOptionType = None,
    hour: OptionType = None,
    minute: OptionType = 0,
    second: OptionType = 0,
    run_at_startup: bool = False,
    timeout: float | timedelta | None = None,
    keep_result: float | None = 86400,
    max_tries: int = 1,
) -> CronJob:
    """An arq cron job that runs :func:`collect_garbage` for ``storage_key``
    (:func:`audit_garbage` with ``audit=True``).

    ``gc_cron_job("documents", hour=3)`` runs every day at 03:00:00 (arq's
    clock); ``minute`` and ``second`` default to 0 so that an ``hour`` alone
    means once a day, not once a minute. The job is ``unique``: with several
    workers it runs once per scheduled time. Its name is
    ``cron:granite_storage_gc:<storage_key>`` (``...audit...`` for an audit)
    unless ``name`` is given, and its result (the report as a dict) is kept
    for ``keep_result`` seconds.

    :raises ValueError: if ``storage_key`` is empty.
    """
    if not storage_key:
        raise ValueError("gc_cron_job needs the storage key to collect")

    run = audit_garbage if audit else collect_garbage
    kind = "audit" if audit else "gc"

    async def job(ctx: Mapping[str, Any]) -> dict[str, Any]:
        return await run(
            ctx,
            storage_key,
            delete=delete,
            min_age_seconds=min_age_seconds,
            max_deletions=max_deletions,
        )

    job.__qualname__ = job.__name__ = f"granite_storage_{kind}:{storage_key}"
    return cron(
        job,
        name=name or f"cron:granite_storage_{kind}:{storage_key}",
        month=month,
        day=day,
        weekday=weekday,
        hour=hour,
        minute=minute,
        second=second,
        run_at_startup=run_at_startup,
        unique=True,
        timeout=timeout,
        keep_result=keep_result,
        max_tries=max_tries,
    )


async def migrate_objects(
    ctx: Mapping[str, Any],
    storage_key: str,
    to: str,
    *,
    dry_run: bool = False,
    concurrency: int = 4,
) -> dict[str, Any]:
    """An arq job: move the objects of ``storage_key`` to the backend ``to``
    (:func:`granite_storage.migrate.amigrate`) and return the report as a dict.

    Besides the manager and the references callable, it reads
    ``ctx["granite_storage_rewrite"]`` (:data:`REWRITE_CTX_KEY`), for example
    ``ref_rewriter(engine, Base.metadata)``. A retried or re-enqueued job
    resumes: what was done is skipped.

    :raises ConfigurationError: if the context lacks one of the three.
    """
    manager, references = _manager_and_references(ctx)
    rewrite = ctx.get(REWRITE_CTX_KEY)
    if not callable(rewrite):
        raise ConfigurationError(
            f"the arq worker context has no rewrite callable under {REWRITE_CTX_KEY!r}; set "
            f"ctx[{REWRITE_CTX_KEY!r}] = ref_rewriter(engine, Base.metadata) in your "
            "WorkerSettings.on_startup"
        )
    report = await amigrate(
        manager,
        lambda: references(storage_key),
        rewrite,
        storage_key=storage_key,
        to=to,
        dry_run=dry_run,
        concurrency=concurrency,
    )
    if not report.ok:
        logger.warning("migration of %r had %d failures", storage_key, len(report.failed))
    return report.to_dict()
