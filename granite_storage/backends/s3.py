"""Amazon S3 and S3-compatible stores (MinIO, Cloudflare R2, Ceph, ...) through aioboto3.

One aiobotocore client per backend (:mod:`~granite_storage.backends._s3_client`),
opened on first use and closed by :meth:`S3StorageBackend.aclose`. Uploads
stream through :mod:`granite_storage.backends._s3_multipart`; every botocore
and aiohttp error is translated at one edge
(:func:`~granite_storage.backends._s3_io.s3_errors`), with the original
exception kept as ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

try:
    import aioboto3
    from botocore.exceptions import ClientError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "granite_storage.backends.s3 needs aioboto3; install it with: "
        "pip install 'granite-storage[s3]'"
    ) from exc

from granite_storage._util import as_utc
from granite_storage.backends._s3_client import S3Client
from granite_storage.backends._s3_direct import S3DirectUploads
from granite_storage.backends._s3_io import S3Reader, error_code, is_not_found, s3_errors
from granite_storage.backends._s3_leftovers import acleanup_multipart_uploads
from granite_storage.backends._s3_multipart import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    UploadTarget,
    upload_stream,
)
from granite_storage.contracts import (
    BatchDeleteResult,
    BytesReader,
    InUse,
    ObjectInfo,
    ObjectReader,
    PresignedUpload,
    PutResult,
    StorageBackend,
)
from granite_storage.errors import ConfigurationError, ObjectNotFoundError
from granite_storage.locations import validate_prefix

__all__ = ["S3StorageBackend"]

_MiB = 1024 * 1024
_MAX_DELETE_BATCH = 1000  # S3's limit for one DeleteObjects request
# Parameters aput_stream sets itself; extra_put_kwargs may not override them.
_RESERVED_PUT_KWARGS = frozenset(
    {"Bucket", "Key", "Body", "ChecksumAlgorithm", "ChecksumSHA256", "ContentLength", "ContentMD5"}
)
_HEADER_SAFE = re.compile(r"[\x20-\x7e]+")


class S3StorageBackend(S3DirectUploads, StorageBackend):
    """Objects stored in an S3 bucket, or in any S3-compatible store.

    Moving from :class:`~granite_storage.backends.local.LocalStorageBackend`
    to S3, MinIO, Cloudflare R2 or Ceph changes no application code: only the
    backend given to the :class:`~granite_storage.StorageManager`. For a
    store other than AWS, set ``endpoint_url`` in ``client_kwargs``::

        backend = S3StorageBackend(
            bucket="uploads",
            prefix="prod",
            client_kwargs={"endpoint_url": "http://minio:9000", "region_name": "us-east-1",
                           "config": Config(retries={"mode": "standard", "max_attempts": 5})},
            extra_put_kwargs={"ServerSideEncryption": "AES256"},
        )

    **Client.** The backend opens one aiobotocore client on first use (two
    concurrent first calls still open one) and keeps it until :meth:`aclose`,
    which ``StorageManager.aclose()`` and ``async with manager`` call. The
    constructor does no I/O. After ``aclose`` the next call opens a new client.

    **Uploads** stream. An object of at most ``part_size`` bytes goes up with
    one PutObject; a larger one as a multipart upload whose parts are sent
    concurrently (at most ``max_concurrency`` at once) while the next part is
    read, so memory stays near ``part_size * (max_concurrency + 1)`` whatever
    the object size. Size and sha256 are computed while streaming, in worker
    threads. On any failure, cancellation or ``ContentTooLargeError`` the
    multipart upload is aborted (in a cancellation-shielded scope) and the
    original exception propagates; no object appears. If the caller is
    cancelled (or the connection drops) while the final PutObject or
    CompleteMultipartUpload is answered, the object may exist; the backend
    then deletes its key, which is safe because every write goes to a new,
    unique location. Uploads that a crashed process left behind are removed
    by :meth:`acleanup_leftovers`.

    **Presigned URLs.** ``manager.apresigned_url(ref)`` gives a GetObject URL
    with the ref's file name in ``Content-Disposition``;
    ``manager.apresigned_upload(...)`` gives a browser form upload (POST)
    that S3 refuses above the policy's ``max_size``.

    **Checksums.** With ``checksum_validation=True`` every PutObject and
    UploadPart carries a ``ChecksumSHA256`` so that S3 verifies the bytes it
    received and stores the checksum with the object. Turn it off for stores
    that reject S3's flexible checksums; botocore then also stops adding its
    own default CRC32 checksums to uploads (``request_checksum_calculation=
    "when_required"``), unless your ``Config`` says otherwise.

    **Errors.** A missing object raises
    :class:`~granite_storage.errors.ObjectNotFoundError`; a missing bucket or
    missing credentials raise :class:`~granite_storage.errors.ConfigurationError`;
    every other botocore or network error raises
    :class:`~granite_storage.errors.BackendError` with the original error as
    ``__cause__``. Locations and prefixes are validated before any I/O
    (:class:`~granite_storage.errors.InvalidLocationError`).

    :param bucket: the bucket that holds the objects; it must exist.
    :param prefix: a key prefix for every object of this backend: location
        ``docs/a.pdf`` is stored at key ``{prefix}/docs/a.pdf``. Listings,
        deletes and leftover clean-up never leave it.
    :param session: the ``aioboto3.Session`` to create the client from (its
        credentials and profile); a default session when ``None``.
    :param client_kwargs: keyword arguments for ``session.client("s3", ...)``:
        ``endpoint_url``, ``region_name``, ``config`` (a ``botocore.config.Config``
        for retries, timeouts and addressing style), credentials. The backend's
        defaults (response checksum validation left to ``aopen(verify=True)``,
        a connection pool of at least ``2 * max_concurrency``) are merged under
        your ``config``: what you set wins.
    :param part_size: the size of each multipart part, and the largest object
        sent with a single PutObject. Between 5 MiB and 5 GiB; an object can
        have at most 10,000 parts, so 8 MiB parts allow objects up to ~78 GiB.
    :param max_concurrency: how many parts of one upload (and how many batch
        delete requests) are in flight at once.
    :param extra_put_kwargs: extra parameters for PutObject and
        CreateMultipartUpload, e.g. ``ServerSideEncryption``, ``SSEKMSKeyId``,
        ``StorageClass``, ``CacheControl``, ``Metadata``.
    :param checksum_validation: send SHA-256 checksums with uploads (see above).
    :param delete_batch_size: keys per DeleteObjects request in
        :meth:`adelete_many` (S3 allows at most 1000).
    :raises ConfigurationError: for an empty bucket name, a part size, a
        concurrency or a batch size out of range, or ``extra_put_kwargs`` that
        set ``Bucket``, ``Key``, ``Body`` or checksum parameters.
    :raises InvalidLocationError: if ``prefix`` is not a safe key prefix.
    """

    backend_name = "s3"
    timestamp_resolution = timedelta(seconds=1)

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        session: aioboto3.Session | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        part_size: int = 8 * _MiB,
        max_concurrency: int = 4,
        extra_put_kwargs: Mapping[str, Any] | None = None,
        checksum_validation: bool = True,
        delete_batch_size: int = _MAX_DELETE_BATCH,
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ConfigurationError(f"bucket must be a non-empty string, got {bucket!r}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigurationError(
                f"part_size must be between 5 MiB ({MIN_PART_SIZE}) and 5 GiB "
                f"({MAX_PART_SIZE}) bytes, S3's limits; got {part_size}"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if not 1 <= delete_batch_size <= _MAX_DELETE_BATCH:
            raise ConfigurationError(
                f"delete_batch_size must be between 1 and {_MAX_DELETE_BATCH}, "
                f"got {delete_batch_size}"
            )
        reserved = _RESERVED_PUT_KWARGS.intersection(extra_put_kwargs or {})
        if reserved:
            raise ConfigurationError(
                f"extra_put_kwargs cannot set {sorted(reserved)}: the backend sets them itself"
            )
        self.bucket = bucket
        self.prefix = validate_prefix(prefix) or ""
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.checksum_validation = checksum_validation
        self.delete_batch_size = delete_batch_size
        self.delete_concurrency = max_concurrency
        self.extra_put_kwargs: dict[str, Any] = dict(extra_put_kwargs or {})
        self._client = S3Client(
            session,
            client_kwargs,
            max_concurrency=max_concurrency,
            checksum_validation=checksum_validation,
        )

    def __repr__(self) -> str:
        return f"S3StorageBackend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    async def aget_client(self) -> Any:
        """The aiobotocore S3 client of this backend, opened on the first call.

        Use it for what the backend does not do itself (event hooks, bucket
        settings). Do not close it: :meth:`aclose` does.

        :raises ConfigurationError: if the client cannot be created from
            ``session`` and ``client_kwargs`` (an invalid endpoint URL, ...).
        """
        return await self._client.aget()

    def _key(self, location: str) -> str:
        return f"{self.prefix}/{location}" if self.prefix else location

    def _list_prefix(self, prefix: str | None) -> str:
        """The key prefix that lists what lies under location ``prefix``."""
        return self._key(prefix) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")

    # -- the primitives ---------------------------------------------------------

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        return s3_errors(action, self.bucket, location)

    async def _aclose(self) -> None:
        await self._client.aclose()

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        key = self._key(location)
        put_kwargs = {**self.extra_put_kwargs, "Bucket": self.bucket, "Key": key}
        if content_type and _HEADER_SAFE.fullmatch(content_type):
            # A type that cannot travel in an HTTP header (CR, LF, other control
            # or non-ASCII characters) is left out: S3 then stores its default,
            # and the ref keeps the type as given, as on every other backend.
            put_kwargs["ContentType"] = content_type
        target = UploadTarget(self.bucket, key, put_kwargs, self.checksum_validation)
        client = await self.aget_client()
        with s3_errors("upload", self.bucket, location):
            return await upload_stream(
                client,
                target,
                chunks,
                part_size=self.part_size,
                max_concurrency=self.max_concurrency,
            )

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[ObjectReader]:
        if end is not None and end <= start:
            # S3 ignores an empty (inverted) Range header and sends everything.
            if not await self._aexists(location):
                raise ObjectNotFoundError(f"no object at {location!r}", location=location)
            yield BytesReader(b"")
            return
        kwargs = {"Bucket": self.bucket, "Key": self._key(location)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        client = await self.aget_client()
        try:
            response = await client.get_object(**kwargs)
        except ClientError as exc:
            if error_code(exc) != "InvalidRange":
                raise
            response = None  # the range starts at or after the end of the object
        if response is None:
            yield BytesReader(b"")
            return
        async with S3Reader(response["Body"], size=response.get("ContentLength")) as reader:
            yield reader

    async def _adelete(self, location: str) -> None:
        client = await self.aget_client()
        await client.delete_object(Bucket=self.bucket, Key=self._key(location))

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        """One DeleteObjects request (Quiet mode) for ``locations``; the keys
        S3 refused are reported with S3's code and message."""
        by_key = {self._key(location): location for location in locations}
        client = await self.aget_client()
        response = await client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in by_key], "Quiet": True}
        )
        refused = {
            error.get("Key"): f"{error.get('Code')}: {error.get('Message')}"
            for error in response.get("Errors", ())
        }
        result = BatchDeleteResult()
        for key, location in by_key.items():
            if key in refused:
                result.failed[location] = refused[key]
            else:
                result.deleted.append(location)
        return result

    async def _aexists(self, location: str) -> bool:
        client = await self.aget_client()
        try:
            await client.head_object(Bucket=self.bucket, Key=self._key(location))
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        """ListObjectsV2 pages of up to 1000 keys, never outside the backend's prefix."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        client = await self.aget_client()
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._list_prefix(prefix)):
            for item in page.get("Contents", ()):
                modified = as_utc(item["LastModified"])
                yield ObjectInfo(item["Key"][strip:], int(item["Size"]), modified)

    async def _acleanup_leftovers(
        self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
    ) -> int:
        """Abort the multipart uploads under ``prefix`` (inside the backend's
        prefix) idle since before ``older_than``: an upload still receiving
        parts is kept however long ago it started."""
        client = await self.aget_client()
        return await acleanup_multipart_uploads(
            client,
            bucket=self.bucket,
            prefix=self._list_prefix(prefix),
            strip=len(self.prefix) + 1 if self.prefix else 0,
            older_than=older_than,
            dry_run=dry_run,
            in_use=in_use,
        )

    async def _apresign_download(
        self, location: str, *, expires_in: int, content_disposition: str | None
    ) -> str:
        """A presigned GetObject URL; no request is sent to S3, so the URL
        works only if the object exists when it is fetched."""
        params = {"Bucket": self.bucket, "Key": self._key(location)}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        client = await self.aget_client()
        url: str = await client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_in
        )
        return url

    async def _apresign_upload(
        self, location: str, *, max_size: int | None, content_type: str | None, expires_in: int
    ) -> PresignedUpload:
        """A presigned POST (browser form upload). S3 refuses a file larger
        than ``max_size`` (a ``content-length-range`` condition) or with
        another ``Content-Type`` than ``content_type``. Send ``fields`` and
        then the file, as the last form field named ``file``, to ``url``."""
        fields: dict[str, str] = {}
        conditions: list[Any] = []
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        if max_size is not None:
            conditions.append(["content-length-range", 0, max_size])
        client = await self.aget_client()
        post = await client.generate_presigned_post(
            self.bucket,
            self._key(location),
            Fields=fields,
            Conditions=conditions,
            ExpiresIn=expires_in,
        )
        return PresignedUpload(
            method="POST",
            url=str(post["url"]),
            location=location,
            fields={str(name): str(value) for name, value in post["fields"].items()},
        )
