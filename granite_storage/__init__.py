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
from granite_storage.manager import StorageManager as StorageManager
from granite_storage.policy import StoragePolicy as StoragePolicy
from granite_storage.refs import StoredObjectRef as StoredObjectRef

__version__ = "0.2.0.dev0"

__all__ = [
    "ChecksumMismatchError",
    "ContentTooLargeError",
    "InvalidLocationError",
    "ObjectNotFoundError",
    "StorageError",
    "StorageManager",
    "StoragePolicy",
    "StoredObjectRef",
]
