"""The exceptions granite_storage raises.

Every exception derives from :class:`StorageError`, so ``except StorageError``
catches anything this library raises on purpose. Backend and operating-system
errors never escape raw: they are wrapped at one edge per backend, with the
original exception kept as ``__cause__``.
"""

from __future__ import annotations

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
    "StorageError",
    "SyncInEventLoopError",
    "UnsafeCollectionError",
    "UploadValidationError",
]


class StorageError(Exception):
    """Base class of every error raised by granite_storage.

    Raised as is for configuration mistakes such as an unknown storage key
    (``manager.get_policy("nope")``).
    """

    #: The HTTP status a web layer should answer with, when one fits.
    status_code: int = 500


class ConfigurationError(StorageError):
    """The manager, a policy or a backend is configured inconsistently.

    Examples: a policy names a backend that was not given to the manager, or
    a model uses the mixin before ``configure_storage_manager`` was called.
    """


class ContentTooLargeError(StorageError):
    """An upload passed its policy's ``max_size``.

    Raised the moment the limit is passed while streaming; nothing of the
    upload remains in the backend afterwards. Maps to HTTP 413.
    """

    status_code = 413

    def __init__(self, message: str, *, max_size: int | None = None) -> None:
        super().__init__(message)
        self.max_size = max_size


class ObjectNotFoundError(StorageError):
    """The object a ref points to does not exist in its backend. HTTP 404."""

    status_code = 404

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class InvalidLocationError(StorageError, ValueError):
    """A location, prefix or path segment cannot be made safe.

    Raised before any I/O for input that would escape a backend root or a
    policy prefix (``..``, absolute paths, NUL bytes, ...). HTTP 400.
    """

    status_code = 400


class ChecksumMismatchError(StorageError):
    """The bytes read back do not match the ref's size or sha256 checksum.

    Raised by ``aget(ref, verify=True)`` and by readers opened with
    ``verify=True`` once the whole object has been read.
    """

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class OperationNotSupportedError(StorageError):
    """The backend cannot do what was asked (for example presign a URL)."""

    status_code = 501


class BackendError(StorageError):
    """A backend or the operating system failed (disk full, permission
    denied, network error, server error). The original error is ``__cause__``."""


class UnsafeCollectionError(StorageError):
    """The garbage collector refused a run that could delete objects that do
    not belong to the policy being collected (for example two policies share
    a backend and no key prefix tells their objects apart)."""


class InvalidUploadError(StorageError):
    """The upload request is malformed: a broken multipart body, a body that
    ended early, a missing or repeated file part, too many form fields, or a
    field that is not UTF-8. HTTP 400; the message says what was wrong.

    Raised by the FastAPI integration's ``stream_upload`` and ``stream_upload_to``.
    """

    status_code = 400


class UploadValidationError(StorageError):
    """An upload was refused by its policy's validators (see
    :mod:`granite_storage.validation`). HTTP 422.

    Raised before the backend receives a byte when a validator refuses the
    head of the upload: nothing was stored. Raised by an after-upload hook
    once the object is complete: the object has been deleted. Validators
    raise it with a message that says what to change.
    """

    status_code = 422


class ContentTypeNotAllowedError(UploadValidationError):
    """The upload's content type is not in its policy's
    ``allowed_content_types``. HTTP 415; nothing was stored.

    ``content_type`` is the type found (detected from the bytes unless the
    policy turned detection off), ``declared_content_type`` the one the
    client sent, ``allowed`` the policy's list.
    """

    status_code = 415

    def __init__(
        self,
        message: str,
        *,
        content_type: str,
        declared_content_type: str | None,
        allowed: tuple[str, ...],
    ) -> None:
        super().__init__(message)
        self.content_type = content_type
        self.declared_content_type = declared_content_type
        self.allowed = allowed


class LedgerConflictError(StorageError):
    """The object ledger refused an operation that could lose data, and
    nothing was stored or committed:

    * an upload's reservation was won by the garbage collector before the
      upload's transaction could claim it (the upload waited longer than the
      collector's grace period between recording its intent and claiming it):
      retry the upload;
    * a flush writes a ref to an object the garbage collector is deleting (a
      ref copied from a row that no longer holds it): the ref is stale.

    Maps to HTTP 409. ``location`` is the object's location.
    """

    status_code = 409

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location


class LockUnavailableError(StorageError):
    """The database lock a ledger collection needs could not be had in time
    (SQLite: another transaction holds the write lock). Nothing was changed;
    the collector stops and a later run tries again."""


class SyncInEventLoopError(StorageError, RuntimeError):
    """A blocking method of ``granite_storage.sync`` was called from a thread
    that runs an event loop. Await the async method the message names instead
    (or run the sync code in a worker thread, ``anyio.to_thread.run_sync``)."""


class FactoryError(StorageError):
    """The ``granite-storage`` command's factory cannot be imported or does
    not follow the protocol (the command exits with code 2)."""
