"""Direct (presigned) uploads: the manager builds the ref from the stored bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from granite_storage import (
    ContentTooLargeError,
    InvalidLocationError,
    ObjectNotFoundError,
)
from granite_storage.testing import manager_for, memory_manager
from tests.backends.conftest import open_s3_backend


@pytest.mark.s3
async def test_presigned_post_then_ref_from_the_stored_bytes(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with (
        open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend,
        manager_for(backend, "docs", backend_key="s3", max_size=10) as manager,
    ):
        sizes = {"fits.txt": b"0123456789", "toobig.txt": b"0123456789!"}
        for name, body in sizes.items():
            upload = await manager.apresigned_upload(
                storage_key="docs",
                model_name="m",
                entity_id=1,
                field_name="f",
                original_filename=name,
            )
            async with httpx.AsyncClient(trust_env=False) as http:
                response = await http.post(
                    upload.url, data=upload.fields, files={"file": (name, body, "text/plain")}
                )
            assert response.status_code in (200, 201, 204), response.text
            if name == "fits.txt":
                ref = await manager.aref_for_upload(
                    storage_key="docs", location=upload.location, original_filename=name
                )
                assert ref.size == 10
                assert ref.checksum == "sha256:" + hashlib.sha256(body).hexdigest()
                assert ref.content_type == "text/plain"
                assert await manager.aget(ref, verify=True) == body
            else:
                # moto does not enforce the signed content-length range: the
                # manager does, and removes the oversized object.
                with pytest.raises(ContentTooLargeError):
                    await manager.aref_for_upload(storage_key="docs", location=upload.location)
                locations = [x async for x in backend.aiter_locations()]
                assert upload.location not in locations
                assert len(locations) == 1


async def test_ref_for_upload_errors() -> None:
    manager = memory_manager("docs")
    with pytest.raises(ObjectNotFoundError):
        await manager.aref_for_upload(storage_key="docs", location="docs/never/uploaded")
    with pytest.raises(InvalidLocationError):
        await manager.aref_for_upload(storage_key="docs", location="other/prefix")
    with pytest.raises(InvalidLocationError):
        await manager.aref_for_upload(storage_key="docs", location="docs/../escape")
