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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeAlias

from arq.cron import CronJob, cron
from arq.typing import OptionType, WeekdayOptionType

from granite_storage.errors import ConfigurationError
from granite_storage.gc import DEFAULT_MIN_AGE, StorageGarbageCollector
from granite_storage.manager import StorageManager
from granite_storage.migrate import amigrate
from granite_storage.refs import StoredObjectRef

__all__ = [
    "MANAGER_CTX_KEY",
    "REFERENCES_CTX_KEY",
    "REWRITE_CTX_KEY",
    "ReferencesForKey",
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
    :param min_age_seconds: the grace period (default one hour).
    :param max_deletions: stop after this many deletions.
    :param backend_key: collect this backend instead of the policy's (a move
        between backends), and with ``delete_source=True`` delete the source
        copies of moved objects there: see ``StorageGarbageCollector.acollect``.
    :raises ConfigurationError: if the context lacks the manager or the
        references callable (see the module docstring).
    :raises StorageError: as :meth:`StorageGarbageCollector.acollect` does.
    """
    manager, references = _manager_and_references(ctx)
    min_age = DEFAULT_MIN_AGE if min_age_seconds is None else timedelta(seconds=min_age_seconds)
    collector = StorageGarbageCollector(
        manager, lambda: references(storage_key), min_age=min_age, max_deletions=max_deletions
    )
    report = await collector.acollect(
        storage_key=storage_key,
        dry_run=not delete,
        backend_key=backend_key,
        delete_source=delete_source,
    )
    if not report.ok:
        logger.warning("garbage collection of %r had %d failures", storage_key, report.failed)
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
    """An arq cron job that runs :func:`collect_garbage` for ``storage_key``.

    ``gc_cron_job("documents", hour=3)`` runs every day at 03:00:00 (arq's
    clock); ``minute`` and ``second`` default to 0 so that an ``hour`` alone
    means once a day, not once a minute. The job is ``unique``: with several
    workers it runs once per scheduled time. Its name is
    ``cron:granite_storage_gc:<storage_key>`` unless ``name`` is given, and
    its result (the report as a dict) is kept for ``keep_result`` seconds.

    :raises ValueError: if ``storage_key`` is empty.
    """
    if not storage_key:
        raise ValueError("gc_cron_job needs the storage key to collect")

    async def job(ctx: Mapping[str, Any]) -> dict[str, Any]:
        return await collect_garbage(
            ctx,
            storage_key,
            delete=delete,
            min_age_seconds=min_age_seconds,
            max_deletions=max_deletions,
        )

    job.__qualname__ = job.__name__ = f"granite_storage_gc:{storage_key}"
    return cron(
        job,
        name=name or f"cron:granite_storage_gc:{storage_key}",
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
