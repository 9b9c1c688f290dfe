"""Incomplete multipart uploads: the idle ones a collection removes, and the
strays a retried CreateMultipartUpload can leave behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from granite_storage._util import as_utc


async def aabort_uploads_of_key(client: Any, bucket: str, key: str, *, keep: str | None) -> int:
    """Abort every pending multipart upload of exactly ``key`` except the
    upload ``keep``; return how many. Upload ids that completed or vanished
    meanwhile are skipped.

    Only for a key that one write owns (the manager's locations carry a random
    token): the uploads of a CreateMultipartUpload retried after a lost answer.
    ``Initiated`` cannot narrow it down: S3-compatible servers do not all
    report it (moto answers a fixed date).

    :raises botocore.exceptions.ClientError: and other botocore errors, raw.
    """
    count = 0
    paginator = client.get_paginator("list_multipart_uploads")
    async for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for upload in page.get("Uploads", ()):
            if upload["Key"] == key and upload["UploadId"] != keep:
                count += await _aabort(client, bucket, upload)
    return count


async def acleanup_multipart_uploads(
    client: Any,
    *,
    bucket: str,
    prefix: str,
    strip: int,
    older_than: datetime,
    dry_run: bool,
    in_use: Callable[[list[str]], Awaitable[Collection[str]]],
) -> int:
    """Abort the multipart uploads under key ``prefix`` idle since before
    ``older_than`` (aware): initiated before it and no part received since
    (ListParts' latest ``LastModified``), unless ``in_use`` returns their
    location (the key without its first ``strip`` characters). Return how
    many were aborted (one that completed meanwhile is not counted);
    ``dry_run`` only counts.

    :raises botocore.exceptions.ClientError: and other botocore errors, raw.
    """
    count = 0
    paginator = client.get_paginator("list_multipart_uploads")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        idle: dict[str, dict[str, Any]] = {}
        for upload in page.get("Uploads", ()):
            if as_utc(upload["Initiated"]) >= older_than:
                continue
            if await _alast_part_time(client, bucket, upload) >= older_than:
                continue  # still receiving parts: in progress, however long it runs
            idle[upload["Key"][strip:]] = upload
        for location in set(await in_use(list(idle))):
            idle.pop(location, None)
        if dry_run:
            count += len(idle)
            continue
        for upload in idle.values():
            count += await _aabort(client, bucket, upload)
    return count


async def _aabort(client: Any, bucket: str, upload: dict[str, Any]) -> int:
    """Abort ``upload``: 1, or 0 if it completed or was aborted meanwhile
    (not ours to count)."""
    try:
        await client.abort_multipart_upload(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise
        return 0
    return 1


async def _alast_part_time(client: Any, bucket: str, upload: dict[str, Any]) -> datetime:
    """When ``upload`` last received a part (its initiation if none)."""
    latest = as_utc(upload["Initiated"])
    paginator = client.get_paginator("list_parts")
    try:
        async for page in paginator.paginate(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        ):
            for part in page.get("Parts", ()):
                latest = max(latest, as_utc(part["LastModified"]))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise
    return latest
