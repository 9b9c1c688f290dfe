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
from collections.abc import Callable, Mapping
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
    extra_backends: Mapping[str, StorageBackend] | None = None,
) -> StorageManager:
    """A manager with ``backend``, registered under ``backend_key``, and the
    given policies.

    A storage key given as a string becomes
    ``StoragePolicy(key, backend_key, max_size=max_size, key_prefix=key)``;
    pass a :class:`StoragePolicy` for anything else::

        manager = manager_for(MemoryStorageBackend(), "avatars", "documents")
        manager = manager_for(backend, StoragePolicy("docs", "main", key_prefix=None))

    ``extra_backends`` registers more backends by key, for policies that
    write to them or refs that name them (moves between backends)::

        manager = manager_for(old, "docs", backend_key="old", extra_backends={"new": new})

    :raises ValueError: if no policy is given, or ``extra_backends`` has ``backend_key``.
    :raises ConfigurationError: if a policy names a backend key the manager lacks.
    """
    if not policies:
        raise ValueError("name at least one storage key, e.g. manager_for(backend, 'documents')")
    others = dict(extra_backends or {})
    if backend_key in others:
        raise ValueError(f"extra_backends must not name backend_key {backend_key!r}")
    built = [
        StoragePolicy(p, backend_key, max_size=max_size, key_prefix=p) if isinstance(p, str) else p
        for p in policies
    ]
    return StorageManager(
        backends={backend_key: backend, **others},
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
