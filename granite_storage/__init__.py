"""granite_storage: async-first file storage for SQLAlchemy 2 applications."""

from granite_storage.errors import (
    ChecksumMismatchError as ChecksumMismatchError,
)
from granite_storage.errors import (
    ContentTooLargeError as ContentTooLargeError,
)
from granite_storage.errors import (
    InvalidLocationError as InvalidLocationError,
)
from granite_storage.errors import (
    ObjectNotFoundError as ObjectNotFoundError,
)
from granite_storage.errors import (
    StorageError as StorageError,
)
from granite_storage.integrations.sqlalchemy import (
    ReplaceContentResult as ReplaceContentResult,
)
from granite_storage.integrations.sqlalchemy import (
    StorageJSONType as StorageJSONType,
)
from granite_storage.integrations.sqlalchemy import (
    StoredContentMixin as StoredContentMixin,
)
from granite_storage.integrations.sqlalchemy import (
    StoredObjectRefType as StoredObjectRefType,
)
from granite_storage.integrations.sqlalchemy import (
    portable_storage_ref_type as portable_storage_ref_type,
)
from granite_storage.manager import StorageManager as StorageManager
from granite_storage.policy import StoragePolicy as StoragePolicy
from granite_storage.refs import StoredObjectRef as StoredObjectRef

__version__ = "0.2.0.dev0"

__all__ = [
    "ChecksumMismatchError",
    "ContentTooLargeError",
    "InvalidLocationError",
    "ObjectNotFoundError",
    "ReplaceContentResult",
    "StorageError",
    "StorageJSONType",
    "StorageManager",
    "StoragePolicy",
    "StoredContentMixin",
    "StoredObjectRef",
    "StoredObjectRefType",
    "portable_storage_ref_type",
]
