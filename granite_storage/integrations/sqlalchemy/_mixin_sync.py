"""StoredContentMixin's blocking methods, granite-storage 0.1.0's names, for
sync Sessions: each runs its async twin on the loop of the model's
``granite_storage.sync.StorageManager``.

The calling thread waits for the coroutine and meanwhile runs, itself, the
work the coroutine does in the ``Session`` (loading an expired ref, the
ledger's claim), since a sync ``Session`` belongs to the thread that uses it
(``_db.run_lending_this_thread``). The deletions that follow the ``Session``'s
commit or rollback start on that manager's loop too (``_tracking``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Protocol, TypeVar, Unpack, runtime_checkable

from sqlalchemy.ext.asyncio import async_object_session
from sqlalchemy.orm import object_session

from granite_storage._concurrency import check_no_running_loop
from granite_storage.contracts import ObjectReader
from granite_storage.errors import ConfigurationError, SyncInEventLoopError
from granite_storage.integrations.sqlalchemy._content import (
    ReplaceContentResult,
    StoredContent,
    StoreOptions,
)
from granite_storage.integrations.sqlalchemy._db import run_lending_this_thread
from granite_storage.integrations.sqlalchemy._tracking import start_cleanups_with
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import ByteSource

T = TypeVar("T")

#: The class attribute holding the sync manager, when one was configured.
SYNC_MANAGER_ATTRIBUTE = "__granite_storage_sync_manager__"


@runtime_checkable
class BlockingStorageManager(Protocol):
    """What the blocking methods need of a manager; a
    ``granite_storage.sync.StorageManager`` is one."""

    @property
    def async_manager(self) -> StorageManager:
        """The async manager it runs."""

    def submit(self, call: Callable[[], Coroutine[Any, Any, T]]) -> Future[T]:
        """Start ``await call()`` on its loop; return at once."""

    def open(self, ref: StoredObjectRef, *, verify: bool = False) -> io.BufferedIOBase:
        """``ref``'s object as a read-only binary file."""


def split_manager(
    manager: StorageManager | BlockingStorageManager,
) -> tuple[StorageManager, BlockingStorageManager | None]:
    """The async manager to configure, and the sync one (``None`` for an async manager).

    :raises ConfigurationError: for anything else.
    """
    if isinstance(manager, StorageManager):
        return manager, None
    if isinstance(manager, BlockingStorageManager) and isinstance(
        manager.async_manager, StorageManager
    ):
        return manager.async_manager, manager
    raise ConfigurationError(
        "configure_storage_manager() takes a granite_storage.StorageManager (for the async "
        "methods) or a granite_storage.sync.StorageManager (for the blocking methods of "
        f"sync code, and the async ones), not {type(manager).__module__}."
        f"{type(manager).__qualname__}"
    )


