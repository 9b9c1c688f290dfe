"""The sync manager: granite-storage 0.1.0's blocking methods over the async core."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

from granite_storage import manager as core
from granite_storage._concurrency import check_no_running_loop, runs_a_loop
from granite_storage.contracts import StorageBackend
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import DEFAULT_CHUNK_SIZE, ByteSource
from granite_storage.sync._portal import Portal
from granite_storage.sync._reader import PortalReader

T = TypeVar("T")


class StorageManager:
    """granite-storage 0.1.0's blocking manager, running the async
    :class:`granite_storage.StorageManager`, for sync code (scripts, Celery
    tasks, Flask views, Alembic migrations).

    It builds one async manager and runs each call on an event loop of its
    own, in a thread started on first use (``anyio``'s blocking portal).
    ``close()``, or leaving ``with StorageManager(...) as manager:``, closes
    the backends and stops that thread; a manager that is garbage collected or
    still open at interpreter exit is closed then. A closed manager starts a
    new loop when it is used again.

    Calling a method from a thread that runs an event loop raises
    :class:`~granite_storage.sync.SyncInEventLoopError` (a ``StorageError``)
    that says what to await instead.

    Parameters and errors are those of the async manager; the methods are
    safe to call from several threads at once.
    """

    def __init__(
        self,
        backends: Mapping[str, StorageBackend],
        policies: Mapping[str, StoragePolicy],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._core = core.StorageManager(backends, policies, chunk_size=chunk_size)
        self._portal = Portal()
        self._finalizer = weakref.finalize(self, _shut_down, self._portal, self._core)

    def __repr__(self) -> str:
        return f"sync.{self._core!r}"

    @property
    def async_manager(self) -> core.StorageManager:
        """The async :class:`granite_storage.StorageManager` this manager runs:
        the same backends and policies, for ``await`` in async code (on this
        manager's loop only, if a backend's client belongs to a loop, as S3's does)."""
        return self._core

    @property
    def backends(self) -> dict[str, StorageBackend]:
        """Backend instances by backend key."""
        return self._core.backends

    @property
    def policies(self) -> dict[str, StoragePolicy]:
        """Policies by storage key."""
        return self._core.policies

    def get_policy(self, storage_key: str) -> StoragePolicy:
        """The policy for ``storage_key``; ``StorageError`` for an unknown key."""
        return self._core.get_policy(storage_key)

    def get_backend_for_policy(self, policy: StoragePolicy) -> StorageBackend:
        """The backend that ``policy`` writes to."""
        return self._core.get_backend_for_policy(policy)

    def put_bytes(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        content: bytes,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredObjectRef:
        """Store ``content`` in a new object; see ``StorageManager.aput_bytes``."""
        put = partial(
            self._core.aput_bytes,
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            content=content,
            content_type=content_type,
            original_filename=original_filename,
            extra=extra,
        )
        return self.run("StorageManager.put_bytes", "await manager.aput_bytes(...)", put)

    def put_stream(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        stream: ByteSource,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredObjectRef:
        """Stream ``stream`` into a new object; see ``StorageManager.aput_stream``.

        A binary file or an iterator of bytes is read in chunks by a worker
        thread of the manager's loop, so memory stays bounded by a few chunks
        whatever the size; the policy's ``max_size`` is enforced while reading.
        """
        put = partial(
            self._core.aput_stream,
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            stream=stream,
            content_type=content_type,
            original_filename=original_filename,
            extra=extra,
        )
        return self.run("StorageManager.put_stream", "await manager.aput_stream(...)", put)

    def get(self, ref: StoredObjectRef, *, verify: bool = False) -> bytes:
        """The whole content of ``ref``'s object; see ``StorageManager.aget``."""
        get = partial(self._core.aget, ref, verify=verify)
        return self.run("StorageManager.get", "await manager.aget(ref)", get)

    def open(
        self,
        ref: StoredObjectRef,
        *,
        verify: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> PortalReader:
        """``ref``'s object as a read-only binary file; close it, or use
        ``with manager.open(ref) as file:``.

        ``read(n)`` returns ``n`` bytes (fewer only at the end), and from the
        first ``read(n)`` on the next pieces of ``n`` bytes are read ahead on
        the manager's loop, at most two, so memory stays bounded by about
        three times what you read at once; ``read()`` returns everything left,
        and iteration is by lines, as for any binary file. Read in large
        pieces (64 KiB to 1 MiB): each piece crosses between two threads.

        :raises ObjectNotFoundError: at once, if the object does not exist.
        """
        check_no_running_loop("StorageManager.open", "use async with manager.aopen(ref)")
        opened = self._core.aopen(ref, verify=verify, start=start, end=end)
        return PortalReader(self._portal, opened)

    def delete(self, ref: StoredObjectRef) -> None:
        """Delete ``ref``'s object; deleting a missing object is not an error."""
        self.run(
            "StorageManager.delete", "await manager.adelete(ref)", partial(self._core.adelete, ref)
        )

    def exists(self, ref: StoredObjectRef) -> bool:
        """Whether ``ref``'s object exists."""
        exists = partial(self._core.aexists, ref)
        return self.run("StorageManager.exists", "await manager.aexists(ref)", exists)

    def run(self, sync_name: str, instead: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``await call()`` on this manager's loop, blocking until it is done.

        The other sync wrappers go through here. ``sync_name`` names the
        blocking method and ``instead`` what async code does instead
        (``"await manager.aget(ref)"``), for the error raised when this is
        called inside an event loop.
        """
        check_no_running_loop(sync_name, instead)
        return self._portal.call(call)

    def submit(self, call: Callable[[], Coroutine[Any, Any, T]]) -> Future[T]:
        """Start ``await call()`` on this manager's loop and return at once.

        Safe from any thread, one that runs an event loop included: only
        waiting for the returned ``concurrent.futures.Future`` blocks.
        """
        return self._portal.submit(call)

    def close(self) -> None:
        """Close the backends and stop the manager's loop. Safe to call twice."""
        check_no_running_loop("StorageManager.close", "await manager.aclose()")
        self._portal.close(self._core.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _shut_down(portal: Portal, manager: core.StorageManager) -> None:
    """The safety net: close a manager nobody closed (garbage collected, or at exit)."""
    if runs_a_loop():
        # Collected on a thread that runs an event loop (an async app's, or
        # the portal's own): waiting there for the portal would stall that
        # loop, so another thread closes it.
        threading.Thread(
            target=_close_quietly,
            args=(portal, manager),
            name="granite-storage-sync-close",
            daemon=True,
        ).start()
    else:
        _close_quietly(portal, manager)


def _close_quietly(portal: Portal, manager: core.StorageManager) -> None:
    # anyio raises RuntimeError for a portal that already stopped: nothing to close.
    with contextlib.suppress(RuntimeError):
        portal.close(manager.aclose)
