"""The garbage collector and its reference source, for sync code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from functools import partial
from typing import Any

from granite_storage import gc
from granite_storage.integrations.sqlalchemy import refs
from granite_storage.refs import StoredObjectRef
from granite_storage.sync._manager import StorageManager
from granite_storage.sync._portal import Portal, check_no_running_loop


class StorageGarbageCollector(gc.StorageGarbageCollector):
    """:class:`granite_storage.gc.StorageGarbageCollector` with 0.1.0's
    blocking :meth:`collect`, run on the sync manager's loop.

    :param manager: a :class:`granite_storage.sync.StorageManager`.
    :param iter_references: as for the async collector: a zero-argument
        callable returning a sync (or async) iterable of refs, such as
        ``lambda: iter_model_storage_refs(session, Document, "_file_ref")``.
    :param options: the async collector's keyword options (``min_age``, whose
        default is one hour, ``max_deletions``, ...).
    """

    def __init__(
        self, manager: StorageManager, iter_references: gc.ReferenceSource, **options: Any
    ) -> None:
        super().__init__(manager._core, iter_references, **options)
        self.sync_manager = manager

    def collect(
        self,
        *,
        storage_key: str,
        dry_run: bool = True,
        min_age: timedelta | None = None,
        max_deletions: int | None = None,
    ) -> gc.GarbageCollectionReport:
        """Collect the orphans of one policy; see :meth:`acollect`."""
        run = partial(
            self.acollect,
            storage_key=storage_key,
            dry_run=dry_run,
            min_age=min_age,
            max_deletions=max_deletions,
        )
        return self.sync_manager.run("StorageGarbageCollector.collect", "gc.acollect(...)", run)


class StorageRefs:
    """The non-null refs of one column, for a ``for`` loop or ``async for``.

    A ``for`` loop fetches them in batches on an event loop of its own (one
    per iteration); a collector iterates them asynchronously on its own loop.
    """

    def __init__(self, session: refs.Executor, model: type[Any], attr: str, batch_size: int):
        self._args = (session, model, attr)
        self._batch_size = batch_size

    def __aiter__(self) -> AsyncIterator[StoredObjectRef]:
        return refs.iter_model_storage_refs(*self._args, batch_size=self._batch_size)

    def __iter__(self) -> Iterator[StoredObjectRef]:
        check_no_running_loop("iter_model_storage_refs", "async for ref in iter_model_storage_refs")
        return _iterate(self.__aiter__())


def _iterate(iterator: AsyncIterator[StoredObjectRef]) -> Iterator[StoredObjectRef]:
    portal = Portal()
    try:
        yield from portal.iterate(iterator)
    finally:
        portal.close()


def iter_model_storage_refs(
    db: refs.Executor,
    model: type[Any],
    ref_attr_name: str,
    *,
    batch_size: int = refs.DEFAULT_BATCH_SIZE,
) -> StorageRefs:
    """The non-null refs of ``model.<ref_attr_name>``, read from a sync
    ``Session`` (or ``Connection``, ``Engine``) in batches of ``batch_size``.

    See ``granite_storage.integrations.sqlalchemy.iter_model_storage_refs``,
    which this wraps.
    """
    return StorageRefs(db, model, ref_attr_name, batch_size)
