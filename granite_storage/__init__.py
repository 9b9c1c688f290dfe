"""granite_storage: async-first file storage for SQLAlchemy 2 applications."""

from granite_storage.errors import (
    BackendError,
    ChecksumMismatchError,
    ConfigurationError,
    ContentTooLargeError,
    ContentTypeNotAllowedError,
    FactoryError,
    InvalidLocationError,
    InvalidUploadError,
    LedgerConflictError,
    LockUnavailableError,
    ObjectNotFoundError,
    OperationNotSupportedError,
    StorageError,
    SyncInEventLoopError,
    UnsafeCollectionError,
    UploadValidationError,
)
from granite_storage.integrations.sqlalchemy import (
    ReplaceContentResult,
    StorageJSONType,
    StoredContentMixin,
    StoredObjectRefType,
    portable_storage_ref_type,
)
from granite_storage.manager import StorageManager
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef

__version__ = "0.2.0.dev0"

__all__ = [
    "BackendError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "ContentTooLargeError",
    "ContentTypeNotAllowedError",
    "FactoryError",
    "InvalidLocationError",
    "InvalidUploadError",
    "LedgerConflictError",
    "LockUnavailableError",
    "ObjectNotFoundError",
    "OperationNotSupportedError",
    "ReplaceContentResult",
    "StorageError",
    "StorageJSONType",
    "StorageManager",
    "StoragePolicy",
    "StoredContentMixin",
    "StoredObjectRef",
    "StoredObjectRefType",
    "SyncInEventLoopError",
    "UnsafeCollectionError",
    "UploadValidationError",
    "portable_storage_ref_type",
]
