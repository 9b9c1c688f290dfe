"""Amazon S3 and S3-compatible stores (MinIO, Cloudflare R2, Ceph, ...) through aioboto3.

One aiobotocore client per backend, opened on first use and closed by
:meth:`S3StorageBackend.aclose`. Uploads stream through
:mod:`granite_storage.backends._s3_multipart`; every botocore and aiohttp
error is translated here, at one edge (:func:`~granite_storage.backends._s3_io.s3_errors`), with the
original exception kept as ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio

try:
    import aioboto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "granite_storage.backends.s3 needs aioboto3; install it with: "
        "pip install 'granite-storage[s3]'"
    ) from exc

from granite_storage._util import as_utc, batched
from granite_storage.backends._s3_io import (
    S3Reader,
    error_code,
    is_not_found,
    is_valid_location,
    s3_errors,
)
from granite_storage.backends._s3_multipart import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    UploadTarget,
    acleanup_multipart_uploads,
    upload_stream,
)
from granite_storage.contracts import (
    BatchDeleteResult,
    BytesReader,
    ObjectInfo,
    ObjectReader,
    PresignedUpload,
    PutResult,
    StorageBackend,
)
from granite_storage.errors import (
    ConfigurationError,
    InvalidLocationError,
    ObjectNotFoundError,
    StorageError,
)
from granite_storage.locations import validate_location, validate_prefix
from granite_storage.refs import StoredObjectRef

__all__ = ["S3StorageBackend"]

_MiB = 1024 * 1024
_MAX_DELETE_BATCH = 1000  # S3's limit for one DeleteObjects request
_MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit
# Parameters aput_stream sets itself; extra_put_kwargs may not override them.
_RESERVED_PUT_KWARGS = frozenset(
    {"Bucket", "Key", "Body", "ChecksumAlgorithm", "ChecksumSHA256", "ContentLength", "ContentMD5"}
)
_HEADER_SAFE = re.compile(r"[\x20-\x7e]+")


class S3StorageBackend(StorageBackend):
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
        config = (client_kwargs or {}).get("config")
        if config is not None and not isinstance(config, Config):
            raise ConfigurationError(
                f"client_kwargs['config'] must be a botocore.config.Config, got {type(config)}"
            )
        self.bucket = bucket
        self.prefix = validate_prefix(prefix) or ""
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.checksum_validation = checksum_validation
        self.delete_batch_size = delete_batch_size
        self.extra_put_kwargs: dict[str, Any] = dict(extra_put_kwargs or {})
        self._session = session
        self._client_kwargs: dict[str, Any] = dict(client_kwargs or {})
        self._client: Any = None
        self._exit_stack: AsyncExitStack | None = None
        self._client_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"S3StorageBackend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- the client -----------------------------------------------------------

    def _client_config(self) -> Config:
        defaults: dict[str, Any] = {
            # Reads are verified by aopen(verify=True), off the event loop;
            # botocore's own validation would hash every chunk inside it.
            "response_checksum_validation": "when_required",
            "max_pool_connections": max(10, 2 * self.max_concurrency),
        }
        if self.checksum_validation:
            # Every upload then carries a signed ChecksumSHA256 header that the
            # server verifies the body against, so hashing the body once more
            # for the signature adds nothing. botocore skips that hash by itself
            # on https://, but on http:// (MinIO, moto) it hashes every part on
            # the event loop: ~8 ms per 8 MiB part, and a third sha256 pass.
            defaults["s3"] = {"payload_signing_enabled": False}
        else:
            defaults["request_checksum_calculation"] = "when_required"
        config = Config(**defaults)
        user_config = self._client_kwargs.get("config")
        return config.merge(user_config) if user_config is not None else config

    async def aget_client(self) -> Any:
        """The aiobotocore S3 client of this backend, opened on the first call.

        Use it for what the backend does not do itself (event hooks, bucket
        settings). Do not close it: :meth:`aclose` does.

        :raises ConfigurationError: if the client cannot be created from
            ``session`` and ``client_kwargs`` (an invalid endpoint URL, ...).
        """
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                session = await anyio.to_thread.run_sync(_preload_botocore, self._session)
                kwargs = {**self._client_kwargs, "config": self._client_config()}
                stack = AsyncExitStack()
                try:
                    client = await stack.enter_async_context(session.client("s3", **kwargs))
                except (BotoCoreError, ValueError) as exc:
                    raise ConfigurationError(
                        f"could not create an S3 client from client_kwargs: {exc}"
                    ) from exc
                self._client, self._exit_stack = client, stack
        return self._client

    async def aclose(self) -> None:
        """Close the client (and its connection pool). Safe to call twice;
        the backend opens a new client if it is used again afterwards."""
        with anyio.CancelScope(shield=True):
            async with self._client_lock:
                stack, self._client, self._exit_stack = self._exit_stack, None, None
                if stack is not None:
                    await stack.aclose()

    def _key(self, location: str) -> str:
        return f"{self.prefix}/{location}" if self.prefix else location

    # -- the protocol -----------------------------------------------------------

    async def aput_stream(
        self,
        *,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str | None = None,
    ) -> PutResult:
        """Stream ``chunks`` to location ``key``; see the class docstring.

        :raises ContentTooLargeError: as raised by ``chunks``; the upload is aborted.
        :raises BackendError: if S3 fails (after botocore's retries).
        :raises ConfigurationError: if the bucket does not exist or there are
            no credentials.
        """
        location = validate_location(key)
        put_kwargs = {**self.extra_put_kwargs, "Bucket": self.bucket, "Key": self._key(location)}
        if content_type and _HEADER_SAFE.fullmatch(content_type):
            # A type that cannot travel in an HTTP header (CR, LF, other control
            # or non-ASCII characters) is left out: S3 then stores its default,
            # and the ref keeps the type as given, as on every other backend.
            put_kwargs["ContentType"] = content_type
        target = UploadTarget(
            self.bucket, self._key(location), put_kwargs, self.checksum_validation
        )
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
        self,
        location: str,
        *,
        size: int | None,
        start: int,
        end: int | None,
        expected: StoredObjectRef | None,
    ) -> AsyncIterator[ObjectReader]:
        if end is not None and end <= start:
            # S3 ignores an empty (inverted) Range header and sends everything.
            if not await self._aexists(location):
                raise ObjectNotFoundError(f"no object at {location!r}", location=location)
            yield BytesReader(b"")
            return
        client = await self.aget_client()
        kwargs = {"Bucket": self.bucket, "Key": self._key(location)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response: Any = None
        with s3_errors("read", self.bucket, location):
            try:
                response = await client.get_object(**kwargs)
            except ClientError as exc:
                if error_code(exc) != "InvalidRange":
                    raise
        if response is None:  # the range starts at or after the end of the object
            yield BytesReader(b"")
            return
        reader = S3Reader(
            response["Body"],
            size=response.get("ContentLength"),
            expected=expected,
            bucket=self.bucket,
            location=location,
        )
        async with reader:
            yield reader

    async def _adelete(self, location: str) -> None:
        client = await self.aget_client()
        with s3_errors("delete", self.bucket, location):
            await client.delete_object(Bucket=self.bucket, Key=self._key(location))

    async def _aexists(self, location: str) -> bool:
        client = await self.aget_client()
        with s3_errors("check", self.bucket, location):
            try:
                await client.head_object(Bucket=self.bucket, Key=self._key(location))
            except ClientError as exc:
                if is_not_found(exc):
                    return False
                raise
        return True

    async def aiter_objects(self, prefix: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` (at a ``/`` boundary), listed with
        ListObjectsV2 pages of up to 1000 keys. Keys outside the backend's
        prefix, and keys that are not valid locations (such as ``folder/``
        markers made by consoles), are never listed.

        :raises BackendError: if listing fails.
        """
        prefix = validate_prefix(prefix)
        if prefix:
            list_prefix = self._key(prefix) + "/"
        else:
            list_prefix = f"{self.prefix}/" if self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        client = await self.aget_client()
        paginator = client.get_paginator("list_objects_v2")
        with s3_errors("list", self.bucket, prefix):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                for item in page.get("Contents", ()):
                    location = item["Key"][strip:]
                    if is_valid_location(location):
                        yield ObjectInfo(location, int(item["Size"]), as_utc(item["LastModified"]))

    async def adelete_many(self, locations: Sequence[str]) -> BatchDeleteResult:
        """Delete ``locations`` with DeleteObjects, ``delete_batch_size`` keys a
        request (Quiet mode), ``max_concurrency`` requests at once.

        Nothing is raised: an invalid location, a key S3 refused and every key
        of a request that failed as a whole land in ``failed`` with the reason.
        Missing objects count as deleted.
        """
        result = BatchDeleteResult()
        by_key: dict[str, str] = {}
        for location in locations:
            try:
                by_key.setdefault(self._key(validate_location(location)), location)
            except InvalidLocationError as exc:
                result.failed[location] = f"InvalidLocationError: {exc}"
        keys = list(by_key)
        batches = batched(keys, self.delete_batch_size)
        if not batches:
            return result
        limiter = anyio.CapacityLimiter(self.max_concurrency)

        async def delete_batch(batch: Sequence[str]) -> None:
            async with limiter:
                try:
                    client = await self.aget_client()
                    with s3_errors(f"delete {len(batch)} objects from", self.bucket):
                        response = await client.delete_objects(
                            Bucket=self.bucket,
                            Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                        )
                except StorageError as exc:  # reported per key, not raised
                    for key in batch:
                        result.failed[by_key[key]] = f"{type(exc).__name__}: {exc}"
                    return
            refused = {
                error.get("Key"): f"{error.get('Code')}: {error.get('Message')}"
                for error in response.get("Errors", ())
            }
            for key in batch:
                if key in refused:
                    result.failed[by_key[key]] = refused[key]
                else:
                    result.deleted.append(by_key[key])

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(delete_batch, batch)
        return result

    async def acleanup_leftovers(self, *, older_than: datetime, dry_run: bool = True) -> int:
        """Abort the multipart uploads under the backend's prefix that were
        initiated before ``older_than`` (uploads of crashed or killed
        processes); return how many there were. ``dry_run`` only counts.

        An upload still in progress that started before ``older_than`` is
        aborted too: pick a cutoff older than your longest upload.

        :raises BackendError: if listing or aborting fails.
        """
        client = await self.aget_client()
        with s3_errors("clean up incomplete uploads in", self.bucket):
            return await acleanup_multipart_uploads(
                client,
                bucket=self.bucket,
                prefix=f"{self.prefix}/" if self.prefix else "",
                older_than=as_utc(older_than),
                dry_run=dry_run,
            )

    async def apresigned_download_url(
        self,
        ref: StoredObjectRef,
        *,
        expires_in: int = 3600,
        content_disposition: str | None = None,
    ) -> str:
        """A presigned GetObject URL for ``ref``'s object, valid ``expires_in``
        seconds (at most 7 days). ``content_disposition`` becomes the response's
        ``Content-Disposition`` header. No request is sent to S3: the URL works
        only if the object exists when it is fetched.

        :raises ValueError: if ``expires_in`` is not between 1 s and 7 days.
        :raises InvalidLocationError: if the ref's location is unsafe.
        """
        location = validate_location(ref.location)
        _check_expiry(expires_in)
        params = {"Bucket": self.bucket, "Key": self._key(location)}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        client = await self.aget_client()
        with s3_errors("presign a download of", self.bucket, location):
            url: str = await client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )
        return url

    async def apresigned_upload(
        self,
        *,
        key: str,
        max_size: int | None,
        content_type: str | None = None,
        expires_in: int = 3600,
    ) -> PresignedUpload:
        """A presigned POST (browser form upload) of one object to location
        ``key``. S3 refuses a file larger than ``max_size`` (a
        ``content-length-range`` condition) or with another ``Content-Type``
        than ``content_type``. Send ``fields`` and then the file, as the last
        form field named ``file``, to ``url``.

        :raises ValueError: if ``expires_in`` is not between 1 s and 7 days.
        :raises InvalidLocationError: if ``key`` is unsafe.
        """
        location = validate_location(key)
        _check_expiry(expires_in)
        fields: dict[str, str] = {}
        conditions: list[Any] = []
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        if max_size is not None:
            conditions.append(["content-length-range", 0, max_size])
        client = await self.aget_client()
        with s3_errors("presign an upload to", self.bucket, location):
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


def _preload_botocore(session: aioboto3.Session | None) -> aioboto3.Session:
    """Return ``session`` (a new one if None) with the files botocore reads to
    create and use an S3 client already loaded; runs in a worker thread.

    aiobotocore reads and parses them synchronously inside the async client
    creation, which held the event loop for about 110 ms; afterwards the
    creation finds them in the loader's cache. Building a session reads the
    AWS config files, and aioboto3 imports its S3 helpers (and boto3's
    transfer module) on the first client: both happen here too.
    """
    import aioboto3.s3.inject  # imported by the first client creation

    session = session if session is not None else aioboto3.Session()
    core = getattr(session, "_session", None)  # the botocore session; absent on look-alikes
    if core is None:
        return session
    loader = core.get_component("data_loader")
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        loader.load_service_model("s3", type_name)
    return session


def _check_expiry(expires_in: int) -> None:
    if not 1 <= expires_in <= _MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"expires_in must be between 1 and {_MAX_PRESIGN_SECONDS} seconds (7 days), "
            f"got {expires_in}"
        )
