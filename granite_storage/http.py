"""HTTP header values for stored objects: ``Content-Type``,
``Content-Disposition``, ``ETag``. No I/O but reading the system's MIME
tables once."""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from urllib.parse import quote

import anyio.to_thread

from granite_storage.refs import StoredObjectRef, clean_text

__all__ = [
    "NEVER_INLINE",
    "aguess_content_type",
    "content_disposition",
    "declared_or_guessed_type",
    "etag_for",
    "safe_disposition",
]

#: Types a browser runs or renders as active documents: never served inline,
#: since a stored file would run with the serving site's origin.
NEVER_INLINE = frozenset(
    {
        "text/html",
        "image/svg+xml",
        "application/xhtml+xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/ecmascript",
    }
)

_FALLBACK_CONTENT_TYPE = "application/octet-stream"

_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9!#$&+.^_`|~ -]")


def content_disposition(filename: str | None, *, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` value per RFC 6266.

    ASCII names go in ``filename="..."``; other names get an ASCII fallback
    plus ``filename*=UTF-8''...`` (RFC 5987), which every current browser
    prefers. Quotes, backslashes, control characters and path separators
    are never passed through.
    """
    if not filename:
        return disposition
    name = re.split(r"[/\\]", filename)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    if not name:
        return disposition
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = _TOKEN_UNSAFE.sub("_", ascii_name).strip() or "download"
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def safe_disposition(content_type: str | None, disposition: str) -> str:
    """``disposition``, except ``"attachment"`` for a type in :data:`NEVER_INLINE`
    (and for a missing type, which a browser would sniff)."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if disposition != "attachment" and (not kind or kind in NEVER_INLINE):
        return "attachment"
    return disposition


def etag_for(ref: StoredObjectRef) -> str:
    """A strong ETag derived from the ref's checksum (the content's sha256)."""
    digest = ref.checksum.partition(":")[2] or ref.checksum or ref.location
    return f'"{digest}"'


async def aguess_content_type(filename: str | None) -> str:
    """The MIME type for ``filename``'s extension, or ``application/octet-stream``.

    The first call reads the system's MIME tables (``/etc/mime.types``) in a
    worker thread instead of on the event loop.
    """
    if not filename:
        return _FALLBACK_CONTENT_TYPE
    if not mimetypes.inited:
        await anyio.to_thread.run_sync(mimetypes.init)
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or _FALLBACK_CONTENT_TYPE


async def declared_or_guessed_type(declared: str | None, filename: str | None) -> str:
    """The ``declared`` content type (without the characters a JSON
    column cannot hold), else the one :func:`aguess_content_type` guesses."""
    return clean_text(declared) or await aguess_content_type(filename)
