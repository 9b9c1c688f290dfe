"""HTTP header values for serving stored objects. Pure functions, no I/O."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from granite_storage.refs import StoredObjectRef

__all__ = ["content_disposition", "etag_for"]

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


def etag_for(ref: StoredObjectRef) -> str:
    """A strong ETag derived from the ref's checksum (the content's sha256)."""
    digest = ref.checksum.partition(":")[2] or ref.checksum or ref.location
    return f'"{digest}"'
