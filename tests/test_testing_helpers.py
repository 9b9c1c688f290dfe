"""granite_storage.testing: factories and the pytest plugin's fixtures."""

from __future__ import annotations

import pytest

from granite_storage import StorageManager
from granite_storage.testing import local_manager, memory_manager

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
