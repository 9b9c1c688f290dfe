"""The content type of an upload, from its first bytes (libmagic) and, for
text formats that have no magic number, from the file name's extension."""

from __future__ import annotations

import struct
import threading

import anyio.to_thread
import magic

from granite_storage.http import aguess_content_type

#: The type of an empty upload.
EMPTY_CONTENT_TYPE = "application/x-empty"

# The bytes libmagic looks at: every signature it matches on uploads is in
# them, and its time grows with the buffer (text: ~7 us for 8 KiB, 1.8 ms
# for 64 KiB; unknown binary: ~0.2 ms, 0.3 ms).
_DETECT_SIZE = 8 * 1024

# libmagic's answers for text it cannot tell apart by content (a CSV and a
# text with commas look alike): the extension decides between them.
_PLAIN_TEXT = frozenset({"text/plain", "text/csv", "application/csv"})
_TEXT_APPLICATION_TYPES = frozenset(
    {"application/json", "application/xml", "application/yaml", "application/x-yaml",
     "application/toml", "application/sql", "application/javascript", "application/x-ndjson"}
)  # fmt: skip

_OOXML = (
    (b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)
_ZIP_ENTRY = struct.Struct("<4sHHHHHIIIHH")  # a ZIP local file header

_handles = threading.local()  # a libmagic handle must not be shared between threads


def _libmagic(head: bytes) -> str:
    """libmagic's MIME type for ``head``; run in a worker thread (libmagic
    takes up to a few hundred microseconds and releases the GIL meanwhile)."""
    handle = getattr(_handles, "magic", None)
    if handle is None:
        handle = _handles.magic = magic.Magic(mime=True)
    try:
        return handle.from_buffer(head)
    except magic.MagicException:
        return "application/octet-stream"


async def adetect_content_type(head: bytes, filename: str | None) -> str:
    """The type of content starting with ``head``, as a bare ``type/subtype``.

    The bytes decide; the extension only names the kind of text when the
    bytes are plain text (CSV, JSON lines, source code): ``report.csv`` is
    ``text/csv``, while ``avatar.png`` holding text stays ``text/plain``.
    Empty content is :data:`EMPTY_CONTENT_TYPE`.
    """
    if not head:
        return EMPTY_CONTENT_TYPE
    found = await anyio.to_thread.run_sync(_libmagic, head[:_DETECT_SIZE])
    if found == "application/octet-stream" and len(head) == 1 and 0x20 <= head[0] < 0x7F:
        found = "text/plain"  # libmagic calls any one-byte file "very short", not text
    if found == "application/zip":
        found = _zip_type(head) or found
    if found in _PLAIN_TEXT or (found.startswith("text/x-") and not head.startswith(b"#!")):
        guessed = await aguess_content_type(filename)
        if _is_text_type(guessed):
            return guessed
        return "text/plain" if found.startswith("text/x-") else found
    return found


def _is_text_type(content_type: str) -> bool:
    return (
        content_type.startswith("text/")
        or content_type in _TEXT_APPLICATION_TYPES
        or content_type.endswith(("+json", "+xml"))
    )


def _zip_type(head: bytes) -> str | None:
    """The ZIP-based format whose entries start ``head``, where libmagic saw
    only a ZIP: OpenDocument and EPUB name their type in a first stored
    ``mimetype`` entry; Office Open XML has ``[Content_Types].xml`` and a
    ``word/``, ``xl/`` or ``ppt/`` part; a JAR starts with ``META-INF/``."""
    names: list[bytes] = []
    offset = 0
    while offset + _ZIP_ENTRY.size <= len(head):
        sig, _, flags, method, _, _, _, csize, _, name_len, extra_len = _ZIP_ENTRY.unpack_from(
            head, offset
        )
        if sig != b"PK\x03\x04":
            break
        start = offset + _ZIP_ENTRY.size
        name = head[start : start + name_len]
        data = start + name_len + extra_len
        if not names and name == b"mimetype" and method == 0:
            declared = head[data : data + csize]
            if declared.startswith(b"application/") and declared.isascii():
                return declared.decode()
        names.append(name)
        if flags & 0x08:  # sizes follow the data: the next entry cannot be found
            break
        offset = data + csize
    if names and names[0].startswith(b"META-INF/"):
        return "application/java-archive"
    if b"[Content_Types].xml" in names:
        for prefix, content_type in _OOXML:
            if any(name.startswith(prefix) for name in names):
                return content_type
    return None
