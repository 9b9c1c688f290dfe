"""Upload validation over HTTP (#16): 415 and 422 answers, the streaming
upload refused after its head, and the serving rules for active content."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from granite_storage import StoragePolicy, StoredObjectRef, UploadValidationError
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.fastapi import (
    install_exception_handlers,
    storage_response,
    stream_upload,
)
from granite_storage.testing import manager_for
from granite_storage.validation import UploadInfo
from tests.reliability.spy import spy_on
from tests.test_validation import HTML, PNG

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>'


def uvicorn_app() -> FastAPI:
    """The app test_fastapi_uvicorn.py serves: ``POST /upload/images`` on a
    local backend in ``$GRANITE_STORAGE_ROOT``, images only."""
    root = os.environ["GRANITE_STORAGE_ROOT"]
    images = StoragePolicy(
        "images", "local", key_prefix="images", allowed_content_types=("image/*",)
    )
    manager = manager_for(LocalStorageBackend(root, fsync=False), images, backend_key="local")
    app = FastAPI()
    install_exception_handlers(app)

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/upload/{storage_key}")
    async def upload(storage_key: str, request: Request) -> dict[str, Any]:
        result = await stream_upload(
            request, manager, storage_key=storage_key, model_name="m", entity_id=1, field_name="f"
        )
        return result.ref.to_dict()

    return app


def no_big_files(head: bytes, info: UploadInfo) -> None:
    if info.filename == "refused.txt":
        raise UploadValidationError("files named refused.txt are refused")


class SigningBackend(MemoryStorageBackend):
    """Records the Content-Disposition of every presigned download."""

    def __init__(self) -> None:
        super().__init__()
        self.dispositions: list[str | None] = []

    async def _apresign_download(
        self, location: str, *, expires_in: int, content_disposition: str | None
    ) -> str:
        self.dispositions.append(content_disposition)
        return f"https://signed.example/{location}"


class App:
    def __init__(self) -> None:
        self.backend = SigningBackend()
        self.calls = spy_on(self.backend)
        self.manager = manager_for(
            self.backend,
            StoragePolicy("images", "mem", key_prefix="images", allowed_content_types=("image/*",)),
            StoragePolicy("files", "mem", key_prefix="files", validators=(no_big_files,)),
            backend_key="mem",
            chunk_size=64 * 1024,
        )
        self.ref: StoredObjectRef | None = None
        self.app = FastAPI()
        install_exception_handlers(self.app)

        @self.app.post("/upload/{storage_key}")
        async def upload(storage_key: str, request: Request) -> dict[str, Any]:
            result = await stream_upload(
                request,
                self.manager,
                storage_key=storage_key,
                model_name="m",
                entity_id=1,
                field_name="f",
            )
            return result.ref.to_dict()

        @self.app.get("/object/{disposition}")
        async def download(
            disposition: Literal["inline", "attachment"], request: Request
        ) -> Response:
            assert self.ref is not None
            return await storage_response(self.manager, self.ref, request, disposition=disposition)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    async def store(self, content: bytes, filename: str) -> StoredObjectRef:
        self.ref = await self.manager.aput_bytes(
            storage_key="files", model_name="m", entity_id=1, field_name="f",
            content=content, original_filename=filename,
        )  # fmt: skip
        return self.ref


async def test_html_posted_as_png_is_415_and_nothing_reaches_the_backend() -> None:
    app = App()
    async with app.client() as client:
        raw = await client.post(
            "/upload/images?filename=a.png", content=HTML, headers={"content-type": "image/png"}
        )
        form = await client.post("/upload/images", files={"file": ("a.png", HTML, "image/png")})
        good = await client.post("/upload/images", files={"file": ("a.png", PNG, "image/png")})
    for response in (raw, form):
        assert response.status_code == 415, response.text
        assert response.headers["connection"] == "close"
        detail = response.json()["detail"]
        assert "'text/html'" in detail and "'image/png'" in detail and "image/*" in detail
    assert [call.name for call in app.calls if call.name in ("aput_stream", "_aput")] == [
        "aput_stream",
        "_aput",
    ]  # only the good upload
    assert (good.status_code, good.json()["content_type"]) == (200, "image/png")


async def test_a_refusing_validator_is_422() -> None:
    app = App()
    async with app.client() as client:
        response = await client.post(
            "/upload/files", files={"file": ("refused.txt", b"hello", "text/plain")}
        )
    assert response.status_code == 422
    assert response.json() == {"detail": "files named refused.txt are refused"}
    assert app.calls == []


async def test_a_streamed_body_is_refused_after_its_head() -> None:
    app = App()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for index in range(64 * 16):  # 64 MiB
            sent += 64 * 1024
            yield HTML if index == 0 else os.urandom(64 * 1024)

    async with app.client() as client:
        response = await client.post(
            "/upload/images", content=body(), headers={"content-type": "image/png"}
        )
    assert response.status_code == 415
    assert sent <= 4 * 64 * 1024, sent  # a chunk or so, not the 64 MiB


@pytest.mark.parametrize(
    ("content", "filename", "served_type"),
    [
        (HTML, "page.html", "text/html"),
        (SVG, "logo.svg", "image/svg+xml"),
        (b"alert(1); // script\n", "app.js", "text/javascript"),
    ],
)
async def test_active_content_is_never_served_inline(
    content: bytes, filename: str, served_type: str
) -> None:
    app = App()
    ref = await app.store(content, filename)
    assert ref.content_type == served_type
    async with app.client() as client:
        inline = await client.get("/object/inline")
    assert inline.headers["content-type"] == served_type
    assert inline.headers["content-disposition"].startswith("attachment;")
    assert inline.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in inline.headers
    await app.manager.apresigned_url(ref, disposition="inline")
    assert app.backend.dispositions[-1] is not None
    assert app.backend.dispositions[-1].startswith("attachment;")


async def test_inline_responses_are_sandboxed() -> None:
    app = App()
    ref = await app.store(PNG, "a.png")
    async with app.client() as client:
        inline = await client.get("/object/inline")
        attachment = await client.get("/object/attachment")
    assert inline.headers["content-disposition"].startswith("inline;")
    assert inline.headers["content-security-policy"] == "sandbox"
    assert "content-security-policy" not in attachment.headers
    await app.manager.apresigned_url(ref, disposition="inline")
    assert app.backend.dispositions[-1] == 'inline; filename="a.png"'
