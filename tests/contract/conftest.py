"""The backend-agnostic contract suite: every backend must pass every test here.

A backend joins by adding a parameter to the ``backend`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import StorageBackend


@pytest.fixture(params=["memory", "local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    if request.param == "memory":
        yield MemoryStorageBackend()
    else:
        yield LocalStorageBackend(tmp_path / "storage", fsync=False)
