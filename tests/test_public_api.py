"""The names ../shared/CONTRACT.md promises users, importable where it says."""

from __future__ import annotations

import importlib
import inspect

import pytest

import granite_storage

CONTRACT_TOP_LEVEL = {
    "StorageManager",
    "StoragePolicy",
    "StoredObjectRef",
    "StoredObjectRefType",
    "StorageJSONType",
    "portable_storage_ref_type",
    "StoredContentMixin",
    "ReplaceContentResult",
    "StorageError",
    "ContentTooLargeError",
    "ObjectNotFoundError",
    "ChecksumMismatchError",
    "InvalidLocationError",
}
CONTRACT_MODULES = {
    "granite_storage.backends.local": ["LocalStorageBackend"],
    "granite_storage.backends.s3": ["S3StorageBackend"],
    "granite_storage.backends.memory": ["MemoryStorageBackend"],
    "granite_storage.gc": ["StorageGarbageCollector", "GarbageCollectionReport"],
    "granite_storage.integrations.sqlalchemy": ["iter_model_storage_refs"],
    # 0.1.0 migrations import these; they keep working
    "granite_storage.types": ["StoredObjectRefType"],
    "granite_storage.alembic_helpers": ["portable_storage_ref_type"],
}


def test_top_level_all_is_the_contract() -> None:
    assert set(granite_storage.__all__) == CONTRACT_TOP_LEVEL
    for name in CONTRACT_TOP_LEVEL:
        assert getattr(granite_storage, name) is not None


@pytest.mark.parametrize(("module", "names"), CONTRACT_MODULES.items())
def test_contract_modules(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_every_error_derives_from_storage_error_and_is_distinct() -> None:
    errors = [
        granite_storage.ContentTooLargeError,
        granite_storage.ObjectNotFoundError,
        granite_storage.InvalidLocationError,
        granite_storage.ChecksumMismatchError,
    ]
    assert all(issubclass(e, granite_storage.StorageError) for e in errors)
    assert len(set(errors)) == 4
    assert [e.status_code for e in errors[:3]] == [413, 404, 400]


def test_policy_positional_order() -> None:
    policy = granite_storage.StoragePolicy("docs", "local", 10, "docs")
    assert (policy.storage_key, policy.backend_key, policy.max_size, policy.key_prefix) == (
        "docs",
        "local",
        10,
        "docs",
    )


def test_io_methods_are_async_and_a_prefixed() -> None:
    manager = granite_storage.StorageManager
    for name in ("aput_bytes", "aput_stream", "aget", "adelete", "aexists", "aclose"):
        assert inspect.iscoroutinefunction(getattr(manager, name)), name
    mixin = granite_storage.StoredContentMixin
    for name in (
        "aset_content",
        "aset_content_from_stream",
        "aset_content_from_uploadfile",
        "areplace_content",
        "aget_content",
        "aget_content_text",
    ):
        assert inspect.iscoroutinefunction(getattr(mixin, name)), name
    assert not inspect.iscoroutinefunction(mixin.clear_content_reference)
