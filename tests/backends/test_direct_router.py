"""The FastAPI router for Uppy's @uppy/aws-s3 multipart mode, through httpx
against the app; the parts go to moto's server over HTTP (issue 17)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aioboto3")

from fastapi import FastAPI, Header, HTTPException

from granite_storage import StoragePolicy, StoredObjectRef
from granite_storage.integrations.fastapi import DirectUploadScope, direct_upload_router
from granite_storage.testing import manager_for
from tests.backends.conftest import open_s3_backend
from tests.backends.test_direct_multipart import CORS, everything

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def current_video(x_user: str | None = Header(None)) -> DirectUploadScope:
    """The app's authorisation: user "alice" may upload the file of video 7."""
    if x_user != "alice":
        raise HTTPException(401, "log in first")
    return DirectUploadScope("video", 7, "file")


@pytest.fixture
async def client(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, list[StoredObjectRef]]]:
    await s3_client.put_bucket_cors(Bucket=s3_bucket, CORSConfiguration=CORS)
    completed: list[StoredObjectRef] = []

    async def attach(ref: StoredObjectRef, scope: DirectUploadScope) -> dict[str, Any]:
        completed.append(ref)
        return {"video": scope.entity_id}

    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        policy = StoragePolicy("videos", "s3", max_size=8 * MiB, key_prefix="v")
        manager = manager_for(backend, policy, backend_key="s3")
        app = FastAPI()
        app.include_router(
            direct_upload_router(
                manager, storage_key="videos", authorize=current_video, on_complete=attach
            ),
            prefix="/uploads",
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://app.test",
            headers={"X-User": "alice"},
        ) as http:
            yield http, completed


async def put(url: str, body: bytes) -> str:
    async with httpx.AsyncClient() as browser:
        response = await browser.put(url, content=body, headers={"Origin": "http://app.test"})
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


async def test_uppy_flow_create_sign_list_complete(
    client: tuple[httpx.AsyncClient, list[StoredObjectRef]],
) -> None:
    http, completed = client
    data = b"a" * (5 * MiB) + b"b" * 1000
    created = await http.post(
        "/uploads/s3/multipart", json={"filename": "t.mp4", "type": "video/mp4", "metadata": {}}
    )
    assert created.status_code == 200, created.text
    upload_id, key = created.json()["uploadId"], created.json()["key"]
    assert key.startswith("v/video/7/file/") and created.json()["partSize"] == 5 * MiB

    etags = []
    for number, piece in ((1, data[: 5 * MiB]), (2, data[5 * MiB :])):
        signed = await http.get(f"/uploads/s3/multipart/{upload_id}/{number}", params={"key": key})
        assert signed.status_code == 200, signed.text
        etags.append(await put(signed.json()["url"], piece))
    listed = await http.get(f"/uploads/s3/multipart/{upload_id}", params={"key": key})
    assert [(p["PartNumber"], p["Size"]) for p in listed.json()] == [(1, 5 * MiB), (2, 1000)]

    parts = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
    done = await http.post(
        f"/uploads/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": parts}
    )
    assert done.status_code == 200, done.text
    assert done.json()["location"] == key and done.json()["result"] == {"video": 7}
    (ref,) = completed
    assert ref.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert StoredObjectRef.from_dict(done.json()["ref"]) == ref


async def test_authorisation_scope_size_and_abort(
    client: tuple[httpx.AsyncClient, list[StoredObjectRef]], s3_client: Any, s3_bucket: str
) -> None:
    http, completed = client
    anonymous = await http.post("/uploads/s3/multipart", json={}, headers={"X-User": "bob"})
    assert anonymous.status_code == 401
    too_big = await http.post("/uploads/s3/multipart", json={"filename": "x", "size": 9 * MiB})
    assert too_big.status_code == 413

    created = (await http.post("/uploads/s3/multipart", json={"filename": "x.bin"})).json()
    upload_id, key = created["uploadId"], created["key"]
    for forged in ["v/video/8/file/x.bin", "v/video/7/file/../../8/file/x", "elsewhere/x"]:
        response = await http.get(f"/uploads/s3/multipart/{upload_id}/1", params={"key": forged})
        assert response.status_code == 403, forged
    bad = await http.get(f"/uploads/s3/multipart/{upload_id}/0", params={"key": key})
    assert bad.status_code == 400
    broken = await http.post(
        f"/uploads/s3/multipart/{upload_id}/complete", params={"key": key}, json={"parts": "1"}
    )
    assert broken.status_code == 400

    for _ in range(2):  # idempotent
        aborted = await http.delete(f"/uploads/s3/multipart/{upload_id}", params={"key": key})
        assert aborted.status_code == 200
    assert await everything(s3_client, s3_bucket) == ([], [])
    assert completed == []
