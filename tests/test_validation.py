"""Uploads checked by their bytes (#16): detection, allow-lists, validators,
the after-upload hook, direct uploads, and the ready validators."""

from __future__ import annotations

import io
import struct
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from granite_storage import (
    ContentTooLargeError,
    ContentTypeNotAllowedError,
    StorageError,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
    UploadValidationError,
)
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.testing import manager_for
from granite_storage.validation import (
    HEAD_SIZE,
    AfterUploadValidator,
    UploadInfo,
    Validator,
    after_upload,
    image_dimensions,
    max_image_pixels,
    reject_executables,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of ``width`` x ``height``: signature, IHDR and
    the start of the image data (a decompression bomb's head looks the same)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


PNG = png_header(16, 16) + _chunk(b"IEND", b"")
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n"
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 100


def zip_of(*entries: tuple[str, bytes], stored_first: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def manager_with(policy: StoragePolicy, *, chunk_size: int = 1024 * 1024) -> StorageManager:
    backend = MemoryStorageBackend()
    return manager_for(backend, policy, backend_key=policy.backend_key, chunk_size=chunk_size)


def policy(**options: object) -> StoragePolicy:
    return StoragePolicy("files", "memory", key_prefix="files", **options)  # type: ignore[arg-type]


async def put(manager: StorageManager, content: bytes, **kwargs: Any) -> StoredObjectRef:
    return await manager.aput_bytes(
        storage_key="files", model_name="m", entity_id=1, field_name="f", content=content,
        **kwargs,
    )  # fmt: skip


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def listing(manager: StorageManager) -> list[str]:
    backend = manager.backends["memory"]
    return [location async for location in backend.aiter_locations()]


# -- policy ------------------------------------------------------------------


def test_policy_fields_keep_the_positional_order() -> None:
    p = StoragePolicy("a", "b", 10, "pre")
    assert (p.max_size, p.key_prefix, p.allowed_content_types) == (10, "pre", None)
    assert (p.detect_content_type, p.validators) == (True, ())


def test_policy_checks_allowed_content_types() -> None:
    assert policy(allowed_content_types=["Image/*", "application/pdf"]).allowed_content_types == (
        "image/*",
        "application/pdf",
    )
    with pytest.raises(TypeError, match=r"\('image/png',\)"):
        policy(allowed_content_types="image/png")
    with pytest.raises(ValueError, match="not a content type"):
        policy(allowed_content_types=("*/*",))
    with pytest.raises(TypeError, match="not callable"):
        policy(validators=("nope",))


# -- detection ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "filename", "expected"),
    [
        (PNG, "a.png", "image/png"),
        (PDF, "a.pdf", "application/pdf"),
        (HTML, "avatar.png", "text/html"),
        (b"a,b\n1,2\n", "data.csv", "text/csv"),
        (b"a,b\n1,2\n", "notes.txt", "text/plain"),
        (b'{"a": 1}', "x.json", "application/json"),
        (b"just text", "photo.png", "text/plain"),  # an extension never makes text an image
        (b"just text", None, "text/plain"),
        (b"", "a.png", "application/x-empty"),
        (ELF, "cat.jpg", "application/x-executable"),
    ],
)
async def test_the_type_comes_from_the_bytes(
    content: bytes, filename: str | None, expected: str
) -> None:
    manager = manager_with(policy())
    ref = await put(manager, content, original_filename=filename, content_type="image/png")
    assert ref.content_type == expected
    declared = None if expected == "image/png" else "image/png"
    assert (ref.extra or {}).get("declared_content_type") == declared


CONTENT_TYPES = "<?xml version='1.0'?><Types/>"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (zip_of(("a.txt", b"hello")), "application/zip"),
        (
            zip_of(("[Content_Types].xml", CONTENT_TYPES.encode()), ("word/document.xml", b"x")),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            zip_of(("[Content_Types].xml", CONTENT_TYPES.encode()), ("xl/workbook.xml", b"x")),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (
            zip_of(
                ("mimetype", b"application/vnd.oasis.opendocument.text"),
                ("content.xml", b"x"),
                stored_first=True,
            ),
            "application/vnd.oasis.opendocument.text",
        ),
        (
            zip_of(("mimetype", b"application/epub+zip"), ("content.opf", b"x"), stored_first=True),
            "application/epub+zip",
        ),
        (zip_of(("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n")), "application/java-archive"),
    ],
)
async def test_zip_based_formats_are_told_apart(content: bytes, expected: str) -> None:
    ref = await put(manager_with(policy()), content, original_filename="upload.zip")
    assert ref.content_type == expected


async def test_a_matching_declaration_keeps_its_parameters() -> None:
    ref = await put(
        manager_with(policy()), b"caf\xc3\xa9", content_type="text/plain; charset=utf-8"
    )
    assert ref.content_type == "text/plain; charset=utf-8"
    assert ref.extra is None


async def test_detection_off_keeps_the_declared_type() -> None:
    manager = manager_with(policy(detect_content_type=False, allowed_content_types=("image/*",)))
    ref = await put(manager, HTML, content_type="image/png")
    assert (ref.content_type, ref.extra) == ("image/png", None)


# -- refusals ----------------------------------------------------------------


async def test_a_type_outside_the_allow_list_is_refused_with_a_useful_message() -> None:
    manager = manager_with(policy(allowed_content_types=("image/*", "application/pdf")))
    with pytest.raises(ContentTypeNotAllowedError) as caught:
        await put(manager, HTML, content_type="image/png", original_filename="avatar.png")
    error = caught.value
    assert isinstance(error, UploadValidationError) and isinstance(error, StorageError)
    assert (error.status_code, error.content_type) == (415, "text/html")
    assert (error.declared_content_type, error.allowed) == (
        "image/png",
        ("image/*", "application/pdf"),
    )
    message = str(error)
    for part in ("'text/html'", "'image/png'", "image/*, application/pdf", "'files'"):
        assert part in message
    assert await listing(manager) == []
    assert (await put(manager, PNG)).content_type == "image/png"


async def test_empty_content_is_refused_unless_allowed() -> None:
    with pytest.raises(ContentTypeNotAllowedError, match="application/x-empty"):
        await put(manager_with(policy(allowed_content_types=("image/*",))), b"")
    manager = manager_with(policy(allowed_content_types=("image/*", "application/x-empty")))
    assert (await put(manager, b"")).size == 0


async def test_validators_get_the_head_and_the_info() -> None:
    seen: list[tuple[bytes, UploadInfo, bool]] = []
    loop_thread = threading.get_ident()

    def sync_validator(head: bytes, info: UploadInfo) -> None:
        seen.append((head, info, threading.get_ident() != loop_thread))

    async def async_validator(head: bytes, info: UploadInfo) -> None:
        seen.append((head, info, threading.get_ident() != loop_thread))

    manager = manager_with(policy(validators=(sync_validator, async_validator)), chunk_size=100)
    content = PDF * 10
    ref = await put(manager, content, original_filename="r.pdf", content_type="application/x-pdf")
    (head1, info1, in_thread1), (head2, info2, in_thread2) = seen
    assert head1 == head2 == content[:100]  # never more than one chunk
    assert (in_thread1, in_thread2) == (True, False)
    assert info1 == info2
    assert info1.storage_key == "files" and info1.location == ref.location
    assert (info1.content_type, info1.declared_content_type) == (
        "application/pdf",
        "application/x-pdf",
    )
    assert (info1.filename, info1.declared_size, info1.size) == ("r.pdf", len(content), None)
    assert isinstance(sync_validator, Validator)


async def test_a_refusing_validator_stores_nothing() -> None:
    def no_pdfs(head: bytes, info: UploadInfo) -> None:
        if info.content_type == "application/pdf":
            raise UploadValidationError("no PDFs here")

    manager = manager_with(policy(validators=(no_pdfs,)))
    with pytest.raises(UploadValidationError, match="no PDFs here") as caught:
        await put(manager, PDF)
    assert caught.value.status_code == 422
    assert await listing(manager) == []


async def test_the_size_limit_still_applies_while_the_head_is_read() -> None:
    manager = manager_with(policy(max_size=10, allowed_content_types=("text/*",)), chunk_size=4)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"abcd"

    with pytest.raises(ContentTooLargeError):
        await manager.aput_stream(
            storage_key="files", model_name="m", entity_id=1, field_name="f", stream=source()
        )
    assert await listing(manager) == []


async def test_after_upload_gets_size_and_checksum_and_a_failure_deletes_the_object() -> None:
    infos: list[UploadInfo] = []

    def record(info: UploadInfo) -> None:
        infos.append(info)

    async def refuse(info: UploadInfo) -> None:
        raise UploadValidationError(f"checksum {info.checksum} is blocked")

    hook = after_upload(record)
    assert isinstance(hook, AfterUploadValidator)
    manager = manager_with(policy(validators=(hook,)))
    ref = await put(manager, PDF)
    assert (infos[0].size, infos[0].checksum) == (ref.size, ref.checksum)

    manager = manager_with(policy(validators=(hook, after_upload(refuse))))
    with pytest.raises(UploadValidationError, match="is blocked"):
        await put(manager, PDF)
    assert await listing(manager) == []


async def test_direct_uploads_are_checked_and_deleted_before_raising() -> None:
    manager = manager_with(policy(allowed_content_types=("image/*",)))
    backend = manager.backends["memory"]
    location = manager.new_location(
        storage_key="files", model_name="m", entity_id=1, field_name="f"
    )
    await backend.aput_stream(key=location, chunks=chunks(HTML), content_type="image/png")
    with pytest.raises(ContentTypeNotAllowedError, match="text/html"):
        await manager.aref_for_upload(
            storage_key="files", location=location, content_type="image/png"
        )
    assert await listing(manager) == []

    await backend.aput_stream(key=location, chunks=chunks(PNG), content_type="image/png")
    ref = await manager.aref_for_upload(
        storage_key="files", location=location, content_type="image/jpeg"
    )
    assert (ref.content_type, ref.extra) == ("image/png", {"declared_content_type": "image/jpeg"})
    assert ref.size == len(PNG)


# -- ready validators ----------------------------------------------------------

BOMB = png_header(20000, 20000)  # 400 megapixels in 80 bytes


async def test_max_image_pixels_refuses_a_decompression_bomb_from_its_header() -> None:
    assert (await put(manager_with(policy()), BOMB)).size == len(BOMB)
    manager = manager_with(policy(validators=(max_image_pixels(50_000_000),)))
    with pytest.raises(UploadValidationError, match=r"decompression bomb|pixels"):
        await put(manager, BOMB)
    with pytest.raises(UploadValidationError, match="12000x10000 = 120000000 pixels"):
        await put(manager, png_header(12000, 10000))  # Pillow only warns at this size
    assert (await put(manager, PNG)).size == len(PNG)
    assert (await put(manager, PDF)).size == len(PDF)
    assert await listing(manager) != []
    with pytest.raises(ValueError, match="positive"):
        max_image_pixels(0)


async def test_image_dimensions() -> None:
    manager = manager_with(policy(validators=(image_dimensions(min=(8, 8), max=(100, 50)),)))
    assert (await put(manager, PNG)).size == len(PNG)
    with pytest.raises(UploadValidationError, match="at least 8x8"):
        await put(manager, png_header(4, 40))
    with pytest.raises(UploadValidationError, match="at most 100x50"):
        await put(manager, png_header(60, 60))
    with pytest.raises(UploadValidationError, match="cannot read the size"):
        await put(manager, b"GIF89a")  # detected as an image, too short for a size
    with pytest.raises(ValueError, match="min="):
        image_dimensions()


@pytest.mark.parametrize(
    "content",
    [
        ELF,
        b"MZ\x90\x00" + b"\x00" * 60,
        b"\xcf\xfa\xed\xfe" + b"\x00" * 60,
        b"\xfe\xed\xfa\xce" + b"\x00" * 60,
        b"#!/bin/sh\nrm -rf /\n",
    ],
)
async def test_reject_executables(content: bytes) -> None:
    assert (await put(manager_with(policy()), content)).size == len(content)
    manager = manager_with(policy(validators=(reject_executables(),)))
    with pytest.raises(UploadValidationError, match="executables are not accepted"):
        await put(manager, content, original_filename="holiday.jpg", content_type="image/jpeg")
    assert await listing(manager) == []


def test_head_size_is_what_detection_and_image_headers_need() -> None:
    assert HEAD_SIZE == 64 * 1024


def test_a_missing_libmagic_says_how_to_install_it() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['magic'] = None; import granite_storage"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "could not be loaded" in result.stderr and "apt-get install libmagic1" in result.stderr
