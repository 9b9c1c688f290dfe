"""Direct multipart uploads (issue 17) through moto's server over HTTP: the
"browser" PUTs parts to presigned URLs with httpx, on a bucket with CORS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytest.importorskip("aioboto3")

from granite_storage import (
    ContentTooLargeError,
    InvalidLocationError,
    InvalidUploadError,
    StorageManager,
    StoragePolicy,
)
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.direct import MIN_PART_SIZE, DirectUpload, part_size_for
from granite_storage.errors import OperationNotSupportedError
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
CORS = {
    "CORSRules": [
        {
            "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
            "AllowedOrigins": ["*"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag"],
        }
    ]
}
PLACE = {"model_name": "video", "entity_id": 7, "field_name": "file"}


@pytest.fixture
async def manager(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> AsyncIterator[StorageManager]:
    await s3_client.put_bucket_cors(Bucket=s3_bucket, CORSConfiguration=CORS)
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, prefix="app"
    ) as backend:
        yield manager_for(
            backend,
            StoragePolicy("videos", "s3", max_size=12 * MiB, key_prefix="videos"),
            "docs",
            backend_key="s3",
        )


async def put_part(manager: StorageManager, upload: DirectUpload, number: int, body: bytes) -> str:
    """What the browser does: PUT one part to its presigned URL; the ETag."""
    url = await manager.apresign_upload_part(upload, number)
    async with httpx.AsyncClient() as http:
        response = await http.put(url, content=body, headers={"Origin": "http://app.test"})
    assert response.status_code == 200, response.text
    assert response.headers.get("access-control-allow-origin") in ("*", "http://app.test")
    return response.headers["ETag"]


async def everything(s3_client: Any, bucket: str) -> tuple[list[str], list[str]]:
    objects = await s3_client.list_objects_v2(Bucket=bucket)
    uploads = await s3_client.list_multipart_uploads(Bucket=bucket)
    return (
        [item["Key"] for item in objects.get("Contents", [])],
        [item["Key"] for item in uploads.get("Uploads", [])],
    )


async def test_upload_in_parts_resume_and_complete(manager: StorageManager) -> None:
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"  # the type comes from the bytes
    data = mp4 + bytes(range(256)) * (11 * MiB // 256)
    upload = await manager.acreate_direct_upload(
        storage_key="videos", original_filename="talk.mp4", size=len(data), **PLACE
    )
    assert (upload.part_size, upload.part_count) == (5 * MiB, 3)
    assert upload.location.startswith("videos/video/7/file/") and upload.location.endswith(".mp4")
    assert upload.content_type == "video/mp4"
    # The upload travels to the browser and back as JSON.
    upload = DirectUpload.from_dict(json.loads(json.dumps(upload.to_dict())))

    pieces = [data[i : i + upload.part_size] for i in range(0, len(data), upload.part_size)]
    etag = await put_part(manager, upload, 1, pieces[0])
    # The page reloads: the listed parts say where to resume.
    (listed,) = await manager.alist_upload_parts(upload)
    assert (listed.part_number, listed.size, listed.etag) == (1, len(pieces[0]), etag)
    for number, piece in enumerate(pieces[1:], start=2):
        await put_part(manager, upload, number, piece)

    ref = await manager.acomplete_direct_upload(upload)
    assert (ref.storage_key, ref.location, ref.size) == ("videos", upload.location, len(data))
    assert ref.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (ref.original_filename, ref.content_type) == ("talk.mp4", "video/mp4")
    assert await manager.aget(ref, verify=True) == data


async def test_over_size_total_is_refused_before_completion(
    manager: StorageManager, s3_client: Any, s3_bucket: str
) -> None:
    with pytest.raises(ContentTooLargeError):  # a declared size: at once, nothing started
        await manager.acreate_direct_upload(storage_key="videos", size=12 * MiB + 1, **PLACE)
    assert await everything(s3_client, s3_bucket) == ([], [])

    upload = await manager.acreate_direct_upload(storage_key="videos", size=10 * MiB, **PLACE)
    for number in (1, 2, 3):  # the client lies: 15 MiB
        await put_part(manager, upload, number, b"x" * (5 * MiB))
    with pytest.raises(ContentTooLargeError):
        await manager.acomplete_direct_upload(upload)
    assert await everything(s3_client, s3_bucket) == ([], [])  # aborted, never completed


async def test_forged_location_or_upload_id_is_refused(
    manager: StorageManager, s3_client: Any, s3_bucket: str
) -> None:
    upload = await manager.acreate_direct_upload(storage_key="videos", **PLACE)
    other = await manager.acreate_direct_upload(storage_key="docs", **PLACE)
    forged_locations = [
        DirectUpload("videos", other.location, upload.upload_id, upload.part_size),  # docs/...
        DirectUpload("videos", "videos/../docs/x", upload.upload_id, upload.part_size),
        DirectUpload("videos", "/etc/passwd", upload.upload_id, upload.part_size),
    ]
    for forged in forged_locations:
        with pytest.raises(InvalidLocationError):
            await manager.apresign_upload_part(forged, 1)
        with pytest.raises(InvalidLocationError):
            await manager.acomplete_direct_upload(forged)
        with pytest.raises(InvalidLocationError):
            await manager.aabort_direct_upload(forged)

    # Another upload's id with this location: the store does not know it.
    swapped = DirectUpload("videos", upload.location, other.upload_id, upload.part_size)
    with pytest.raises(InvalidUploadError):
        await manager.alist_upload_parts(swapped)
    with pytest.raises(InvalidUploadError):
        await manager.acomplete_direct_upload(swapped)
    await manager.aabort_direct_upload(swapped)  # aborts nothing, least of all the other one
    for bad_id in ["", "a b", "x\r\nHost: evil", "?uploadId=1"]:
        with pytest.raises(InvalidUploadError):
            await manager.apresign_upload_part(
                DirectUpload("videos", upload.location, bad_id, upload.part_size), 1
            )
    for number in (0, 10_001, True, "1"):
        with pytest.raises(InvalidUploadError):
            await manager.apresign_upload_part(upload, number)  # type: ignore[arg-type]
    with pytest.raises(InvalidUploadError):
        await manager.acomplete_direct_upload(upload, parts=[1])  # never sent
    with pytest.raises(InvalidUploadError):
        DirectUpload.from_dict({"storage_key": "videos", "location": upload.location})
    with pytest.raises(InvalidUploadError):
        DirectUpload.from_dict({**upload.to_dict(), "part_size": "5"})
    # Nothing above touched the two uploads.
    assert sorted((await everything(s3_client, s3_bucket))[1]) == sorted(
        ["app/" + upload.location, "app/" + other.location]
    )


async def test_abort_leaves_nothing_and_is_idempotent(
    manager: StorageManager, s3_client: Any, s3_bucket: str
) -> None:
    upload = await manager.acreate_direct_upload(storage_key="docs", **PLACE)
    await put_part(manager, upload, 1, b"partial")
    await manager.aabort_direct_upload(upload)
    await manager.aabort_direct_upload(upload)
    assert await everything(s3_client, s3_bucket) == ([], [])
    with pytest.raises(InvalidUploadError):
        await manager.acomplete_direct_upload(upload)


async def test_backends_that_cannot_sign_refuse() -> None:
    manager = manager_for(MemoryStorageBackend(), StoragePolicy("d", "mem"), backend_key="mem")
    with pytest.raises(OperationNotSupportedError):
        await manager.acreate_direct_upload(storage_key="d", **PLACE)


def test_part_size_keeps_every_upload_within_10000_parts() -> None:
    assert part_size_for(0) == part_size_for(1) == MIN_PART_SIZE
    for size in (50 * 1024**3, 10**12, 5 * 1024**4, None):
        part = part_size_for(size)
        assert part % MiB == 0 and part >= MIN_PART_SIZE
        assert -(-(size if size is not None else 5 * 1024**4) // part) <= 10_000
