"""Streaming uploads to S3: one PutObject for a small object, a concurrent
multipart upload for a large one, aborted on any failure or cancellation.

Memory stays near ``part_size * (max_concurrency + 1)`` whatever the object
size: at most ``max_concurrency`` parts are in flight while the next one is
read. The whole stream is hashed (size and sha256) as chunks arrive, in
worker threads, while earlier parts are uploading.

Raw botocore errors propagate from here; :mod:`granite_storage.backends.s3`
translates them at its one edge. Errors from the task group come out
unwrapped, never as an ``ExceptionGroup``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from botocore.exceptions import ClientError

from granite_storage.backends._s3_leftovers import aabort_uploads_of_key
from granite_storage.contracts import PutResult
from granite_storage.errors import BackendError
from granite_storage.streams import Sha256Digest

#: S3's smallest allowed part (all parts but the last), and its largest.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = 10_000
# How long a shielded clean-up (abort, delete) may hold up a cancellation.
_CLEANUP_TIMEOUT = 60.0

logger = logging.getLogger("granite_storage.backends.s3")


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where an upload goes and the request parameters it carries.

    ``put_kwargs`` holds ``Bucket``, ``Key`` and the optional parameters
    (``ContentType``, ``ServerSideEncryption``, ...) sent with PutObject and
    CreateMultipartUpload.
    """

    bucket: str
    key: str
    put_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Send a SHA-256 checksum with every PutObject/UploadPart so the server
    #: verifies the bytes it received.
    checksums: bool = True


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a caller should see for a task group's ``group``: the
    first one that is not a cancellation, else the first cancellation."""
    leaves = list(_leaves(group))
    cancelled = anyio.get_cancelled_exc_class()
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0] if leaves else group


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _sha256_b64(part: io.BytesIO) -> str:
    with part.getbuffer() as data:
        return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _digest_b64(digest: Sha256Digest) -> str:
    """The base64 form S3 wants of a ``"sha256:<hex>"`` checksum."""
    return base64.b64encode(bytes.fromhex(digest.checksum.removeprefix("sha256:"))).decode()


class PartSplitter:
    """Cut a stream of chunks into parts of exactly ``part_size`` bytes (the
    last one may be shorter), updating ``digest`` with every chunk read.

    Each part is an :class:`io.BytesIO` that owns its buffer, filled as the
    chunks arrive: botocore sends such a body as it is, while a ``bytes`` body
    would be wrapped in a ``BytesIO`` that shares it, and aiohttp's
    ``getbuffer()`` on that wrapper copies the whole part once more. At most
    one part plus the rest of one chunk is buffered.
    """

    def __init__(self, chunks: AsyncIterator[bytes], part_size: int, digest: Sha256Digest) -> None:
        self._chunks = chunks
        self._part_size = part_size
        self._digest = digest
        # What the last chunk held past the end of the previous part.
        self._carry: bytes | memoryview | None = None
        # A part read ahead by fits_in_one_part().
        self._ready: io.BytesIO | None = None
        self._exhausted = False

    async def _anext_chunk(self) -> bytes | memoryview | None:
        if self._carry is not None:
            chunk, self._carry = self._carry, None
            return chunk
        while not self._exhausted:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._exhausted = True
                break
            if chunk:
                await self._digest.aupdate(chunk)
                return chunk
        return None

    async def fits_in_one_part(self) -> bool:
        """Whether the whole stream fits in one part. Reads that part ahead:
        :meth:`read_part` returns it next."""
        self._ready = await self.read_part()
        return await self.at_end()

    async def at_end(self) -> bool:
        """Whether the stream has no bytes left (reads one chunk ahead if needed)."""
        self._carry = await self._anext_chunk()
        return self._carry is None

    async def read_part(self) -> io.BytesIO:
        """The next part, positioned at its start: ``part_size`` bytes, fewer
        only at the end of the stream."""
        if self._ready is not None:
            part, self._ready = self._ready, None
            return part
        part = io.BytesIO()
        sized = False
        while (room := self._part_size - part.tell()) > 0:
            chunk = await self._anext_chunk()
            if chunk is None:
                break
            if len(chunk) > room:  # split without copying what stays for the next part
                view = memoryview(chunk)
                chunk, self._carry = view[:room], view[room:]
            elif not sized and part.tell():
                # A second chunk: size the buffer once instead of growing it
                # chunk by chunk (each growth may move it, holding the old and
                # the new copy at once). Objects of one chunk never get here.
                end = part.tell()
                part.seek(self._part_size - 1)
                part.write(b"\0")
                part.seek(end)
                sized = True
            part.write(chunk)
        part.truncate()  # a short last part: drop the rest of the buffer
        part.seek(0)
        return part


async def upload_stream(
    client: Any,
    target: UploadTarget,
    chunks: AsyncIterator[bytes],
    *,
    part_size: int,
    max_concurrency: int,
) -> PutResult:
    """Upload ``chunks`` to ``target``, all or nothing, and return its size and sha256.

    A stream of at most ``part_size`` bytes goes up with one PutObject; a
    longer one as a multipart upload with up to ``max_concurrency`` parts in
    flight. On any error or cancellation, including one raised by ``chunks``
    itself, the multipart upload is aborted in a shielded scope and the
    original exception propagates unchanged.

    :raises botocore.exceptions.ClientError: and other botocore errors, raw.
    :raises ~granite_storage.errors.BackendError: if the object needs more
        than 10,000 parts of ``part_size``.
    """
    digest = Sha256Digest()
    parts = PartSplitter(chunks, part_size, digest)
    if await parts.fits_in_one_part():
        await _put_object(client, target, await parts.read_part(), digest)
    else:
        upload = _MultipartUpload(client, target, max_concurrency, part_size)
        await upload.arun(parts)
    return PutResult(size=digest.size, checksum=digest.checksum)


async def _put_object(
    client: Any, target: UploadTarget, body: io.BytesIO, digest: Sha256Digest
) -> None:
    kwargs = {**target.put_kwargs, "Body": body}
    if target.checksums:
        # ``body`` is the whole stream, so the stream's digest is its checksum.
        kwargs.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=_digest_b64(digest))
    try:
        await client.put_object(**kwargs)
    except BaseException as exc:
        if not refused_at_once(exc):
            # Cancelled, the connection failed, or an earlier attempt went
            # unanswered: the object may exist. Its key is new (every write
            # gets a unique location), so removing it is safe.
            await _adelete_quietly(client, target)
        raise


def refused_at_once(exc: BaseException) -> bool:
    """Whether ``exc`` proves nothing was written: the server refused the
    request (a ``ClientError``) on its first attempt. After a retry, an
    earlier attempt may have been carried out with its answer lost."""
    if not isinstance(exc, ClientError):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) == 0


async def _adelete_quietly(client: Any, target: UploadTarget) -> None:
    with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
        try:
            await client.delete_object(Bucket=target.bucket, Key=target.key)
        except Exception as exc:  # the original error matters more; log this one
            logger.warning("could not delete %r after a failed upload: %r", target.key, exc)


class _MultipartUpload:
    """One multipart upload: create, upload parts concurrently, complete or abort."""

    def __init__(
        self, client: Any, target: UploadTarget, max_concurrency: int, part_size: int
    ) -> None:
        self._client = client
        self._target = target
        self._part_size = part_size
        self._slots = anyio.Semaphore(max_concurrency)
        self._uploaded: list[dict[str, Any]] = []
        self._completing = False

    async def arun(self, parts: PartSplitter) -> None:
        create_kwargs = dict(self._target.put_kwargs)
        if self._target.checksums:
            create_kwargs["ChecksumAlgorithm"] = "SHA256"
        # Shielded: cancelled while this request is in flight, the upload could
        # exist on the server without us ever learning its id to abort it. The
        # cancellation is delivered at the first checkpoint inside the try.
        with anyio.CancelScope(shield=True):
            try:
                response = await self._client.create_multipart_upload(**create_kwargs)
            except BaseException:
                # An attempt whose answer was lost may have created an upload.
                await self._aabort_strays(keep=None)
                raise
        upload_id: str = response["UploadId"]
        # A retried create may have left uploads whose answers were lost.
        retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        try:
            await anyio.lowlevel.checkpoint()
            await self._aupload_parts(upload_id, parts)
            await self._acomplete(upload_id)
        except BaseException as exc:
            # A ClientError from CompleteMultipartUpload's first attempt means
            # it was refused; anything else during it (cancellation, a dropped
            # connection, an unanswered attempt before the error) leaves the
            # outcome unknown, so the object may exist.
            outcome_unknown = self._completing and not refused_at_once(exc)
            await self._aabort(upload_id, delete_object=outcome_unknown)
            raise
        finally:
            if retried:
                await self._aabort_strays(keep=upload_id)

    async def _aabort_strays(self, *, keep: str | None) -> None:
        """Abort the uploads of this key but ``keep``: those of create attempts
        whose answers were lost (keys are unique per write). Shielded, bounded
        and quiet, like :meth:`_aabort`."""
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            try:
                await aabort_uploads_of_key(
                    self._client, self._target.bucket, self._target.key, keep=keep
                )
            except Exception as exc:
                logger.warning(
                    "could not look for stray multipart uploads of %r; "
                    "acleanup_leftovers() will remove them: %r",
                    self._target.key,
                    exc,
                )

    async def _aupload_parts(self, upload_id: str, parts: PartSplitter) -> None:
        error: BaseException
        try:
            async with anyio.create_task_group() as tg:
                number = 0
                while True:
                    part = await parts.read_part()
                    number += 1
                    # Wait for a free slot while holding one part: at most
                    # max_concurrency parts in flight plus the one just read.
                    await self._slots.acquire()
                    tg.start_soon(self._aupload_part, upload_id, number, part)
                    del part  # the task holds the only reference: freed once sent
                    if await parts.at_end():
                        break
                    if number == MAX_PARTS:
                        raise BackendError(
                            f"the object is larger than {MAX_PARTS} parts of {self._part_size} "
                            "bytes, S3's limit for one upload; create the backend with a "
                            "larger part_size"
                        )
        except BaseExceptionGroup as group:
            error = first_error(group)
        else:
            return
        raise error  # outside the except block: no group chained as context

    async def _aupload_part(self, upload_id: str, number: int, body: io.BytesIO) -> None:
        try:
            kwargs: dict[str, Any] = {
                "Bucket": self._target.bucket,
                "Key": self._target.key,
                "UploadId": upload_id,
                "PartNumber": number,
                "Body": body,
            }
            entry: dict[str, Any] = {"PartNumber": number}
            if self._target.checksums:
                checksum = await anyio.to_thread.run_sync(_sha256_b64, body)
                kwargs.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
                entry["ChecksumSHA256"] = checksum
            response = await self._client.upload_part(**kwargs)
            entry["ETag"] = response["ETag"]
            self._uploaded.append(entry)
        finally:
            self._slots.release()

    async def _acomplete(self, upload_id: str) -> None:
        self._completing = True
        await self._client.complete_multipart_upload(
            Bucket=self._target.bucket,
            Key=self._target.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": sorted(self._uploaded, key=lambda e: e["PartNumber"])},
        )

    async def _aabort(self, upload_id: str, *, delete_object: bool) -> None:
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            try:
                await self._client.abort_multipart_upload(
                    Bucket=self._target.bucket, Key=self._target.key, UploadId=upload_id
                )
            except Exception as exc:  # the original error matters more; log this one
                code = (
                    exc.response.get("Error", {}).get("Code")
                    if isinstance(exc, ClientError)
                    else None
                )
                if code != "NoSuchUpload":  # NoSuchUpload: it completed or is gone already
                    logger.warning(
                        "could not abort multipart upload %s of %r; "
                        "acleanup_leftovers() will remove it: %r",
                        upload_id,
                        self._target.key,
                        exc,
                    )
        if delete_object:
            await _adelete_quietly(self._client, self._target)
