"""The content type of an upload, from its first bytes (a table of common
signatures, else libmagic) and, for text formats that have no magic number,
from the file name's extension."""

from __future__ import annotations

import threading
from functools import partial

import anyio.to_thread

try:
    import magic
except ImportError as exc:  # python-magic loads libmagic when imported
    raise ImportError(
        f"granite_storage detects content types with libmagic, which could not be loaded "
        f"({exc}). Install it: `apt-get install libmagic1` (Debian, Ubuntu), "
        "`apk add libmagic` (Alpine), `brew install libmagic` (macOS)."
    ) from exc

from granite_storage._jobs import run_job
from granite_storage._signatures import MIN_HEAD, SIGNATURES, ZIP_ENTRY, sniff
from granite_storage.http import aguess_content_type

#: The type of an empty upload.
EMPTY_CONTENT_TYPE = "application/x-empty"

# The bytes libmagic looks at: every signature it matches on uploads is in
# them. Its time grows with the buffer for text (prose: 0.4 ms for 512 bytes,
# 1.5 ms for 8 KiB, more beyond), hardly for binary it does not know (0.17 ms
# for 512 bytes, 0.21 ms for 8 KiB: it runs all its rules): a smaller cap
# would save little and lose JSON and HTML whose markers come later.
_DETECT_SIZE = 8 * 1024

# What libmagic answers for a signature sample it does not know.
_UNKNOWN = frozenset({"application/octet-stream", "text/plain"})
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

_handles = threading.local()  # a libmagic handle must not be shared between threads

_names: dict[str, str] | None = None  # signature name -> libmagic's type (see _signatures)


def libmagic_type(head: bytes) -> str:
    """libmagic's MIME type for ``head`` (blocking: up to a few hundred
    microseconds, with the GIL released)."""
    handle = getattr(_handles, "magic", None)
    if handle is None:
        handle = _handles.magic = magic.Magic(mime=True)
    try:
        return handle.from_buffer(head)
    except magic.MagicException:
        return "application/octet-stream"


def signature_names() -> dict[str, str]:
    """libmagic's type for the sample of every signature of the fast path,
    leaving out those it does not know (blocking; computed once)."""
    global _names
    if _names is None:
        named = {
            signature.name: libmagic_type(signature.sample.ljust(MIN_HEAD, b"\0"))
            for signature in SIGNATURES
        }
        _names = {name: found for name, found in named.items() if found not in _UNKNOWN}
    return _names


async def aclassify(head: bytes) -> str:
    """libmagic's type for ``head`` (at most its first :data:`_DETECT_SIZE` bytes),
    from the signature table when it decides, else from libmagic itself."""
    names = _names if _names is not None else await anyio.to_thread.run_sync(signature_names)
    found = sniff(head, names)
    if found is not None:
        return found
    # What the table leaves to libmagic costs it 70 us (a ZIP it must look
    # into) to 1.5 ms (prose), more than a hop to a worker thread (~40 us),
    # where it runs with the GIL released (benchmarks/detect.py). The hop is
    # the job pool's, the cheapest there is here (see granite_storage._jobs).
    return await run_job(partial(libmagic_type, head[:_DETECT_SIZE]))


async def adetect_content_type(head: bytes, filename: str | None) -> str:
    """The type of content starting with ``head``, as a bare ``type/subtype``.

    The bytes decide; the extension only names the kind of text when the
    bytes are plain text (CSV, JSON lines, source code): ``report.csv`` is
    ``text/csv``, while ``avatar.png`` holding text stays ``text/plain``.
    Empty content is :data:`EMPTY_CONTENT_TYPE`.
    """
    if not head:
        return EMPTY_CONTENT_TYPE
    found = await aclassify(head)
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
    while offset + ZIP_ENTRY.size <= len(head):
        sig, _, flags, method, _, _, _, csize, _, name_len, extra_len = ZIP_ENTRY.unpack_from(
            head, offset
        )
        if sig != b"PK\x03\x04":
            break
        start = offset + ZIP_ENTRY.size
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
