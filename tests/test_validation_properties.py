"""Properties of upload validation (#16), with Hypothesis: polyglots, truncated
headers, every chunking of the head, declarations that lie, empty files; and
a spy on each backend proving a refusal never reaches it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granite_storage import ContentTypeNotAllowedError, StoragePolicy, UploadValidationError
from granite_storage._detect import adetect_content_type
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.manager import StorageManager
from granite_storage.testing import manager_for
from granite_storage.validation import UploadInfo, reject_executables
from tests.backends.conftest import open_s3_backend
from tests.reliability.spy import Call, spy_on
from tests.test_validation import ELF, HTML, PDF, PNG, png_header, zip_of

examples = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

HEADERS = {
    "png": PNG,
    "pdf": PDF,
    "html": HTML,
    "elf": ELF,
    "gif": b"GIF89a\x10\x00\x10\x00\x80\x00\x00",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "zip": zip_of(("a.txt", b"hello")),
    "text": b"plain words, nothing more\n",
    "json": b'{"key": [1, 2, 3]}',
    "empty": b"",
}
FILENAMES = [None, "a.png", "a.html", "a.txt", "a.csv", "a.json", "a.pdf", "a.exe", "noext"]
DECLARED = [None, "image/png", "text/html", "text/plain", "application/pdf", "application/json"]


async def from_pieces(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        if data[start:cut]:
            yield data[start:cut]
        start = cut


def memory_manager_with(
    policy: StoragePolicy, backend: StorageBackend | None = None
) -> StorageManager:
    return manager_for(backend or MemoryStorageBackend(), policy, backend_key=policy.backend_key)


async def upload(manager: StorageManager, stream: Any, **kwargs: Any) -> Any:
    return await manager.aput_stream(
        storage_key="files", model_name="m", entity_id=1, field_name="f", stream=stream, **kwargs
    )


@examples
@given(html=st.binary(max_size=512).map(lambda b: b"<html><script>" + b + b"</script></html>"))
async def test_a_png_header_followed_by_html_is_a_png(html: bytes) -> None:
    manager = memory_manager_with(StoragePolicy("files", "m", allowed_content_types=("image/*",)))
    ref = await upload(manager, PNG + html, content_type="text/html", original_filename="x.html")
    assert ref.content_type == "image/png"
    assert ref.extra == {"declared_content_type": "text/html"}


@examples
@given(
    first=st.sampled_from(["html", "pdf", "png", "zip"]),
    tail=st.sampled_from(["html", "pdf", "png", "zip", "elf"]),
)
async def test_polyglots_are_what_their_head_says(first: str, tail: str) -> None:
    content = HEADERS[first] + HEADERS[tail]
    expected = await adetect_content_type(HEADERS[first], None)
    # The head's type, or a generic one (binary after text): never the tail's.
    generic = {"application/zip", "application/octet-stream"}
    assert await adetect_content_type(content, None) in {expected} | generic
    manager = memory_manager_with(StoragePolicy("files", "m", allowed_content_types=("image/*",)))
    if expected.startswith("image/"):
        assert (await upload(manager, content)).content_type.startswith("image/")
    else:
        with pytest.raises(ContentTypeNotAllowedError):
            await upload(manager, content)


@examples
@given(kind=st.sampled_from(sorted(HEADERS)), data=st.data())
async def test_truncated_headers_are_detected_or_refused_never_crash(
    kind: str, data: st.DataObject
) -> None:
    header = HEADERS[kind]
    length = data.draw(st.integers(0, len(header)))
    detected = await adetect_content_type(header[:length], data.draw(st.sampled_from(FILENAMES)))
    assert "/" in detected and detected == detected.strip().lower()
    if length == 0:
        assert detected == "application/x-empty"


@examples
@given(
    kind=st.sampled_from(sorted(HEADERS)),
    cuts=st.lists(st.integers(0, 200), max_size=20),
    one_byte=st.booleans(),
)
async def test_the_head_does_not_depend_on_the_chunking(
    kind: str, cuts: list[int], one_byte: bool
) -> None:
    content = HEADERS[kind] * 3
    heads: list[bytes] = []

    def remember(head: bytes, info: UploadInfo) -> None:
        heads.append(head)

    manager = memory_manager_with(StoragePolicy("files", "m", validators=(remember,)))
    whole = await upload(manager, content, original_filename="f.bin")
    pieces = list(range(len(content))) if one_byte else cuts
    split = await upload(manager, from_pieces(content, pieces), original_filename="f.bin")
    assert (split.content_type, split.size, split.checksum) == (
        whole.content_type,
        whole.size,
        whole.checksum,
    )
    assert heads == [content, content] or heads == []  # no validator call for empty content
    assert await manager.aget(split) == content


@examples
@given(
    kind=st.sampled_from(sorted(HEADERS)),
    declared=st.sampled_from(DECLARED),
    filename=st.sampled_from(FILENAMES),
)
async def test_the_declaration_never_decides_the_type(
    kind: str, declared: str | None, filename: str | None
) -> None:
    content = HEADERS[kind]
    manager = memory_manager_with(StoragePolicy("files", "m"))
    ref = await upload(manager, content, content_type=declared, original_filename=filename)
    assert ref.content_type == await adetect_content_type(content, filename)
    # The same bytes and name with any other declaration give the same type.
    other = await upload(manager, content, content_type="image/png", original_filename=filename)
    assert other.content_type == ref.content_type
    kept = (ref.extra or {}).get("declared_content_type")
    assert kept == (declared if declared and declared != ref.content_type else None)
    if kind == "empty":
        assert ref.content_type == "application/x-empty" and ref.size == 0


# -- a refusal never reaches the backend ------------------------------------


def refusing_policies() -> list[StoragePolicy]:
    def refuse(head: bytes, info: UploadInfo) -> None:
        raise UploadValidationError("refused")

    async def arefuse(head: bytes, info: UploadInfo) -> None:
        raise UploadValidationError("refused")

    return [
        StoragePolicy("files", "store", key_prefix="files", allowed_content_types=("image/*",)),
        StoragePolicy("files", "store", key_prefix="files", validators=(refuse,)),
        StoragePolicy("files", "store", key_prefix="files", validators=(arefuse,)),
        StoragePolicy("files", "store", key_prefix="files", validators=(reject_executables(),)),
    ]


async def assert_refusals_make_no_backend_call(backend: StorageBackend, calls: list[Call]) -> None:
    for policy in refusing_policies():
        manager = manager_for(backend, policy, backend_key="store", chunk_size=64 * 1024)
        for source in (ELF * 2000, from_pieces(ELF * 2000, list(range(0, 200_000, 1000)))):
            calls.clear()
            with pytest.raises(UploadValidationError):
                await upload(manager, source, content_type="image/png", original_filename="a.png")
            assert calls == [], calls
    assert [location async for location in backend.aiter_locations()] == []


@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_refusals_make_no_backend_call(kind: str, tmp_path: Path) -> None:
    root = tmp_path / uuid.uuid4().hex
    backend: StorageBackend = (
        MemoryStorageBackend() if kind == "memory" else LocalStorageBackend(root, fsync=False)
    )
    calls = spy_on(backend)
    await assert_refusals_make_no_backend_call(backend, calls)
    if kind == "local":  # no temporary file either
        files = await anyio.to_thread.run_sync(lambda: [p for p in root.rglob("*") if p.is_file()])
        assert files == []


@pytest.mark.s3
async def test_refusals_make_no_s3_call(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        calls = spy_on(backend)
        await assert_refusals_make_no_backend_call(backend, calls)
        client = await backend.aget_client()
        uploads = await client.list_multipart_uploads(Bucket=s3_bucket)
        assert uploads.get("Uploads", []) == []


async def test_a_large_upload_is_refused_after_its_head_only() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield HTML
        while True:
            pulled += 1
            yield b"x" * 65536

    manager = memory_manager_with(StoragePolicy("files", "m", allowed_content_types=("image/*",)))
    with pytest.raises(ContentTypeNotAllowedError):
        await upload(manager, endless())
    assert pulled <= 16  # one chunk of the manager: 1 MiB


def test_png_helper_matches_the_bomb_shape() -> None:
    assert png_header(1, 1).startswith(b"\x89PNG")
