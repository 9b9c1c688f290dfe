"""granite_storage.testing: factories and the pytest plugin's fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from granite_storage import ConfigurationError, StorageManager, StoragePolicy
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.testing import local_manager, manager_for, memory_manager

pytest_plugins = ["granite_storage.testing.fixtures"]


@pytest.fixture
def granite_storage_keys() -> tuple[str, ...]:
    return ("avatars", "documents")


async def test_fixture_managers_store_per_policy_prefix(
    memory_storage_manager: StorageManager, local_storage_manager: StorageManager
) -> None:
    for manager in (memory_storage_manager, local_storage_manager):
        assert sorted(manager.policies) == ["avatars", "documents"]
        ref = await manager.aput_bytes(
            storage_key="avatars",
            model_name="user",
            entity_id=7,
            field_name="avatar",
            content=b"png",
        )
        assert ref.location.startswith("avatars/user/7/avatar/")
        assert await manager.aget(ref) == b"png"


def test_factories_need_a_storage_key(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="at least one storage key"):
        memory_manager()
    manager = local_manager("unused-dir", "docs", max_size=5)
    assert manager.get_policy("docs").max_size == 5


async def test_manager_for_mixes_storage_keys_and_policies() -> None:
    backend = MemoryStorageBackend()
    manager = manager_for(
        backend, "avatars", StoragePolicy("docs", "store", key_prefix=None), backend_key="store",
        max_size=3, chunk_size=2,
    )  # fmt: skip
    assert manager.backends == {"store": backend}
    assert manager.chunk_size == 2
    assert manager.get_policy("avatars") == StoragePolicy("avatars", "store", 3, "avatars")
    assert manager.get_policy("docs").key_prefix is None
    ref = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"abc"
    )
    assert ref.location.startswith("m/1/f/")
    with pytest.raises(ValueError, match="at least one storage key"):
        manager_for(backend)
    with pytest.raises(ConfigurationError):
        manager_for(backend, StoragePolicy("docs", "elsewhere"))


async def test_manager_for_registers_extra_backends_by_key() -> None:
    old, new = MemoryStorageBackend(), MemoryStorageBackend()
    manager = manager_for(old, "docs", backend_key="old", extra_backends={"new": new})
    assert manager.backends == {"old": old, "new": new}
    assert manager.get_policy("docs") == StoragePolicy("docs", "old", key_prefix="docs")
    ref = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"abc"
    )
    await new.aput_stream(key=ref.location, chunks=_chunks(b"moved"))
    assert await manager.aget(ref.replace(backend="new")) == b"moved"  # a ref names its backend
    on_new = manager_for(old, StoragePolicy("docs", "new"), extra_backends={"new": new})
    assert on_new.get_backend_for_policy(on_new.get_policy("docs")) is new
    with pytest.raises(ValueError, match="must not name backend_key 'main'"):
        manager_for(old, "docs", extra_backends={"main": new})


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
