"""Storage policies: which backend a storage key writes to, and its limits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from granite_storage.locations import validate_prefix
from granite_storage.validation import Validator

__all__ = ["StoragePolicy"]


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    """Binds a storage key (a logical slot such as ``"avatars"``) to a backend.

    :param storage_key: the name models and refs use for this slot.
    :param backend_key: the key of the backend in ``StorageManager(backends=...)``.
    :param max_size: the largest upload in bytes; ``None`` for no limit.
    :param key_prefix: the first segment(s) of every location this policy
        writes, such as ``"docs"`` or ``"tenant-1/docs"``. It scopes garbage
        collection: two policies sharing a backend should each have one.
    :param delete_replaced: when ``True``, the SQLAlchemy integration deletes
        an object replaced or cleared through the mixin after the transaction
        commits (and only once no other row references it). Off by default,
        because deleting is irreversible while the garbage collector's grace
        period gives readers of the old object time to finish.
    :param allowed_content_types: the content types an upload may have,
        exact (``"application/pdf"``) or ``"type/*"`` wildcards
        (``"image/*"``); ``None`` allows every type. Checked against the
        type detected from the bytes, before the backend sees a byte: see
        :mod:`granite_storage.validation`.
    :param detect_content_type: take the ref's ``content_type`` from the
        upload's first bytes (text formats from the extension); a differing
        declared type is kept in ``ref.extra["declared_content_type"]``.
        ``False`` keeps the declared type, else the one the file name
        suggests (then the allow-list checks what the client said).
    :param validators: called with the upload's head and an
        :class:`~granite_storage.validation.UploadInfo` before the first
        write (see :mod:`granite_storage.validation`).
    """

    storage_key: str
    backend_key: str
    max_size: int | None = None
    key_prefix: str | None = None
    delete_replaced: bool = False
    allowed_content_types: tuple[str, ...] | None = None
    detect_content_type: bool = True
    validators: tuple[Validator, ...] = ()

    def __post_init__(self) -> None:
        if not self.storage_key:
            raise ValueError("StoragePolicy.storage_key must not be empty")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError(f"StoragePolicy.max_size must be >= 0, got {self.max_size}")
        if self.key_prefix is not None:
            object.__setattr__(self, "key_prefix", validate_prefix(self.key_prefix))
        if self.allowed_content_types is not None:
            if isinstance(self.allowed_content_types, str):
                raise TypeError(
                    "StoragePolicy.allowed_content_types must be a tuple of types, "
                    f"e.g. ({self.allowed_content_types!r},)"
                )
            allowed = tuple(entry.strip().lower() for entry in self.allowed_content_types)
            for entry in allowed:
                if not _ALLOWED_ENTRY.fullmatch(entry):
                    raise ValueError(
                        f"StoragePolicy.allowed_content_types: {entry!r} is not a content "
                        "type such as 'image/png' or a wildcard such as 'image/*'"
                    )
            object.__setattr__(self, "allowed_content_types", allowed)
        object.__setattr__(self, "validators", tuple(self.validators))
        for validator in self.validators:
            if not callable(validator):
                raise TypeError(f"StoragePolicy.validators: {validator!r} is not callable")


_ALLOWED_ENTRY = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")
