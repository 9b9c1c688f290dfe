"""The FastAPI integration: streaming uploads, downloads with ranges, error responses.

The first half drives ``examples/fastapi_app.py`` through ``httpx.ASGITransport``
(SQLite + local disk, as a user would run it); the second half pins down the
edge cases of the helpers with a bare app over an in-memory backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Message

from examples.fastapi_app import Settings, create_app
from granite_storage import StoragePolicy, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import ObjectReader, PutResult
from granite_storage.errors import BackendError, OperationNotSupportedError
from granite_storage.integrations.fastapi import (
    install_exception_handlers,
    storage_response,
    stream_upload,
    stream_upload_to,
)
from granite_storage.testing import manager_for

# Files sent by httpx always name their type: else httpx guesses it with
# mimetypes, whose first use reads /etc/mime.types inside the event loop.
BINARY = "application/octet-stream"

# --------------------------------------------------------------------------- the example app


@dataclass
class ExampleApp:
    client: httpx.AsyncClient
    settings: Settings

    async def files(self) -> list[str]:
        """Every file under the storage root, temporary files included."""
        root = self.settings.storage_root

        def scan() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

        return await anyio.to_thread.run_sync(scan)

    async def upload(
        self, content: bytes, filename: str = "notes.txt", title: str | None = None
    ) -> dict[str, Any]:
        data = {"title": title} if title is not None else {}
        response = await self.client.post(
            "/documents", data=data, files={"file": (filename, content, "text/plain")}
        )
        assert response.status_code == 201, response.text
        document: dict[str, Any] = response.json()
        return document


@pytest.fixture
async def example(tmp_path: Path) -> AsyncIterator[ExampleApp]:
    settings = Settings(
        storage_root=tmp_path / "storage",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'documents.db'}",
        max_size=64 * 1024,
        fsync=False,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield ExampleApp(client, settings)


async def test_example_upload_and_download(example: ExampleApp) -> None:
    doc = await example.upload(b"hello, world", title="Greeting")
    assert doc["title"] == "Greeting"
    assert (doc["filename"], doc["content_type"], doc["size"]) == ("notes.txt", "text/plain", 12)
    metadata = await example.client.get(f"/documents/{doc['id']}")
    assert metadata.json() == doc
    response = await example.client.get(f"/documents/{doc['id']}/content")
    assert response.status_code == 200
    assert response.content == b"hello, world"
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == "12"
    assert response.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    assert response.headers["etag"] == f'"{doc["checksum"].removeprefix("sha256:")}"'
    assert response.headers["accept-ranges"] == "bytes"
    inline = await example.client.get(f"/documents/{doc['id']}/content?inline=true")
    assert inline.headers["content-disposition"] == 'inline; filename="notes.txt"'
    head = await example.client.head(f"/documents/{doc['id']}/content")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "12")


async def test_example_range_requests(example: ExampleApp) -> None:
    content = bytes(range(256)) * 16
    doc = await example.upload(content)
    url = f"/documents/{doc['id']}/content"
    partial = await example.client.get(url, headers={"Range": "bytes=1000-1999"})
    assert partial.status_code == 206
    assert partial.content == content[1000:2000]
    assert partial.headers["content-range"] == f"bytes 1000-1999/{len(content)}"
    assert partial.headers["content-length"] == "1000"
    suffix = await example.client.get(url, headers={"Range": "bytes=-7"})
    assert (suffix.status_code, suffix.content) == (206, content[-7:])
    beyond = await example.client.get(url, headers={"Range": f"bytes={len(content)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(content)}"


async def test_example_if_none_match(example: ExampleApp) -> None:
    doc = await example.upload(b"cache me")
    url = f"/documents/{doc['id']}/content"
    etag = (await example.client.get(url)).headers["etag"]
    cached = await example.client.get(url, headers={"If-None-Match": etag})
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
    changed = await example.client.get(url, headers={"If-None-Match": '"something-else"'})
    assert (changed.status_code, changed.content) == (200, b"cache me")


@pytest.mark.parametrize("how", ["multipart", "raw", "uploadfile"])
async def test_example_oversized_upload_is_413_and_leaves_nothing(
    example: ExampleApp, how: str
) -> None:
    content = b"x" * (example.settings.max_size + 1)
    if how == "multipart":
        response = await example.client.post(
            "/documents", files={"file": ("big.bin", content, BINARY)}
        )
    elif how == "raw":
        response = await example.client.post("/documents?filename=big.bin", content=content)
    else:
        response = await example.client.post(
            "/documents/uploadfile", files={"file": ("big.bin", content, BINARY)}
        )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert response.headers["connection"] == "close"  # stop reading the rest
    assert await example.files() == []
    assert (await example.client.get("/documents")).json() == []


async def test_example_streams_an_unannounced_oversized_body(example: ExampleApp) -> None:
    """No Content-Length (chunked): refused while streaming, not up front."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 4096

    response = await example.client.post("/documents?filename=big.bin", content=body())
    assert response.status_code == 413
    assert "received" in response.json()["detail"]
    assert await example.files() == []


