"""StoredObjectRef: the receipt of a stored object, kept as JSON in a column."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from granite_storage.errors import StorageError

__all__ = ["LEGACY_INLINE_TEXT_KEY", "StoredObjectRef", "clean_text", "utcnow_iso"]

#: The key granite-storage 0.1.0's documented text-to-ref migration wrote:
#: ``jsonb_build_object('legacy_inline_text', content_markdown)``.
LEGACY_INLINE_TEXT_KEY = "legacy_inline_text"

# Characters a JSON column cannot hold on every database: PostgreSQL's JSONB
# rejects NUL (\u0000), and lone surrogates cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: str | None) -> str | None:
    """Remove the characters a JSON column cannot store on every database."""
    if value is None:
        return None
    return _UNSTORABLE.sub("", value)


def utcnow_iso() -> str:
    """The current time as ISO 8601 in UTC, as refs record it."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, eq=True)
class StoredObjectRef:
    """Where an object is stored and what it holds.

    Refs are immutable: change one with :meth:`replace`, which returns a new
    ref, so an ORM column holding a ref always sees the change.

    :param storage_key: the policy the object was written under.
    :param backend: the ``backend_name`` of the backend that stored it.
    :param location: the key inside the backend (see :mod:`granite_storage.locations`).
    :param size: the size in bytes.
    :param checksum: ``"sha256:<hex>"`` of the content.
    :param content_type: the MIME type given or guessed at upload.
    :param original_filename: the client's file name, kept as given except for
        characters a JSON column cannot hold (NUL, lone surrogates).
    :param created_at: ISO 8601 UTC time of the upload.
    :param extra: free-form JSON-serialisable metadata.
    """

    storage_key: str
    backend: str
    location: str
    size: int
    checksum: str
    content_type: str | None = None
    original_filename: str | None = None
    created_at: str | None = None
    extra: dict[str, Any] | None = field(default=None, compare=True)

    def __hash__(self) -> int:
        return hash((self.storage_key, self.backend, self.location, self.checksum))

    @property
    def has_object(self) -> bool:
        """Whether a backend holds this ref's object (the ref has a location).

        False for a 0.1.0 inline-text ref (see :attr:`legacy_inline_text`):
        its text is the content, so there is nothing stored to protect, sweep
        or delete. The manager still reads it (from memory).
        """
        return bool(self.location)

    @property
    def legacy_inline_text(self) -> str | None:
        """Inline text kept by a 0.1.0 text-to-ref migration, if this ref is one.

        Such refs have no location: the text itself is the content, and
        :meth:`from_dict` sets ``size`` to its length in UTF-8. Unpaired
        surrogates (which UTF-8 cannot encode) read as U+FFFD.
        """
        return None if self.location else _inline_text(self.extra)

    def replace(self, **changes: Any) -> StoredObjectRef:
        """A copy of this ref with ``changes`` applied."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, the same shape granite-storage 0.1.0 wrote."""
        return {
            "storage_key": self.storage_key,
            "backend": self.backend,
            "location": self.location,
            "size": self.size,
            "checksum": self.checksum,
            "content_type": self.content_type,
            "original_filename": self.original_filename,
            "created_at": self.created_at,
            "extra": dict(self.extra) if self.extra is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredObjectRef:
        """Load a ref from :meth:`to_dict`'s output or from any dict
        granite-storage 0.1.0 wrote.

        Unknown keys are ignored. A dict without a ``location`` (such as the
        ``{"legacy_inline_text": ...}`` rows of 0.1.0's text-to-ref migration)
        loads as a ref with an empty location whose ``extra`` keeps the dict
        and whose ``size`` is its inline text's; see :attr:`legacy_inline_text`.

        :raises StorageError: if ``data`` is not a mapping or a field has the
            wrong type.
        """
        if not isinstance(data, Mapping):
            raise StorageError(
                f"a stored object ref must be a JSON object, got {type(data).__name__}"
            )
        if "location" not in data:
            text = _inline_text(data)
            return cls(
                storage_key=str(data.get("storage_key") or ""),
                backend=str(data.get("backend") or ""),
                location="",
                size=0 if text is None else len(text.encode()),
                checksum="",
                extra=dict(data),
            )
        try:
            extra = data.get("extra")
            size = data.get("size")
            return cls(
                storage_key=str(data.get("storage_key") or ""),
                backend=str(data.get("backend") or ""),
                location=_str(data["location"]),
                size=int(size) if size is not None else 0,
                checksum=str(data.get("checksum") or ""),
                content_type=_opt_str(data.get("content_type")),
                original_filename=_opt_str(data.get("original_filename")),
                created_at=_opt_str(data.get("created_at")),
                extra=dict(extra) if extra is not None else None,
            )
        except (TypeError, ValueError, OverflowError) as exc:  # Overflow: a size of Infinity
            raise StorageError(f"invalid stored object ref {dict(data)!r}: {exc}") from exc


def _inline_text(data: Mapping[str, Any] | None) -> str | None:
    text = data.get(LEGACY_INLINE_TEXT_KEY) if data else None
    return _SURROGATES.sub("\ufffd", text) if isinstance(text, str) else None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)
