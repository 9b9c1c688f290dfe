"""S3StorageBackend against any S3-compatible server (AWS, MinIO, R2, Ceph, moto).

Run it with S3_ENDPOINT_URL and S3_BUCKET set (and AWS credentials in the environment),
for example against MinIO: S3_ENDPOINT_URL=http://localhost:9000 S3_BUCKET=uploads.
"""

import asyncio
import os
from collections.abc import AsyncIterator

import httpx

from granite_storage import StorageManager, StoragePolicy
from granite_storage.backends.s3 import S3StorageBackend


async def main(endpoint_url: str, bucket: str) -> None:
    # --8<-- [start:backend]
    backend = S3StorageBackend(
        bucket=bucket,  # must exist
        prefix="myapp",  # every key starts with "myapp/"
        client_kwargs={"endpoint_url": endpoint_url, "region_name": "us-east-1"},
        part_size=5 * 1024 * 1024,  # multipart above 5 MiB, in 5 MiB parts
        max_concurrency=2,  # parts in flight: memory stays near 5 MiB x (2 + 1)
    )
    manager = StorageManager(
        backends={"s3": backend},
        policies={"videos": StoragePolicy("videos", "s3", max_size=1 << 30, key_prefix="videos")},
    )
    # --8<-- [end:backend]

    async with manager:  # closes the S3 client at the end
        # --8<-- [start:upload]
        async def twelve_mib() -> AsyncIterator[bytes]:
            for _ in range(12):
                yield os.urandom(1024 * 1024)

        ref = await manager.aput_stream(
            storage_key="videos",
            model_name="lesson",
            entity_id=7,
            field_name="video",
            stream=twelve_mib(),  # 12 MiB: a multipart upload of three parts
            original_filename="intro.mp4",
        )
        assert ref.backend == "s3"
        assert ref.size == 12 * 1024 * 1024
        async with manager.aopen(ref, verify=True) as reader:  # streamed, and sha256-checked
            received = sum([len(chunk) async for chunk in reader])
        assert received == ref.size
        # --8<-- [end:upload]

        # --8<-- [start:presign]
        url = await manager.apresigned_url(ref, expires_in=600)  # no request to S3
        async with httpx.AsyncClient() as http:
            response = await http.get(url, headers={"Range": "bytes=0-99"})
        assert response.status_code == 206
        assert response.headers["content-disposition"] == 'attachment; filename="intro.mp4"'
        # --8<-- [end:presign]

        # --8<-- [start:presign-upload]
        upload = await manager.apresigned_upload(
            storage_key="videos",
            model_name="lesson",
            entity_id=7,
            field_name="video",
            original_filename="outro.mp4",  # also sets the Content-Type S3 will require
            expires_in=600,
        )
        assert upload.method == "POST"
        assert upload.location.startswith("videos/lesson/7/video/")
        # The browser sends upload.fields, then the file as the last field, named "file":
        async with httpx.AsyncClient() as http:
            response = await http.post(
                upload.url, data=upload.fields, files={"file": ("outro.mp4", b"...", "video/mp4")}
            )
        assert response.status_code in (200, 201, 204)
        # --8<-- [end:presign-upload]

        await manager.adelete(ref)
        assert not await manager.aexists(ref)
    print("s3 backend: ok")


if __name__ == "__main__":
    endpoint, bucket = os.environ.get("S3_ENDPOINT_URL"), os.environ.get("S3_BUCKET")
    if not endpoint or not bucket:
        raise SystemExit("set S3_ENDPOINT_URL and S3_BUCKET (and AWS credentials) to run this")
    asyncio.run(main(endpoint, bucket))
