"""Storage policies: which backend a storage key writes to, and its limits."""

from __future__ import annotations

from dataclasses import dataclass

from granite_storage.locations import validate_prefix

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
    """

    storage_key: str
    backend_key: str
    max_size: int | None = None
    key_prefix: str | None = None
    delete_replaced: bool = False

    def __post_init__(self) -> None:
        if not self.storage_key:
            raise ValueError("StoragePolicy.storage_key must not be empty")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError(f"StoragePolicy.max_size must be >= 0, got {self.max_size}")
        if self.key_prefix is not None:
            object.__setattr__(self, "key_prefix", validate_prefix(self.key_prefix))
