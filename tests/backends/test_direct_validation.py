"""Direct multipart uploads get the policy's validation when they complete,
like every other upload (issues 16 and 17): the completed object's head is
detected and checked (allow-list, validators, after_upload hooks), and a
refused object is deleted before the error is raised. Through moto's server
over HTTP, and through the FastAPI router (415 / 422)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytest.importorskip("aioboto3")

from granite_storage import (
    ContentTypeNotAllowedError,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
    UploadValidationError,
)
from granite_storage.direct import DirectUpload
from granite_storage.validation import UploadInfo, after_upload, reject_executables
from tests.backends.conftest import open_s3_backend
from tests.backends.test_direct_multipart import CORS, everything, put_part
from tests.test_validation import ELF, HTML, PNG

pytestmark = pytest.mark.s3

PLACE = {"model_name": "user", "entity_id": 3, "field_name": "avatar"}
BLOCKED = b"\x89PNG blocked by the after-upload hook"
MARKED = PNG + b"refused by a validator"
seen: list[UploadInfo] = []


def refuse_marked(head: bytes, info: UploadInfo) -> None:
    if head.endswith(b"refused by a validator"):
        raise UploadValidationError(f"{info.content_type} marked as refused")


def refuse_blocked(info: UploadInfo) -> None:
    seen.append(info)
    if info.size == len(PNG + BLOCKED):
        raise UploadValidationError("this file is on the blocklist")


def policy(**rules: Any) -> StoragePolicy:
    return StoragePolicy("avatars", "s3", key_prefix="avatars", **rules)


@pytest.fixture
async def manager(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> AsyncIterator[StorageManager]:
    await s3_client.put_bucket_cors(Bucket=s3_bucket, CORSConfiguration=CORS)
    rules = {
        "allowed_content_types": ("image/*",),
        "validators": (reject_executables(), refuse_marked, after_upload(refuse_blocked)),
    }
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        yield StorageManager(backends={"s3": backend}, policies={"avatars": policy(**rules)})


async def send(
    manager: StorageManager, body: bytes, *, filename: str, content_type: str | None = None
) -> DirectUpload:
    upload = await manager.acreate_direct_upload(
        storage_key="avatars", original_filename=filename, content_type=content_type, **PLACE
    )
    await put_part(manager, upload, 1, body)
    return upload


async def test_the_ref_has_the_detected_type_and_the_declared_one(
    manager: StorageManager, s3_client: Any, s3_bucket: str
) -> None:
    seen.clear()
    upload = await send(manager, PNG + b"\0" * 500, filename="me.jpg", content_type="image/jpeg")
    ref = await manager.acomplete_direct_upload(upload)
    assert ref.content_type == "image/png"
    assert ref.extra == {"declared_content_type": "image/jpeg"}
    assert await manager.aget(ref, verify=True) == PNG + b"\0" * 500
    (info,) = seen  # the after-upload hook saw the stored size and checksum
    assert (info.size, info.checksum, info.content_type) == (ref.size, ref.checksum, "image/png")
    assert await everything(s3_client, s3_bucket) == ([ref.location], [])


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (HTML, ContentTypeNotAllowedError, ["text/html", "image/png", "image/*"]),
        (ELF, ContentTypeNotAllowedError, ["application/x-executable", "image/*"]),
        (MARKED, UploadValidationError, ["image/png marked as refused"]),
        (PNG + BLOCKED, UploadValidationError, ["blocklist"]),
    ],
    ids=["HTML", "ELF", "validator", "after-upload hook"],
)
async def test_a_refused_upload_is_deleted_before_the_error(
    manager: StorageManager,
    s3_client: Any,
    s3_bucket: str,
    body: bytes,
    error: type[Exception],
    words: list[str],
) -> None:
    upload = await send(manager, body, filename="me.png", content_type="image/png")
    with pytest.raises(error) as raised:
        await manager.acomplete_direct_upload(upload)
    for word in words:
        assert word in str(raised.value)
    # Neither the object nor the multipart upload is left.
    assert await everything(s3_client, s3_bucket) == ([], [])


async def test_detection_off_keeps_the_declared_type(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        manager = StorageManager(
            backends={"s3": backend}, policies={"avatars": policy(detect_content_type=False)}
        )
        upload = await send(manager, HTML, filename="page.png")
        ref = await manager.acomplete_direct_upload(upload)
    assert (ref.content_type, ref.extra) == ("image/png", None)


# -- through the FastAPI router -----------------------------------------------------------


@pytest.fixture
async def client(
    manager: StorageManager,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[StoredObjectRef]]]:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    from granite_storage.integrations.fastapi import DirectUploadScope, direct_upload_router

    completed: list[StoredObjectRef] = []

    async def attach(ref: StoredObjectRef, scope: DirectUploadScope) -> None:
        completed.append(ref)

    app = FastAPI()
    app.include_router(
        direct_upload_router(
            manager,
            storage_key="avatars",
            authorize=lambda: DirectUploadScope("user", 3, "avatar"),
            on_complete=attach,
        ),
        prefix="/uploads",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        yield http, completed


@pytest.mark.parametrize(("body", "status"), [(HTML, 415), (MARKED, 422), (PNG, 200)])
async def test_the_router_answers_415_and_422_and_leaves_nothing(
    client: tuple[httpx.AsyncClient, list[StoredObjectRef]],
    s3_client: Any,
    s3_bucket: str,
    body: bytes,
    status: int,
) -> None:
    http, completed = client
    created = await http.post("/uploads/s3/multipart", json={"filename": "me.png"})
    assert created.status_code == 200, created.text
    upload_id, key = created.json()["uploadId"], created.json()["key"]
    signed = await http.get(f"/uploads/s3/multipart/{upload_id}/1", params={"key": key})
    async with httpx.AsyncClient() as browser:
        assert (await browser.put(signed.json()["url"], content=body)).status_code == 200

    done = await http.post(
        f"/uploads/s3/multipart/{upload_id}/complete",
        params={"key": key},
        json={"parts": [{"PartNumber": 1, "ETag": "x"}]},
    )
    assert done.status_code == status, done.text
    if status == 200:
        (ref,) = completed
        assert ref.content_type == "image/png"
        assert await everything(s3_client, s3_bucket) == ([key], [])
    else:
        assert completed == []
        assert "detail" in done.json() and done.headers["connection"] == "close"
        assert await everything(s3_client, s3_bucket) == ([], [])
