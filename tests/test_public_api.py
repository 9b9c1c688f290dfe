"""The names ../shared/CONTRACT.md promises users, importable where it says."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import granite_storage
from granite_storage import errors

PACKAGE = Path(granite_storage.__file__).parent
# Error classes inherit from one of these. (A private BaseException that only
# unwinds a worker thread, _concurrency._Stopped, is a signal, not an error.)
EXCEPTION_BASES = {"Exception", *errors.__all__}
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
    "granite_storage.direct": ["DirectUpload"],
    "granite_storage.integrations.fastapi": ["direct_upload_router"],
    # 0.1.0 migrations import these; they keep working
    "granite_storage.types": ["StoredObjectRefType"],
    "granite_storage.alembic_helpers": ["portable_storage_ref_type"],
}


def test_top_level_all_is_the_contract_and_every_error() -> None:
    assert set(granite_storage.__all__) == CONTRACT_TOP_LEVEL | set(errors.__all__)
    for name in granite_storage.__all__:
        assert getattr(granite_storage, name) is not None


def test_every_exception_class_lives_in_errors() -> None:
    """errors.py is the one home of the exceptions; other modules import them."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and path.name != "errors.py":
                bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
                assert not bases & EXCEPTION_BASES, f"{path}: class {node.name}"
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StorageError), name
        assert getattr(granite_storage, name) is getattr(errors, name)
    # the old import paths give the same classes
    fastapi = importlib.import_module("granite_storage.integrations.fastapi")
    sqlalchemy = importlib.import_module("granite_storage.integrations.sqlalchemy")
    assert fastapi.InvalidUploadError is errors.InvalidUploadError
    assert sqlalchemy.LedgerConflictError is errors.LedgerConflictError


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


def test_the_a_prefix_marks_coroutines_and_async_context_managers_only() -> None:
    """A plain ``def`` named like an async method must return an async context
    manager (``aopen``) or be abstract (its implementations are async
    generators); one that merely returns an iterator is named without ``a``."""
    async_verb = re.compile(r"a(iter|open|put|get|delete|exists|close|coalesce|collect|read|run)")
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and async_verb.match(node.name):
                returns = ast.unparse(node.returns) if node.returns else ""
                abstract = any("abstractmethod" in ast.unparse(d) for d in node.decorator_list)
                assert abstract or "AsyncContextManager" in returns, f"{path}: {node.name}"
