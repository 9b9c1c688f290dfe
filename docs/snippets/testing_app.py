"""Testing application code with granite_storage.testing: factories and pytest fixtures.

In your project this is a test module, and the root conftest.py enables the plugin with
``pytest_plugins = ["granite_storage.testing.fixtures"]``; the ``__main__`` block only
lets the documentation's tests run it as a script (passing ``-p`` instead).
"""

# --8<-- [start:tests]
import pytest

from granite_storage import ContentTooLargeError, StorageManager, StoredObjectRef
from granite_storage.testing import memory_manager


async def save_avatar(manager: StorageManager, user_id: int, data: bytes) -> StoredObjectRef:
    """The application code under test."""
    return await manager.aput_bytes(
        storage_key="avatars",
        model_name="user",
        entity_id=user_id,
        field_name="avatar",
        content=data,
        original_filename="avatar.png",
    )


@pytest.fixture
def granite_storage_keys() -> tuple[str, ...]:
    return ("avatars",)  # the policies the plugin's managers get


async def test_round_trip(memory_storage_manager: StorageManager) -> None:
    ref = await save_avatar(memory_storage_manager, 1, b"\x89PNG")
    assert ref.location.startswith("avatars/user/1/avatar/")
    assert await memory_storage_manager.aget(ref, verify=True) == b"\x89PNG"


async def test_on_disk(local_storage_manager: StorageManager) -> None:
    ref = await save_avatar(local_storage_manager, 1, b"\x89PNG")
    assert await local_storage_manager.aexists(ref)


async def test_size_limit() -> None:
    async with memory_manager("avatars", max_size=10) as manager:
        with pytest.raises(ContentTooLargeError):
            await save_avatar(manager, 1, b"x" * 11)


# --8<-- [end:tests]

if __name__ == "__main__":
    import subprocess
    import sys

    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    command += ["-p", "granite_storage.testing.fixtures"]
    if subprocess.run(command, check=False).returncode != 0:
        sys.exit("the tests failed")
    print("testing app: ok")