async def test_example_404s(example: ExampleApp) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await example.client.get(f"/documents/{missing}")).status_code == 404
    assert (await example.client.get(f"/documents/{missing}/content")).status_code == 404
    assert (await example.client.delete(f"/documents/{missing}")).status_code == 404
    # A row whose file vanished from disk: the storage error handler answers 404.
    doc = await example.upload(b"soon gone")
    [path] = await example.files()
    await anyio.Path(example.settings.storage_root / path).unlink()
    gone = await example.client.get(f"/documents/{doc['id']}/content")
    assert gone.status_code == 404
    assert "no object" in gone.json()["detail"]


async def test_example_non_ascii_filename(example: ExampleApp) -> None:
    doc = await example.upload("日本語 ü.txt".encode(), filename="Übersicht 日本.txt")
    assert doc["filename"] == "Übersicht 日本.txt"
    response = await example.client.get(f"/documents/{doc['id']}/content")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "filename*=UTF-8''%C3%9Cbersicht%20%E6%97%A5%E6%9C%AC.txt" in disposition
    assert disposition.isascii()


async def test_example_list(example: ExampleApp) -> None:
    await example.upload(b"b", title="Beta")
    await example.upload(b"a", title="Alpha")
    raw = await example.client.post("/documents?filename=raw.csv", content=b"1,2\n")
    assert raw.status_code == 201
    small = await example.client.post(
        "/documents/uploadfile",
        data={"title": "Gamma"},
        files={"file": ("g.txt", b"g", "text/plain")},
    )
    assert small.status_code == 201
    listing = (await example.client.get("/documents")).json()
    assert [(d["title"], d["size"]) for d in listing] == [
        ("Alpha", 1),
        ("Beta", 1),
        ("Gamma", 1),
        ("raw.csv", 4),
    ]
    assert listing[3]["content_type"] == "text/csv"
    assert len(await example.files()) == 4


