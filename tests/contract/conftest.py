"""The backend-agnostic contract suite: every backend must pass every test here.

A backend joins by adding a parameter to the ``backend`` fixture and an
async fixture named ``<param>_contract_backend``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import StorageBackend
from tests.backends.conftest import open_s3_backend


@pytest.fixture
async def memory_contract_backend() -> StorageBackend:
    return MemoryStorageBackend()


@pytest.fixture
async def local_contract_backend(tmp_path: Path) -> StorageBackend:
    return LocalStorageBackend(tmp_path / "storage", fsync=False)


@pytest.fixture
async def s3_contract_backend(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> AsyncIterator[StorageBackend]:
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        yield backend


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest) -> StorageBackend:
    # Sync on purpose: services start (blocking) outside the event loop.
    return cast(StorageBackend, request.getfixturevalue(f"{request.param}_contract_backend"))
