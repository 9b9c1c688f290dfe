"""Delete what a transaction left behind, after it ended.

The session hooks (``_tracking``) decide *which* objects; this module starts
their deletion on the event loop the mixin ran on (under ``AsyncSession`` the
hooks run in the loop's thread, through SQLAlchemy's greenlet bridge; from
another thread the task is submitted thread-safely), checks that no row
references them any more, and deletes them. The check is a query in a fresh,
short transaction on a new connection, over every ``StoredObjectRefType``
column of the model's ``MetaData``; it also runs before deleting the uploads
of a rolled-back transaction, so a row made durable anyway (an ``AUTOCOMMIT``
connection, an outer transaction the session had joined) keeps its object.
The model's plug-in (the object ledger), when there is one, does the checking
and deleting its own way.

Nothing here raises into the user's commit or rollback: failures are logged
on the ``granite_storage`` logger and left to the garbage collector.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeAlias

from granite_storage.integrations.sqlalchemy._plugin import TrackedObject
from granite_storage.integrations.sqlalchemy.refs import areferenced_locations

logger = logging.getLogger("granite_storage")

#: A deletion under way: a task on the running loop, or one submitted to another loop.
Pending: TypeAlias = "asyncio.Future[None] | concurrent.futures.Future[None]"
#: Starts a coroutine on a sync manager's loop (``granite_storage.sync.StorageManager.submit``).
Submit: TypeAlias = Callable[
    [Callable[[], Coroutine[Any, Any, None]]], "concurrent.futures.Future[None]"
]


def start_cleanup(
    loop: asyncio.AbstractEventLoop | Submit | None, objects: list[TrackedObject], reason: str
) -> Pending | None:
    """Start deleting ``objects`` on ``loop`` (the loop the mixin last ran on;
    the running one if that is it, or if there is none), or through it, the
    ``submit`` of the sync manager a sync ``Session`` used. Never raises:
    returns ``None`` if nothing was started."""
    if not objects:
        return None
    coro: Coroutine[Any, Any, None] = adelete_unreferenced(objects, reason=reason)
    target = loop
    try:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        pending: Pending
        if running is not None and (target is None or target is running):
            pending = running.create_task(coro, name=f"granite_storage cleanup after {reason}")
        elif callable(target):
            pending = target(lambda: coro)
        elif target is not None and not target.is_closed():
            pending = asyncio.run_coroutine_threadsafe(coro, target)
        else:
            coro.close()
            logger.warning(
                "granite_storage: no event loop to delete %d object(s) released by %s; "
                "they are left to the garbage collector",
                len(objects),
                reason,
            )
            return None
    except Exception:  # never raise into the user's commit or rollback
        coro.close()
        logger.exception(
            "granite_storage: could not schedule the deletion of %d object(s) after %s; "
            "they are left to the garbage collector",
            len(objects),
            reason,
        )
        return None
    return pending


async def adelete_unreferenced(objects: Iterable[TrackedObject], *, reason: str = "") -> None:
    """Delete each object that no row references any more. Never raises
    (except cancellation): failures are logged and left to the garbage collector."""
    unique: dict[str, TrackedObject] = {}
    for obj in objects:  # each has an object: refs without one are never tracked
        unique.setdefault(obj.ref.location, obj)
    groups: dict[tuple[int, int, int], list[TrackedObject]] = {}
    for obj in unique.values():
        groups.setdefault((id(obj.bind), id(obj.metadata), id(obj.plugin)), []).append(obj)
    for group in groups.values():
        bind, metadata, plugin = group[0].bind, group[0].metadata, group[0].plugin
        if plugin is not None:
            # The plug-in checks and deletes (the ledger wins each object first).
            await plugin.asweep_tracked(group, bind=bind, metadata=metadata, reason=reason)
            continue
        try:
            referenced = await areferenced_locations(
                bind, metadata, [o.ref.location for o in group]
            )
        except Exception:
            logger.exception(
                "granite_storage: could not check whether %d object(s) released by %s are "
                "still referenced; they are left to the garbage collector",
                len(group),
                reason,
            )
            continue
        for obj in group:
            if obj.ref.location in referenced:
                logger.debug("granite_storage: kept %s, another row references it", obj.ref)
                continue
            try:
                await obj.manager.adelete(obj.ref)
            except Exception:
                logger.exception(
                    "granite_storage: could not delete %r after %s; the garbage collector "
                    "will remove it",
                    obj.ref.location,
                    reason,
                )
            else:
                logger.debug("granite_storage: deleted %r after %s", obj.ref.location, reason)
