"""Helpers for the test suites of applications that use granite_storage.

Factories build a manager on an in-memory or a temporary local backend::

    from granite_storage.testing import memory_manager

    manager = memory_manager("avatars", "documents", max_size=1 << 20)

and a pytest plugin provides ready fixtures; enable it in ``conftest.py``::

    pytest_plugins = ["granite_storage.testing.fixtures"]

The backend contract suite for third-party backends is in
:mod:`granite_storage.testing.contract`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.manager import StorageManager
from granite_storage.policy import StoragePolicy
from granite_storage.streams import DEFAULT_CHUNK_SIZE

__all__ = ["local_manager", "manager_for", "memory_manager"]


def manager_for(
    backend: StorageBackend,
    *policies: str | StoragePolicy,
    backend_key: str = "main",
    max_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> StorageManager:
    """A manager with one backend, registered under ``backend_key``, and the
    given policies.

    A storage key given as a string becomes
    ``StoragePolicy(key, backend_key, max_size=max_size, key_prefix=key)``;
    pass a :class:`StoragePolicy` (naming ``backend_key``) for anything else::

        manager = manager_for(MemoryStorageBackend(), "avatars", "documents")
        manager = manager_for(backend, StoragePolicy("docs", "main", key_prefix=None))

    :raises ValueError: if no policy is given.
    :raises ConfigurationError: if a policy names another backend key.
    """
    if not policies:
        raise ValueError("name at least one storage key, e.g. manager_for(backend, 'documents')")
    built = [
        StoragePolicy(p, backend_key, max_size=max_size, key_prefix=p) if isinstance(p, str) else p
        for p in policies
    ]
    return StorageManager(
        backends={backend_key: backend},
        policies={policy.storage_key: policy for policy in built},
        chunk_size=chunk_size,
    )


def memory_manager(
    *storage_keys: str,
    max_size: int | None = None,
    clock: Callable[[], datetime] | None = None,
) -> StorageManager:
    """A manager whose policies (one per storage key, each with its own key
    prefix) all write to one :class:`MemoryStorageBackend` under the backend
    key ``"memory"``. ``clock`` lets a test age objects without sleeping."""
    return manager_for(
        MemoryStorageBackend(clock=clock), *storage_keys, backend_key="memory", max_size=max_size
    )


def local_manager(
    root_dir: str | os.PathLike[str], *storage_keys: str, max_size: int | None = None
) -> StorageManager:
    """Like :func:`memory_manager`, on a :class:`LocalStorageBackend` in
    ``root_dir`` (without fsync: tests do not need durability), backend key
    ``"local"``."""
    backend = LocalStorageBackend(root_dir, fsync=False)
    return manager_for(backend, *storage_keys, backend_key="local", max_size=max_size)
