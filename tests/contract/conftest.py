"""The backend-agnostic contract suite: every backend must pass every test here.

A backend joins by adding a parameter to the ``backend`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from granite_storage import StorageManager, StoragePolicy
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import StorageBackend

MAX_SIZE = 64 * 1024


@pytest.fixture(params=["memory", "local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    if request.param == "memory":
        yield MemoryStorageBackend()
    else:
        yield LocalStorageBackend(tmp_path / "storage", fsync=False)


@pytest.fixture
async def manager(backend: StorageBackend) -> AsyncIterator[StorageManager]:
    async with StorageManager(
        backends={"main": backend},
        policies={
            "docs": StoragePolicy("docs", "main", max_size=MAX_SIZE, key_prefix="docs"),
            "docs2": StoragePolicy("docs2", "main", key_prefix="docs2"),
        },
    ) as manager:
        yield manager
