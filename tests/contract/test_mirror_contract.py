"""MirrorBackend runs the exported contract suite: over memory backends, and
local disk mirrored to S3."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.backends.mirror import MirrorBackend
from granite_storage.contracts import StorageBackend
from granite_storage.testing.contract import BackendContractTests
from tests.backends.conftest import open_s3_backend


class TestMirrorOfMemory(BackendContractTests):
    @pytest.fixture
    async def backend(self) -> StorageBackend:
        return MirrorBackend(MemoryStorageBackend(), MemoryStorageBackend(), MemoryStorageBackend())


@pytest.mark.s3
class TestMirrorOfLocalToS3(BackendContractTests):
    @pytest.fixture
    async def backend(  # type: ignore[override]
        self, tmp_path: Path, s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
    ) -> AsyncIterator[StorageBackend]:
        local = LocalStorageBackend(tmp_path / "storage", fsync=False)
        async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as s3:
            yield MirrorBackend(local, s3)
