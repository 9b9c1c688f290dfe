"""Hypothesis strategies for hostile input: names, file names, content types,
chunk patterns and byte sources, and ref dicts from untrusted JSON."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "ESCAPING_LOCATIONS",
    "EXISTING",
    "Upload",
    "hostile_text",
    "ref_dicts",
    "source_of",
    "uploads",
]

#: Strings that have broken path handling somewhere: traversal, separators of
#: every platform, control characters, look-alikes, reserved names, lengths.
TRICKY = [
    "",
    " ",
    ".",
    "..",
    "...",
    "/",
    "\\",
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "a/../../b",
    "%2e%2e%2f",
    "\x00",
    "a\x00b",
    "\r\n",
    "\t",
    "\x7f",
    "\x1b[31m",
    "\u202e",  # right-to-left override
    "\u2215",  # division slash
    "\uff0f",  # fullwidth solidus
    "\uff0e\uff0e",  # fullwidth full stops: ".." after NFKC
    "\u2024\u2024",  # one dot leaders
    "\ud800",  # a lone surrogate
    "Résumé",
    "名前.pdf",
    "ﬁle",  # ligature
    "CON",
    "~root",
    "-",
    "--",
    ".hidden",
    "x" * 5000,
    "." * 300,
    "a." + "b" * 40,
]

hostile_text = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=120),
    st.text(st.characters(codec=None), max_size=40),
    st.lists(st.sampled_from(TRICKY), min_size=2, max_size=5).map("".join),
    st.lists(st.sampled_from(TRICKY), min_size=2, max_size=4).map("/".join),
    st.text(min_size=200, max_size=3000),
)

filenames = st.one_of(
    st.none(),
    hostile_text,
    st.sampled_from(
        [
            "report.PDF",
            "archive.tar.gz",
            "noext",
            ".bashrc",
            "../../x.sh\x00.png",
            "x." + "a" * 20,
            "C:\\Users\\me\\photo.JPG",
            "dir/sub/file.txt",
        ]
    ),
)

content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "text/plain",
            "application/octet-stream",
            "image/png; charset=\x00binary",
            "text/plain\r\nX-Injected: 1",
            "text/html\x01",
            "\u00e9/\u65e5",
            "a" * 5000,
            "",
        ]
    ),
    hostile_text,
)

#: How the bytes arrive: every kind of source ``chunks_of`` accepts.
SOURCES = [
    "bytes",
    "aput_bytes",
    "list",
    "tuple",
    "sync-iterator",
    "async-iterator",
    "bytesio",
    "sync-short-reads",
    "async-read",
]

chunk_lists = st.one_of(
    st.lists(st.binary(max_size=300), max_size=12),
    st.lists(st.sampled_from([b"", b"a", b"\x00" * 64, b"\xff" * 7]), max_size=60),
    st.lists(st.binary(min_size=1000, max_size=5000), max_size=3),
)


@dataclass(frozen=True)
class Upload:
    """One hostile upload: names, metadata, bytes and how they are sent."""

    model_name: Any
    entity_id: Any
    field_name: Any
    filename: str | None
    content_type: str | None
    chunks: list[bytes]
    source: str
    chunk_size: int
    max_size: int | None
    key_prefix: str | None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@st.composite
def uploads(draw: st.DrawFn, *, sources: list[str] = SOURCES) -> Upload:
    return Upload(
        model_name=draw(hostile_text),
        entity_id=draw(st.one_of(hostile_text, st.integers(), st.uuids(), st.floats())),
        field_name=draw(hostile_text),
        filename=draw(filenames),
        content_type=draw(content_types),
        chunks=draw(chunk_lists),
        source=draw(st.sampled_from(sources)),
        chunk_size=draw(st.sampled_from([1, 7, 64, 4096, 1024 * 1024])),
        max_size=draw(st.one_of(st.none(), st.integers(0, 3000))),
        key_prefix=draw(st.sampled_from([None, "docs", "tenant-1/docs", "a.b/c_d"])),
    )


class _ShortReads(io.RawIOBase):
    """A sync binary file that returns at most 5 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 5) if size >= 0 else 5)


class _AsyncReader:
    """An object with ``async read(n)``, like Starlette's ``UploadFile``."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def _sync_chunks(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks


async def _async_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def source_of(upload: Upload) -> Any:
    """The byte source ``upload.source`` names, over ``upload.chunks``."""
    kind = upload.source
    if kind in ("bytes", "aput_bytes"):
        return upload.data
    if kind == "list":
        return list(upload.chunks)
    if kind == "tuple":
        return tuple(upload.chunks)
    if kind == "sync-iterator":
        return _sync_chunks(upload.chunks)
    if kind == "async-iterator":
        return _async_chunks(upload.chunks)
    if kind == "bytesio":
        return io.BytesIO(upload.data)
    if kind == "sync-short-reads":
        return _ShortReads(upload.data)
    return _AsyncReader(upload.data)


#: The object the ref tests keep in every store, so that safe refs can hit it.
EXISTING = "docs/m/1/f/existing.bin"

#: Locations that must never reach a backend: traversal, absolute paths,
#: empty segments, backslashes, control characters, too long.
ESCAPING_LOCATIONS = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "../../outside.txt",
    "docs/../../../outside.txt",
    "/etc/passwd",
    "//x",
    "docs/../../x",
    "docs/a/../../..",
    "docs/..",
    "docs/./a",
    "./docs/a",
    "docs//a",
    "docs/a/",
    "docs/a/.",
    "docs/a\\..\\..\\b",
    "docs\\..\\x",
    "C:\\Windows\\win.ini",
    "docs/\x00/a",
    "docs/a\x00.png",
    "docs/a\nb",
    "docs/\x7f",
    "docs/" + "a" * 1100,
]

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)

locations = st.one_of(
    st.sampled_from(ESCAPING_LOCATIONS),
    st.sampled_from(ESCAPING_LOCATIONS).map(lambda loc: "docs/" + loc),
    st.lists(hostile_text, min_size=1, max_size=5).map("/".join),
    st.lists(hostile_text, min_size=1, max_size=4).map(lambda parts: "/".join(["docs", *parts])),
    st.sampled_from([EXISTING, EXISTING, "docs/m/1/f/ok.bin", "other/m/1/f/x", "docs2/x", "docs"]),
    _json_values,
)


@st.composite
def ref_dicts(draw: st.DrawFn) -> Any:
    """What ``json.loads`` may return for a ref column or an API payload."""
    fields: dict[str, Any] = {
        "storage_key": draw(st.one_of(st.sampled_from(["docs", "docs", "nope"]), _json_values)),
        "backend": draw(st.one_of(st.sampled_from(["local", "memory", "s3"]), _json_values)),
        "size": draw(st.one_of(st.integers(0, 10**6), st.floats(), _json_values)),
        "checksum": draw(st.one_of(st.just("sha256:" + "0" * 64), _json_values)),
        "content_type": draw(st.one_of(st.none(), hostile_text, _json_values)),
        "original_filename": draw(st.one_of(st.none(), filenames, _json_values)),
        "created_at": draw(st.one_of(st.none(), _json_values)),
        "extra": draw(st.one_of(st.none(), _json_values)),
    }
    if draw(st.integers(0, 9)):  # now and then a 0.1.0 text-migration dict, without a location
        fields["location"] = draw(locations)
    elif draw(st.booleans()):
        fields["legacy_inline_text"] = draw(hostile_text)
    dropped = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3))
    data = {k: v for k, v in fields.items() if k not in dropped or k == "location"}
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(_json_values)  # not even an object
    # Through JSON and back, as a column or a request body would deliver it.
    return json.loads(json.dumps(data))