async def test_example_replace(example: ExampleApp) -> None:
    doc = await example.upload(b"version 1", title="Doc")
    [old_file] = await example.files()
    url = f"/documents/{doc['id']}/content"
    old_etag = (await example.client.get(url)).headers["etag"]
    replaced = await example.client.put(
        url, data={"title": "Doc v2"}, files={"file": ("v2.txt", b"version 2!", "text/plain")}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["title"] == "Doc v2"
    assert replaced.json()["filename"] == "v2.txt"
    response = await example.client.get(url)
    assert response.content == b"version 2!"
    assert response.headers["etag"] != old_etag
    assert (await example.client.get(url, headers={"If-None-Match": old_etag})).status_code == 200
    [new_file] = await example.files()  # the old file was deleted after the commit
    assert new_file != old_file


async def test_example_failed_replace_keeps_the_old_file(example: ExampleApp) -> None:
    doc = await example.upload(b"keep me")
    url = f"/documents/{doc['id']}/content"
    too_big = await example.client.put(url, content=b"z" * (example.settings.max_size + 1))
    assert too_big.status_code == 413
    response = await example.client.get(url)
    assert response.content == b"keep me"
    assert len(await example.files()) == 1


async def test_example_delete(example: ExampleApp) -> None:
    doc = await example.upload(b"delete me")
    keep = await example.upload(b"keep me")
    assert len(await example.files()) == 2
    deleted = await example.client.delete(f"/documents/{doc['id']}")
    assert deleted.status_code == 204
    assert (await example.client.get(f"/documents/{doc['id']}")).status_code == 404
    assert [d["id"] for d in (await example.client.get("/documents")).json()] == [keep["id"]]
    assert len(await example.files()) == 1


# --------------------------------------------------------------------------- a bare app

CONTENT = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


class TrackingBackend(MemoryStorageBackend):
    """A memory backend that counts open readers and can presign, on request."""

    def __init__(self, *, can_sign: bool = False) -> None:
        super().__init__()
        self.can_sign = can_sign
        self.open_readers = 0
        self.opened = 0

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[ObjectReader]:
        async with super()._aopen(location, start, end) as reader:
            self.open_readers += 1
            self.opened += 1
            try:
                yield reader
            finally:
                self.open_readers -= 1

    async def _apresign_download(
        self, location: str, *, expires_in: int, content_disposition: str | None
    ) -> str:
        if not self.can_sign:
            return await super()._apresign_download(
                location, expires_in=expires_in, content_disposition=content_disposition
            )
        return f"https://signed.example/{location}?expires={expires_in}"


class Harness:
    """A bare FastAPI app: ``POST /upload`` (stream_upload), ``GET|HEAD /object``."""

    def __init__(self, *, max_size: int | None = 256 * 1024, can_sign: bool = False) -> None:
        self.backend = TrackingBackend(can_sign=can_sign)
        self.manager = manager_for(
            self.backend,
            # HTTP behaviour only: the declared type is kept as before.
            # Detection over HTTP: tests/integrations/test_fastapi_validation.py.
            StoragePolicy(
                "docs", "mem", max_size=max_size, key_prefix="docs", detect_content_type=False
            ),
            backend_key="mem",
            chunk_size=4096,
        )
        self.ref: StoredObjectRef | None = None
        self.app = FastAPI()
        install_exception_handlers(self.app)
        self.upload_kwargs: dict[str, Any] = {}

        @self.app.post("/upload")
        async def upload(request: Request) -> dict[str, Any]:
            result = await stream_upload(
                request,
                self.manager,
                storage_key="docs",
                model_name="doc",
                entity_id=7,
                field_name="file",
                **self.upload_kwargs,
            )
            self.ref = result.ref
            return {"ref": result.ref.to_dict(), "fields": result.fields.multi_items()}

        @self.app.api_route("/object", methods=["GET", "HEAD"])
        async def download(request: Request) -> Response:
            assert self.ref is not None
            redirect = request.query_params.get("redirect") == "1"
            return await storage_response(self.manager, self.ref, request, redirect=redirect)

        @self.app.get("/boom/{kind}")
        async def boom(kind: str) -> None:
            if kind == "backend":
                raise BackendError("disk /secret/path failed")
            raise OperationNotSupportedError("cannot presign")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    async def store(self, content: bytes = CONTENT, filename: str = "data.bin") -> StoredObjectRef:
        self.ref = await self.manager.aput_bytes(
            storage_key="docs",
            model_name="doc",
            entity_id=7,
            field_name="file",
            content=content,
            original_filename=filename,
        )
        return self.ref

    async def stored_locations(self) -> list[str]:
        return [loc async for loc in self.backend.aiter_locations()]


@pytest.fixture
def harness() -> Harness:
    return Harness()


def multipart(parts: list[tuple[str, str]], boundary: str = "b0undary") -> bytes:
    """A multipart body from (headers, body) pairs, written by hand."""
    out = b""
    for headers, body in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n{body}\r\n".encode()
    return out + f"--{boundary}--\r\n".encode()


def file_part(body: str, name: str = "file", filename: str = "f.txt") -> tuple[str, str]:
    return (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"', body)


def field_part(name: str, value: str) -> tuple[str, str]:
    return (f'Content-Disposition: form-data; name="{name}"', value)


FORM = {"content-type": "multipart/form-data; boundary=b0undary"}


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize(
    ("range_header", "status", "expected"),
    [
        ("bytes=0-0", 206, (0, 1)),
        ("bytes=100-199", 206, (100, 200)),
        ("bytes=10000-", 206, (10000, 10240)),
        ("bytes=-10", 206, (10230, 10240)),
        ("bytes=-99999", 206, (0, 10240)),  # a suffix longer than the object: all of it
        ("bytes=10200-99999", 206, (10200, 10240)),  # the end is clamped
        ("BYTES = 5 - 6", 206, (5, 7)),  # unit is case-insensitive, blanks allowed
        ("bytes=0-1,5-6", 200, None),  # range lists are ignored: the whole object
        ("bytes=9-5", 200, None),  # last < first: invalid, ignored
        ("bytes=a-b", 200, None),
        ("items=0-1", 200, None),
        ("bytes=-", 200, None),
        ("bytes=\u00b2-\u00b3", 200, None),  # superscripts: str.isdigit() says yes
    ],
)
async def test_range_requests(
    harness: Harness, range_header: str, status: int, expected: tuple[int, int] | None
) -> None:
    await harness.store()
    async with harness.client() as client:
        response = await client.get("/object", headers=[(b"range", range_header.encode("latin-1"))])
    assert response.status_code == status
    start, end = expected or (0, len(CONTENT))
    assert response.content == CONTENT[start:end]
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["accept-ranges"] == "bytes"
    if status == 206:
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(CONTENT)}"
    else:
        assert "content-range" not in response.headers
    assert harness.backend.open_readers == 0


@pytest.mark.parametrize("range_header", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
async def test_unsatisfiable_range_is_416(harness: Harness, range_header: str) -> None:
    await harness.store()
    async with harness.client() as client:
        response = await client.get("/object", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert harness.backend.opened == 0


async def test_empty_object_ignores_a_suffix_range(harness: Harness) -> None:
    await harness.store(b"")
    async with harness.client() as client:
        suffix = await client.get("/object", headers={"Range": "bytes=-5"})
        start = await client.get("/object", headers={"Range": "bytes=0-"})
    assert (suffix.status_code, suffix.content, suffix.headers["content-length"]) == (200, b"", "0")
    assert start.status_code == 416
    assert start.headers["content-range"] == "bytes */0"


async def test_if_range_with_current_etag_honours_the_range(harness: Harness) -> None:
    await harness.store()
    async with harness.client() as client:
        etag = (await client.head("/object")).headers["etag"]
        matching = await client.get("/object", headers={"Range": "bytes=0-3", "If-Range": etag})
        stale = await client.get("/object", headers={"Range": "bytes=0-3", "If-Range": '"old"'})
        weak = await client.get("/object", headers={"Range": "bytes=0-3", "If-Range": f"W/{etag}"})
        date = await client.get(
            "/object", headers={"Range": "bytes=0-3", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"}
        )
    assert (matching.status_code, matching.content) == (206, CONTENT[:4])
    for response in (stale, weak, date):
        assert (response.status_code, response.content) == (200, CONTENT)


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", '"other", {etag}', "*", ' "x" ,W/{etag} '],
)
async def test_if_none_match_gives_304(harness: Harness, if_none_match: str) -> None:
    ref = await harness.store()
    etag = f'"{ref.checksum.removeprefix("sha256:")}"'
    async with harness.client() as client:
        response = await client.get(
            "/object", headers={"If-None-Match": if_none_match.format(etag=etag)}
        )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert harness.backend.opened == 0


async def test_if_none_match_with_other_etag_sends_the_object(harness: Harness) -> None:
    await harness.store()
    async with harness.client() as client:
        response = await client.get("/object", headers={"If-None-Match": '"other", W/"x"'})
    assert (response.status_code, response.content) == (200, CONTENT)


async def test_head_sends_headers_only_and_opens_nothing(harness: Harness) -> None:
    await harness.store(filename="report.pdf")
    async with harness.client() as client:
        whole = await client.head("/object")
        part = await client.head("/object", headers={"Range": "bytes=10-19"})
    assert whole.status_code == 200 and whole.content == b""
    assert whole.headers["content-length"] == str(len(CONTENT))
    assert whole.headers["content-type"] == "application/pdf"
    assert whole.headers["content-disposition"] == 'attachment; filename="report.pdf"'
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-19/{len(CONTENT)}"
    assert part.headers["content-length"] == "10"
    assert harness.backend.opened == 0


async def test_missing_object_is_404_for_get_and_head(harness: Harness) -> None:
    ref = await harness.store()
    await harness.manager.adelete(ref)
    async with harness.client() as client:
        get = await client.get("/object")
        head = await client.head("/object")
    assert get.status_code == 404
    assert "no object" in get.json()["detail"]
    assert head.status_code == 404
    assert harness.backend.open_readers == 0


async def test_text_content_type_is_sent_as_stored(harness: Harness) -> None:
    # Starlette would append "; charset=utf-8" to a text/* media type: the
    # stored type is sent unchanged, whatever the file's real encoding.
    harness.ref = await harness.manager.aput_bytes(
        storage_key="docs",
        model_name="doc",
        entity_id=7,
        field_name="file",
        content="é".encode("latin-1"),
        content_type="text/plain; charset=latin-1",
    )
    unsafe = harness.ref.replace(content_type="text/plain\u2028evil", original_filename="a.csv")
    async with harness.client() as client:
        response = await client.get("/object")
        harness.ref = unsafe
        fallback = await client.get("/object")
    assert response.headers["content-type"] == "text/plain; charset=latin-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert fallback.headers["content-type"] == "text/csv"


async def test_redirect_to_presigned_url_when_the_backend_signs() -> None:
    harness = Harness(can_sign=True)
    ref = await harness.store()
    async with harness.client() as client:
        redirected = await client.get("/object?redirect=1")
        streamed = await client.get("/object")
    assert redirected.status_code == 307
    assert redirected.headers["location"] == f"https://signed.example/{ref.location}?expires=300"
    assert redirected.headers["cache-control"] == "no-store"
    assert (streamed.status_code, streamed.content) == (200, CONTENT)


async def test_redirect_falls_back_to_streaming_when_the_backend_cannot_sign(
    harness: Harness,
) -> None:
    await harness.store()
    async with harness.client() as client:
        response = await client.get("/object?redirect=1")
    assert (response.status_code, response.content) == (200, CONTENT)


async def test_an_inline_text_ref_is_served_like_an_object_without_the_backend() -> None:
    """A 0.1.0 inline-text ref: the manager reads its text, so every answer
    is the usual one; there is nothing to sign, even where the backend signs."""
    harness = Harness(can_sign=True)
    text = "# Title\n\nBody ✓"
    data = text.encode()
    harness.ref = StoredObjectRef.from_dict({"storage_key": "docs", "legacy_inline_text": text})
    async with harness.client() as client:
        whole = await client.get("/object?redirect=1")
        part = await client.get("/object", headers={"Range": "bytes=2-6"})
        head = await client.head("/object")
        past = await client.get("/object", headers={"Range": f"bytes={len(data)}-"})
    assert (whole.status_code, whole.content) == (200, data)
    assert whole.headers["content-length"] == head.headers["content-length"] == str(len(data))
    assert (part.status_code, part.content) == (206, data[2:7])
    assert part.headers["content-range"] == f"bytes 2-6/{len(data)}"
    assert (head.status_code, head.content) == (200, b"")
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert harness.backend.opened == 0 and await harness.stored_locations() == []


def _download_scope(spec_version: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/object",
        "raw_path": b"/object",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1234),
        "server": ("t", 80),
    }


async def test_reader_is_closed_when_the_client_disconnects(harness: Harness) -> None:
    """ASGI 2.3 (uvicorn): the disconnect arrives through ``receive``."""
    await harness.store(CONTENT * 10)  # 25 chunks of 4096 bytes
    disconnected = anyio.Event()
    sent: list[Message] = []
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        if (message := next(requests, None)) is not None:
            return message
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            assert harness.backend.open_readers == 1
            disconnected.set()
            await anyio.sleep_forever()  # a client that stopped reading

    with anyio.fail_after(10):
        await harness.app(_download_scope("2.3"), receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert harness.backend.opened == 1
    assert harness.backend.open_readers == 0


async def test_reader_is_closed_when_sending_fails(harness: Harness) -> None:
    """ASGI 2.4: a send to a closed connection raises ``OSError``."""
    from starlette.requests import ClientDisconnect

    await harness.store(CONTENT * 10)

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")

    with pytest.raises(ClientDisconnect):
        await harness.app(_download_scope("2.4"), receive, send)
    assert harness.backend.opened == 1
    assert harness.backend.open_readers == 0


# --------------------------------------------------------------------------- exception handlers


async def test_server_errors_do_not_leak_details(harness: Harness) -> None:
    async with harness.client() as client:
        backend = await client.get("/boom/backend")
        unsupported = await client.get("/boom/unsupported")
    assert backend.status_code == 500
    assert "secret" not in backend.text
    assert backend.json() == {
        "detail": "the storage backend failed; see the server log for details"
    }
    assert unsupported.status_code == 501


# --------------------------------------------------------------------------- uploads


class AsgiUpload:
    """Drive one ``POST /upload`` at the ASGI level, counting what the app received."""

    def __init__(self, app: FastAPI, headers: dict[str, str], chunks: list[bytes]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.chunks = chunks
        self.delivered = 0  # body bytes handed to the app
        self.messages: list[Message] = []
        self.disconnect_after: int | None = None  # chunks before an http.disconnect

    async def receive(self) -> Message:
        await anyio.lowlevel.checkpoint()
        index = len([m for m in self.messages if m["type"] == "_body"])
        if self.disconnect_after is not None and index >= self.disconnect_after:
            return {"type": "http.disconnect"}
        if index >= len(self.chunks):
            await anyio.sleep_forever()
        chunk = self.chunks[index]
        self.messages.append({"type": "_body"})
        self.delivered += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": index + 1 < len(self.chunks)}

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    async def run(self) -> int:
        scope = _download_scope("2.3") | {
            "method": "POST",
            "path": "/upload",
            "raw_path": b"/upload",
            "headers": [(b"host", b"t"), *self.headers],
        }
        with anyio.fail_after(20):
            await self.app(scope, self.receive, self.send)
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return int(start["status"])


async def test_multipart_upload_stores_the_file_and_returns_the_fields(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post(
            "/upload",
            data={"title": "Quarterly", "tag": ["a", "b"]},
            files={"file": ("Résumé 日本.pdf", CONTENT, "application/pdf")},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fields"] == [["title", "Quarterly"], ["tag", "a"], ["tag", "b"]]
    ref = StoredObjectRef.from_dict(body["ref"])
    assert ref.original_filename == "Résumé 日本.pdf"
    assert ref.content_type == "application/pdf"
    assert ref.size == len(CONTENT)
    assert ref.location.startswith("docs/doc/7/file/") and ref.location.endswith(".pdf")
    assert await harness.manager.aget(ref, verify=True) == CONTENT


async def test_fields_may_come_before_and_after_the_file(harness: Harness) -> None:
    body = multipart([field_part("before", "1"), file_part("xyz"), field_part("after", "ünïcode")])
    async with harness.client() as client:
        response = await client.post("/upload", content=body, headers=FORM)
    assert response.status_code == 200, response.text
    assert response.json()["fields"] == [["before", "1"], ["after", "ünïcode"]]
    assert harness.ref is not None
    assert await harness.manager.aget(harness.ref) == b"xyz"


async def test_file_part_without_filename_or_type_gets_a_guess(harness: Harness) -> None:
    body = multipart([('Content-Disposition: form-data; name="file"', "plain")])
    async with harness.client() as client:
        response = await client.post("/upload", content=body, headers=FORM)
    ref = StoredObjectRef.from_dict(response.json()["ref"])
    assert (ref.original_filename, ref.content_type) == (None, "application/octet-stream")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "detail"),
    [
        pytest.param(
            multipart([file_part("abc")])[:-20], None, 400, "ended before", id="truncated"
        ),
        pytest.param(
            multipart([field_part("title", "x")]), None, 400, "no file part", id="no-file"
        ),
        pytest.param(
            multipart([file_part("a"), file_part("b")]), None, 400, "more than one", id="two-files"
        ),
        pytest.param(
            multipart([file_part("a"), file_part("b", name="other")]),
            None,
            400,
            "only one file",
            id="other-file",
        ),
        pytest.param(
            multipart([file_part("a")] + [field_part(f"f{i}", "v") for i in range(17)]),
            None,
            400,
            "more than 16 fields",
            id="too-many-fields",
        ),
        pytest.param(
            multipart([file_part("abc"), field_part("big", "x" * (64 * 1024 + 1))]),
            None,
            413,
            "form field 'big' is larger",
            id="field-too-large-after-file",
        ),
        pytest.param(
            multipart([file_part("abc"), field_part("name", "x")]).replace(b"x\r\n", b"\xff\r\n"),
            None,
            400,
            "not valid UTF-8",
            id="field-not-utf8",
        ),
        pytest.param(
            multipart([("Content-Type: text/plain", "abc")]),
            None,
            400,
            "Content-Disposition",
            id="no-disposition",
        ),
        pytest.param(
            multipart([(f"X-A: {'p' * 3000}\r\nX-B: {'p' * 3000}\r\nX-C: {'p' * 3000}", "a")]),
            None,
            400,
            "bytes of headers",
            id="huge-part-headers",
        ),
        pytest.param(b"garbage", None, 400, "malformed multipart body", id="garbage"),
        pytest.param(
            multipart([file_part("abc")]),
            "multipart/form-data",
            400,
            "no boundary",
            id="no-boundary",
        ),
    ],
)
async def test_bad_forms_are_refused_and_store_nothing(
    harness: Harness, body: bytes, content_type: str | None, status: int, detail: str
) -> None:
    headers = {"content-type": content_type} if content_type else FORM
    async with harness.client() as client:
        response = await client.post("/upload", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert await harness.stored_locations() == []


async def test_form_overhead_is_limited(harness: Harness) -> None:
    """Part headers, fields and the epilogue together have a budget: a body
    that is mostly not file is refused as soon as it passes it, and the file
    part before it is not kept."""
    harness.upload_kwargs = {"max_fields": 1, "max_field_size": 10}
    budget = 10 + 3 * 8192
    body = multipart([file_part("abc")]) + b"e" * (budget * 4)
    upload = AsgiUpload(harness.app, FORM, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert await upload.run() == 413
    assert upload.delivered < budget + 2000
    assert await harness.stored_locations() == []


async def test_oversized_file_is_refused_while_streaming(harness: Harness) -> None:
    body = multipart([file_part("x" * (300 * 1024))])
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    upload = AsgiUpload(harness.app, FORM, chunks)  # chunked: no Content-Length
    assert await upload.run() == 413
    assert upload.delivered <= 256 * 1024 + 2 * 1024
    assert await harness.stored_locations() == []


async def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    harness = Harness(max_size=1000)
    allowance = 16 * 64 * 1024 + 18 * 8192
    raw = AsgiUpload(harness.app, {"content-length": "1001"}, [b"x" * 1001])
    form = AsgiUpload(
        harness.app,
        FORM | {"content-length": str(1000 + allowance + 1)},
        [b"x" * 1000],
    )
    form_that_fits = AsgiUpload(
        harness.app,
        FORM | {"content-length": str(1000 + allowance)},
        [multipart([file_part("x" * 1000)])],
    )
    assert await raw.run() == 413
    assert await form.run() == 413
    assert raw.delivered == form.delivered == 0
    assert await form_that_fits.run() == 200


async def test_client_disconnect_mid_upload_stores_nothing(harness: Harness) -> None:
    from starlette.requests import ClientDisconnect

    body = multipart([file_part("x" * 100_000)])
    upload = AsgiUpload(harness.app, FORM, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    upload.disconnect_after = 50
    with pytest.raises(ClientDisconnect):
        await upload.run()
    assert await harness.stored_locations() == []


async def test_raw_body_upload(harness: Harness) -> None:
    async with harness.client() as client:
        by_query = await client.post(
            "/upload",
            params={"filename": "Grüße.txt"},
            content=b"hello",
            headers={"content-type": "text/plain; charset=utf-8"},
        )
        by_header = await client.post(
            "/upload", content=b"\x89PNG", headers={"x-filename": "%E6%97%A5%E6%9C%AC.png"}
        )
        anonymous = await client.post("/upload", content=b"?")
    ref = StoredObjectRef.from_dict(by_query.json()["ref"])
    assert (ref.original_filename, ref.content_type) == ("Grüße.txt", "text/plain; charset=utf-8")
    assert await harness.manager.aget(ref) == b"hello"
    assert by_query.json()["fields"] == []
    ref = StoredObjectRef.from_dict(by_header.json()["ref"])
    assert (ref.original_filename, ref.content_type) == ("日本.png", "image/png")
    ref = StoredObjectRef.from_dict(anonymous.json()["ref"])
    assert (ref.original_filename, ref.content_type, ref.size) == (
        None,
        "application/octet-stream",
        1,
    )


async def test_oversized_raw_body_is_refused_while_streaming(harness: Harness) -> None:
    chunks = [b"r" * 1024] * 300
    upload = AsgiUpload(harness.app, {"content-type": "application/octet-stream"}, chunks)
    assert await upload.run() == 413
    assert upload.delivered <= 256 * 1024 + 1024
    assert await harness.stored_locations() == []


class SlowBackend(MemoryStorageBackend):
    """Takes many event-loop turns per chunk, and records how far ahead of it
    the request reading ran."""

    def __init__(self, delivered: Callable[[], int]) -> None:
        super().__init__()
        self.delivered = delivered
        self.max_ahead = 0

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        consumed = 0

        async def slowly() -> AsyncIterator[bytes]:
            nonlocal consumed
            async for chunk in chunks:
                for _ in range(50):
                    await anyio.lowlevel.checkpoint()
                consumed += len(chunk)
                self.max_ahead = max(self.max_ahead, self.delivered() - consumed)
                yield chunk

        return await super()._aput(location, slowly(), content_type)


@pytest.mark.parametrize("form", [True, False], ids=["multipart", "raw"])
async def test_backpressure_keeps_the_buffer_bounded(form: bool) -> None:
    chunk_size = 4096
    total = 400 * 1024
    upload: AsgiUpload | None = None
    backend = SlowBackend(lambda: upload.delivered if upload else 0)
    manager = manager_for(
        backend, StoragePolicy("docs", "slow"), backend_key="slow", chunk_size=chunk_size
    )
    app = FastAPI()

    @app.post("/upload")
    async def endpoint(request: Request) -> int:
        result = await stream_upload(
            request, manager, storage_key="docs", model_name="m", entity_id=1, field_name="f"
        )
        return result.ref.size

    body = multipart([file_part("z" * total)]) if form else b"z" * total
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    upload = AsgiUpload(app, FORM if form else {}, chunks)
    assert await upload.run() == 200
    assert upload.delivered == len(body)
    # The pipe's gathering chunk, one queued chunk, the manager's merge buffer
    # and one network read: never the whole body.
    assert 0 < backend.max_ahead <= 5 * chunk_size


async def test_stream_upload_to_hands_the_file_to_the_store_in_chunks() -> None:
    seen: list[tuple[str | None, str | None, list[int]]] = []

    async def store(
        stream: AsyncIterator[bytes], /, *, filename: str | None, content_type: str | None
    ) -> StoredObjectRef:
        sizes = [len(chunk) async for chunk in stream]
        seen.append((filename, content_type, sizes))
        return StoredObjectRef("k", "b", "loc", sum(sizes), "sha256:0")

    app = FastAPI()

    @app.post("/upload")
    async def endpoint(request: Request) -> dict[str, Any]:
        result = await stream_upload_to(request, store, max_size=10_000, chunk_size=1000)
        return {"size": result.ref.size, "fields": result.fields.multi_items()}

    body = multipart([file_part("q" * 2500, filename="q.txt"), field_part("n", "1")])
    chunks = [body[i : i + 300] for i in range(0, len(body), 300)]
    upload = AsgiUpload(app, FORM, chunks)
    assert await upload.run() == 200
    assert seen == [("q.txt", None, [1000, 1000, 500])]


async def test_stream_upload_to_raises_what_the_store_raises() -> None:
    class StoreFailed(Exception):
        pass

    async def store(
        stream: AsyncIterator[bytes], /, *, filename: str | None, content_type: str | None
    ) -> StoredObjectRef:
        async for _ in stream:
            raise StoreFailed("the database is gone")
        raise AssertionError("unreachable")  # pragma: no cover

    app = FastAPI()

    @app.post("/upload")
    async def endpoint(request: Request) -> None:
        await stream_upload_to(request, store, max_size=None, chunk_size=1000)

    chunks = [b"r" * 1000] * 100
    upload = AsgiUpload(app, {}, chunks)
    with pytest.raises(StoreFailed, match="database is gone"):
        await upload.run()
    assert upload.delivered < 10 * 1000  # reading stopped when the store failed
