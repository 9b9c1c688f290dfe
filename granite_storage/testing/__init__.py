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

__all__ = ["local_manager", "memory_manager"]


def _manager(
    backend_key: str, backend: StorageBackend, storage_keys: tuple[str, ...], max_size: int | None
) -> StorageManager:
    if not storage_keys:
        raise ValueError("name at least one storage key, e.g. memory_manager('documents')")
    policies = {
        key: StoragePolicy(key, backend_key, max_size=max_size, key_prefix=key)
        for key in storage_keys
    }
    return StorageManager(backends={backend_key: backend}, policies=policies)


def memory_manager(
    *storage_keys: str,
    max_size: int | None = None,
    clock: Callable[[], datetime] | None = None,
) -> StorageManager:
    """A manager whose policies (one per storage key, each with its own key
    prefix) all write to one :class:`MemoryStorageBackend` under the backend
    key ``"memory"``. ``clock`` lets a test age objects without sleeping."""
    return _manager("memory", MemoryStorageBackend(clock=clock), storage_keys, max_size)


def local_manager(
    root_dir: str | os.PathLike[str], *storage_keys: str, max_size: int | None = None
) -> StorageManager:
    """Like :func:`memory_manager`, on a :class:`LocalStorageBackend` in
    ``root_dir`` (without fsync: tests do not need durability), backend key
    ``"local"``."""
    return _manager("local", LocalStorageBackend(root_dir, fsync=False), storage_keys, max_size)
