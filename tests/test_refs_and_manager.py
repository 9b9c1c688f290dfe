"""StoredObjectRef round trips (including 0.1.0's dicts) and manager configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from granite_storage import (
    StorageError,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
)
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import ConfigurationError, OperationNotSupportedError
from granite_storage.testing import manager_for, memory_manager

V010_DICT = {  # exactly what granite-storage 0.1.0's dataclasses.asdict wrote
    "storage_key": "documents",
    "backend": "local",
    "location": "docs/document/1b6f-3c1a2b4d.pdf",
    "size": 12,
    "checksum": "sha256:abc",
    "content_type": "application/pdf",
    "original_filename": "report.pdf",
    "created_at": "2025-01-01T00:00:00+00:00",
    "extra": None,
}


def test_round_trip_through_json() -> None:
    ref = StoredObjectRef(
        "docs",
        "local",
        "docs/a/1/f/x.pdf",
        3,
        "sha256:00",
        "text/plain",
        "ä.pdf",
        "2026-01-01T00:00:00+00:00",
        {"k": [1, 2]},
    )
    assert StoredObjectRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_loads_0_1_0_dicts_and_ignores_unknown_keys() -> None:
    ref = StoredObjectRef.from_dict({**V010_DICT, "added_in_a_later_version": True})
    assert ref.location == V010_DICT["location"]
    assert ref.to_dict() == V010_DICT


def test_loads_a_minimal_0_1_0_dict() -> None:
    ref = StoredObjectRef.from_dict(
        {
            "storage_key": "s",
            "backend": "local",
            "location": "a/b",
            "size": 1,
            "checksum": "sha256:00",
        }
    )
    assert ref.content_type is None and ref.extra is None and ref.created_at is None


def test_loads_the_text_to_ref_migration_rows() -> None:
    ref = StoredObjectRef.from_dict({"legacy_inline_text": "# Title"})
    assert ref.location == ""
    assert ref.legacy_inline_text == "# Title"


@pytest.mark.parametrize("bad", [[1, 2], "x", {"location": 5}, {"location": "a", "size": "big"}])
def test_invalid_dicts_raise_storage_error(bad: object) -> None:
    with pytest.raises(StorageError):
        StoredObjectRef.from_dict(bad)  # type: ignore[arg-type]


def test_refs_are_immutable_and_hashable() -> None:
    ref = StoredObjectRef.from_dict(V010_DICT)
    with pytest.raises(AttributeError):
        ref.size = 5  # type: ignore[misc]
    assert ref.replace(size=5).size == 5
    with_extra = ref.replace(extra={"a": 1})  # a dict field, and still hashable
    assert {ref, with_extra, StoredObjectRef.from_dict(V010_DICT)} == {ref, with_extra}


def test_manager_refuses_inconsistent_configuration() -> None:
    backend = MemoryStorageBackend()
    with pytest.raises(ConfigurationError, match="not one of the manager's backends"):
        StorageManager(backends={"m": backend}, policies={"a": StoragePolicy("a", "nope")})
    with pytest.raises(ConfigurationError, match="must be equal"):
        StorageManager(backends={"m": backend}, policies={"a": StoragePolicy("b", "m")})


def test_unknown_storage_key_is_a_storage_error() -> None:
    manager = memory_manager("a")
    with pytest.raises(StorageError, match="unknown storage key 'nope'"):
        manager.get_policy("nope")
    assert manager.get_backend_for_policy(manager.get_policy("a")) is manager.backends["memory"]


def test_policy_validation() -> None:
    assert StoragePolicy("a", "m", 10, "/docs/").key_prefix == "docs"
    with pytest.raises(ValueError, match="max_size"):
        StoragePolicy("a", "m", -1)
    with pytest.raises(ValueError, match="prefix"):
        StoragePolicy("a", "m", key_prefix="../up")


async def test_filenames_and_content_types_lose_only_unstorable_characters() -> None:
    manager = memory_manager("a")
    ref = await manager.aput_bytes(
        storage_key="a",
        model_name="m",
        entity_id=1,
        field_name="f",
        content=b"x",
        original_filename="rép\x00ort\ud800.pdf",
        content_type="text/plain\x00",
    )
    assert ref.original_filename == "réport.pdf"
    assert ref.content_type == "text/plain"
    json.dumps(ref.to_dict()).encode("utf-8")


async def test_content_type_is_guessed_from_the_filename() -> None:
    # With detection off (as in 0.1.0), the file name decides.
    off = StoragePolicy("a", "main", key_prefix="a", detect_content_type=False)
    manager = manager_for(MemoryStorageBackend(), off)
    where: dict[str, Any] = {
        "storage_key": "a",
        "model_name": "m",
        "entity_id": 1,
        "field_name": "f",
    }
    png = await manager.aput_bytes(**where, content=b"x", original_filename="photo.png")
    unknown = await manager.aput_bytes(**where, content=b"x")
    assert (png.content_type, unknown.content_type) == ("image/png", "application/octet-stream")
    # With detection on (the default), the bytes decide: "x" is text, whatever the name says.
    detected = await memory_manager("a").aput_bytes(
        **where, content=b"x", original_filename="photo.png"
    )
    assert detected.content_type == "text/plain"


async def test_legacy_inline_refs_are_served_by_the_manager() -> None:
    manager = memory_manager("a")
    ref = StoredObjectRef.from_dict({"legacy_inline_text": "héllo"})
    assert await manager.aget(ref) == "héllo".encode()
    assert await manager.aexists(ref)
    await manager.adelete(ref)  # nothing to delete, and no error


async def test_memory_and_local_cannot_presign() -> None:
    manager = memory_manager("a")
    ref = await manager.aput_bytes(
        storage_key="a", model_name="m", entity_id=1, field_name="f", content=b"x"
    )
    with pytest.raises(OperationNotSupportedError, match="cannot presign"):
        await manager.apresigned_url(ref)
    with pytest.raises(OperationNotSupportedError):
        await manager.apresigned_upload(
            storage_key="a", model_name="m", entity_id=1, field_name="f"
        )