class _AsyncContent(Protocol):
    """The async methods the blocking ones run (``StoredContentMixin``'s)."""

    @property
    def stored_content(self) -> StoredContent: ...

    async def aset_content(
        self, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef: ...

    async def aset_content_from_stream(
        self, stream: ByteSource, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef: ...

    async def areplace_content(
        self, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> ReplaceContentResult: ...

    async def aget_content(self, *, verify: bool = False) -> bytes | None: ...

    async def aget_content_text(
        self, encoding: str = "utf-8", *, verify: bool = False
    ) -> str | None: ...

    def aopen_content(
        self, *, verify: bool = False
    ) -> AbstractAsyncContextManager[ObjectReader]: ...


class SyncContentMethods:
    """granite-storage 0.1.0's blocking methods, mixed into ``StoredContentMixin``.

    They need the model configured with a ``granite_storage.sync.StorageManager``
    and a sync ``Session`` (or none). Called inside a running event loop, or
    for a row of an ``AsyncSession``, they raise
    :class:`~granite_storage.errors.SyncInEventLoopError`, naming the
    coroutine to await instead.
    """

    def set_content(
        self: _AsyncContent, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef:
        """Blocking :meth:`aset_content`: store ``content`` and assign its ref."""
        return run_blocking(
            self, "set_content", "aset_content", partial(self.aset_content, content, **options)
        )

    def set_content_from_stream(
        self: _AsyncContent, stream: ByteSource, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef:
        """Blocking :meth:`aset_content_from_stream`: ``stream`` (a binary file,
        an iterator of bytes, ...) is read in chunks, with bounded memory."""
        call = partial(self.aset_content_from_stream, stream, **options)
        return run_blocking(self, "set_content_from_stream", "aset_content_from_stream", call)

    def replace_content(
        self: _AsyncContent, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> ReplaceContentResult:
        """Blocking :meth:`areplace_content`: the previous and the new ref."""
        call = partial(self.areplace_content, content, **options)
        return run_blocking(self, "replace_content", "areplace_content", call)

    def get_content(self: _AsyncContent, *, verify: bool = False) -> bytes | None:
        """Blocking :meth:`aget_content`: the content, or ``None`` without a ref."""
        call = partial(self.aget_content, verify=verify)
        return run_blocking(self, "get_content", "aget_content", call)

    def get_content_text(
        self: _AsyncContent, encoding: str = "utf-8", *, verify: bool = False
    ) -> str | None:
        """Blocking :meth:`aget_content_text`: the decoded content, or ``None``."""
        call = partial(self.aget_content_text, encoding, verify=verify)
        return run_blocking(self, "get_content_text", "aget_content_text", call)

    def open_content(self: _AsyncContent, *, verify: bool = False) -> io.BufferedIOBase | None:
        """The content as a read-only binary file (``with doc.open_content() as
        file:``), or ``None`` without a ref, as in 0.1.0 (:meth:`aopen_content`
        raises instead). Reads as ``granite_storage.sync.StorageManager.open``.

        :raises ObjectNotFoundError: at once, if the ref's object is missing.
        """
        ref = run_blocking(self, "open_content", "aopen_content", self.stored_content.aget_ref)
        if ref is None:
            return None
        return sync_manager_of(type(self), "open_content", "aopen_content").open(ref, verify=verify)


def run_blocking(
    instance: object, name: str, async_name: str, call: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """``await call()`` on the loop of ``instance``'s sync manager, for
    ``instance.<name>()``, the blocking twin of ``<async_name>``."""
    cls = type(instance)
    instead = f"`await obj.{async_name}(...)`"
    check_no_running_loop(f"{cls.__name__}.{name}", instead)
    if async_object_session(instance) is not None:
        raise SyncInEventLoopError(
            f"{cls.__name__}.{name}() was called for a row of an AsyncSession, whose I/O runs "
            f"on that session's event loop; {instead} there instead"
        )
    manager = sync_manager_of(cls, name, async_name)
    follow_with_sync_manager(instance, manager)
    return run_lending_this_thread(manager.submit, call)


def follow_with_sync_manager(instance: object, manager: BlockingStorageManager) -> None:
    """Make the deletions that follow the transaction of ``instance``'s sync
    ``Session`` start on ``manager``'s loop (its hooks run in a thread
    without an event loop)."""
    session = object_session(instance)
    if session is not None:
        start_cleanups_with(session, manager.submit)


def before_clear(instance: _AsyncContent) -> None:
    """For a row of a sync ``Session``: load an expired ref in this thread,
    as reading any attribute would, and follow the ``Session`` with the sync
    manager's loop, if one is configured."""
    if object_session(instance) is None or async_object_session(instance) is not None:
        return
    getattr(instance, instance.stored_content.spec.ref_attr)
    manager: BlockingStorageManager | None = getattr(type(instance), SYNC_MANAGER_ATTRIBUTE, None)
    if manager is not None:
        follow_with_sync_manager(instance, manager)


def sync_manager_of(cls: type[Any], name: str, async_name: str) -> BlockingStorageManager:
    """The ``granite_storage.sync.StorageManager`` ``cls`` was configured with.

    :raises ConfigurationError: if it has none (an async one, or none at all).
    """
    manager: BlockingStorageManager | None = getattr(cls, SYNC_MANAGER_ATTRIBUTE, None)
    if manager is None:  # (configure_storage_manager checked what it set)
        raise ConfigurationError(
            f"{cls.__name__}.{name}() blocks, so it needs a granite_storage.sync.StorageManager: "
            f"call {cls.__name__}.configure_storage_manager(granite_storage.sync.StorageManager("
            "backends=..., policies=...)) in sync code; async code awaits "
            f"`obj.{async_name}(...)` with the async manager it configured"
        )
    return manager
