"""A pytest plugin with storage fixtures: ``pytest_plugins = ["granite_storage.testing.fixtures"]``.

Fixtures:

* ``granite_storage_keys``: the storage keys the managers get, default
  ``("default",)``; override it in your conftest.py to name your own.
* ``memory_storage_manager``: a :func:`~granite_storage.testing.memory_manager`,
  closed after the test.
* ``local_storage_manager``: a :func:`~granite_storage.testing.local_manager`
  in the test's ``tmp_path``, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from granite_storage.manager import StorageManager
from granite_storage.testing import local_manager, memory_manager

__all__ = ["granite_storage_keys", "local_storage_manager", "memory_storage_manager"]


@pytest.fixture
def granite_storage_keys() -> tuple[str, ...]:
    """The storage keys of the fixture managers; override to name your own."""
    return ("default",)


@pytest.fixture
async def memory_storage_manager(
    granite_storage_keys: tuple[str, ...],
) -> AsyncIterator[StorageManager]:
    """A manager on an in-memory backend."""
    async with memory_manager(*granite_storage_keys) as manager:
        yield manager


@pytest.fixture
async def local_storage_manager(
    granite_storage_keys: tuple[str, ...], tmp_path: Path
) -> AsyncIterator[StorageManager]:
    """A manager on a local backend in ``tmp_path / "storage"``."""
    async with local_manager(tmp_path / "storage", *granite_storage_keys) as manager:
        yield manager
