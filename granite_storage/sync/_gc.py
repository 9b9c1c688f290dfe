"""The garbage collector and its reference source, for sync code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from granite_storage import gc
from granite_storage._concurrency import check_no_running_loop
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy import refs
from granite_storage.refs import StoredObjectRef
from granite_storage.sync._manager import StorageManager


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
        super().__init__(manager.async_manager, iter_references, **options)
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
        return self.sync_manager.run(
            "StorageGarbageCollector.collect", "await gc.acollect(...)", run
        )


def iter_model_storage_refs(
    db: Session | Connection | Engine,
    model: type[Any],
    ref_attr_name: str,
    *,
    batch_size: int = refs.DEFAULT_BATCH_SIZE,
) -> Iterator[StoredObjectRef]:
    """Yield the non-null refs of ``model.<ref_attr_name>`` from a sync
    ``Session`` (or ``Connection``, ``Engine``), fetched in batches of
    ``batch_size``, in the thread that iterates.

    The query is the async ``iter_model_storage_refs``'s (see
    ``granite_storage.integrations.sqlalchemy``); it runs here, in the caller's
    thread, because a sync session belongs to the thread that uses it (a
    ``sqlite:///:memory:`` database exists in one connection of one thread).

    :raises ConfigurationError: if ``model.<ref_attr_name>`` is not a
        ``StoredObjectRefType`` column, ``batch_size`` < 1, or ``db`` is async.
    """
    check_no_running_loop(
        "iter_model_storage_refs",
        "use granite_storage.integrations.sqlalchemy.iter_model_storage_refs (async for)",
    )
    if not isinstance(db, Session | Connection | Engine):
        raise ConfigurationError(
            f"granite_storage.sync.iter_model_storage_refs reads a sync Session, Connection or "
            f"Engine, not {type(db).__name__}: for an AsyncSession use "
            "granite_storage.integrations.sqlalchemy.iter_model_storage_refs (async for)"
        )
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    statement = refs.select_model_storage_refs(model, ref_attr_name)
    statement = statement.execution_options(yield_per=batch_size)
    with contextlib.ExitStack() as stack:
        executor = stack.enter_context(db.connect()) if isinstance(db, Engine) else db
        result = stack.enter_context(contextlib.closing(executor.execute(statement)))
        for batch in result.scalars().partitions(batch_size):
            yield from (ref for ref in batch if isinstance(ref, StoredObjectRef))
