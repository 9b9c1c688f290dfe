# Vendored from granite-storage 0.1.0's sdist (tests/test_gc.py), MIT licence: see
# tests/compat/LICENSE. Changed: the import lines only (granite_storage.sync,
# and tests.compat.moto_server for mock_aws; sorted) and these header lines, which
# keep ruff off the original code. Expected failures: tests/compat/conftest.py.
# fmt: off
# ruff: noqa: PIE807

from pathlib import Path

from granite_storage import StorageManager, StoragePolicy
from granite_storage.sync import LocalStorageBackend, StorageGarbageCollector


def test_gc_detects_orphans(tmp_path: Path) -> None:
    backend = LocalStorageBackend(tmp_path)
    manager = StorageManager(
        backends={"local": backend},
        policies={
            "dummy_content": StoragePolicy(
                storage_key="dummy_content", backend_key="local", key_prefix="tests"
            )
        },
    )
    ref = backend.put_bytes(key="tests/model/aa/bb/id/file.txt", content=b"ok")
    ref.storage_key = "dummy_content"

    gc = StorageGarbageCollector(manager, iter_references=lambda: [])
    report = gc.collect(storage_key="dummy_content", dry_run=True)
    assert report.orphaned == 1
