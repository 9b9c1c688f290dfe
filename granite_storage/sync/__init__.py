"""The sync entry point: granite-storage 0.1.0's blocking API over the async core.

For scripts, Celery tasks, Flask views, Alembic data migrations and other sync
code::

    from granite_storage.sync import LocalStorageBackend, StorageManager, StoragePolicy

    with StorageManager(
        backends={"local": LocalStorageBackend("./var/storage")},
        policies={"docs": StoragePolicy("docs", "local", key_prefix="docs")},
    ) as manager:
        ref = manager.put_bytes(storage_key="docs", model_name="document",
                                entity_id=1, field_name="file", content=b"...")
        with manager.open(ref) as file:
            head = file.read(8192)

Every name granite-storage 0.1.0 documented is importable from here with its
sync signature. Nothing here is a second implementation: the manager runs
the async :class:`granite_storage.StorageManager` on an event loop in a
thread of its own, and backends, policies, refs and errors are the async
core's own classes. Calling a blocking method from a thread that runs an
event loop raises :class:`SyncInEventLoopError`, which names the coroutine
to await instead. See the "Sync code" page of the documentation.
"""

from typing import TYPE_CHECKING, Any

from granite_storage.backends.local import LocalStorageBackend as LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend as MemoryStorageBackend
from granite_storage.contracts import StorageBackend as StorageBackend
from granite_storage.errors import ChecksumMismatchError as ChecksumMismatchError
from granite_storage.errors import ContentTooLargeError as ContentTooLargeError
from granite_storage.errors import InvalidLocationError as InvalidLocationError
from granite_storage.errors import ObjectNotFoundError as ObjectNotFoundError
from granite_storage.errors import StorageError as StorageError
from granite_storage.errors import SyncInEventLoopError as SyncInEventLoopError
from granite_storage.gc import GarbageCollectionReport as GarbageCollectionReport
from granite_storage.integrations.sqlalchemy import ReplaceContentResult as ReplaceContentResult
from granite_storage.integrations.sqlalchemy import StorageJSONType as StorageJSONType
from granite_storage.integrations.sqlalchemy import StoredContentMixin as StoredContentMixin
from granite_storage.integrations.sqlalchemy import StoredObjectRefType as StoredObjectRefType
from granite_storage.integrations.sqlalchemy import (
    portable_storage_ref_type as portable_storage_ref_type,
)
from granite_storage.policy import StoragePolicy as StoragePolicy
from granite_storage.refs import StoredObjectRef as StoredObjectRef
from granite_storage.sync._gc import StorageGarbageCollector as StorageGarbageCollector
from granite_storage.sync._gc import iter_model_storage_refs as iter_model_storage_refs
from granite_storage.sync._manager import StorageManager as StorageManager
from granite_storage.sync._sessions import drain_pending_deletions as drain_pending_deletions
from granite_storage.sync._streams import SizeLimitedStream as SizeLimitedStream

if TYPE_CHECKING:
    from granite_storage.backends.s3 import S3StorageBackend as S3StorageBackend

__all__ = [
    "ChecksumMismatchError",
    "ContentTooLargeError",
    "GarbageCollectionReport",
    "InvalidLocationError",
    "LocalStorageBackend",
    "MemoryStorageBackend",
    "ObjectNotFoundError",
    "ReplaceContentResult",
    "S3StorageBackend",
    "SizeLimitedStream",
    "StorageBackend",
    "StorageError",
    "StorageGarbageCollector",
    "StorageJSONType",
    "StorageManager",
    "StoragePolicy",
    "StoredContentMixin",
    "StoredObjectRef",
    "StoredObjectRefType",
    "SyncInEventLoopError",
    "drain_pending_deletions",
    "iter_model_storage_refs",
    "portable_storage_ref_type",
]


def __getattr__(name: str) -> Any:
    # S3StorageBackend needs aioboto3 (the "s3" extra): imported on first use only.
    if name == "S3StorageBackend":
        from granite_storage.backends.s3 import S3StorageBackend

        return S3StorageBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
