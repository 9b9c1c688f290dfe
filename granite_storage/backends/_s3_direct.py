"""Direct multipart uploads on S3: the client PUTs each part to a presigned
UploadPart URL; the server starts, lists, completes and aborts the upload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from granite_storage._objects import UploadedPart
from granite_storage.backends._s3_io import error_code
from granite_storage.errors import InvalidUploadError


class S3DirectUploads:
    """The multipart primitives of :class:`~granite_storage.backends.s3.S3StorageBackend`."""

    bucket: str
    extra_put_kwargs: dict[str, Any]

    async def aget_client(self) -> Any:
        raise NotImplementedError  # S3StorageBackend's

    def _key(self, location: str) -> str:
        raise NotImplementedError  # S3StorageBackend's

    async def _acreate_multipart(self, location: str, content_type: str | None) -> str:
        kwargs = {**self.extra_put_kwargs, "Bucket": self.bucket, "Key": self._key(location)}
        if content_type:
            kwargs["ContentType"] = content_type
        client = await self.aget_client()
        response = await client.create_multipart_upload(**kwargs)
        return str(response["UploadId"])

    async def _apresign_part(
        self, location: str, upload_id: str, part_number: int, expires_in: int
    ) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": self._key(location),
            "UploadId": upload_id,
            "PartNumber": part_number,
        }
        client = await self.aget_client()
        url: str = await client.generate_presigned_url(
            "upload_part", Params=params, ExpiresIn=expires_in
        )
        return url

    async def _alist_parts(self, location: str, upload_id: str) -> list[UploadedPart]:
        client = await self.aget_client()
        parts: list[UploadedPart] = []
        paginator = client.get_paginator("list_parts")
        key = self._key(location)
        try:
            if not await self._aupload_exists(client, key, upload_id):
                # Some stores (moto) find an upload by its id alone, whatever the key.
                raise ClientError({"Error": {"Code": "NoSuchUpload"}}, "ListParts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend(
                    UploadedPart(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                    for p in page.get("Parts", ())
                )
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                raise InvalidUploadError(
                    f"no multipart upload {upload_id!r} to {location!r}: it was completed or "
                    "aborted, or never existed"
                ) from exc
            raise
        return sorted(parts, key=lambda part: part.part_number)

    async def _aupload_exists(self, client: Any, key: str, upload_id: str) -> bool:
        paginator = client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
            for upload in page.get("Uploads", ()):
                if upload["Key"] == key and upload["UploadId"] == upload_id:
                    return True
        return False

    async def _acomplete_multipart(
        self, location: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        client = await self.aget_client()
        await client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self._key(location),
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]
            },
        )

    async def _aabort_multipart(self, location: str, upload_id: str) -> None:
        client = await self.aget_client()
        key = self._key(location)
        if not await self._aupload_exists(client, key, upload_id):
            return  # aborted or completed already, or an id of another key: nothing to do
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
