"""The base class of every storage backend, and the values it trades in.

A backend subclasses :class:`StorageBackend` and implements a few primitives
on validated locations; the public methods, which cannot be overridden,
check, batch and translate errors once for every backend. Readers subclass
:class:`ObjectReader` and implement only ``_read_chunk``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    nullcontext,
)
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import anyio

from granite_storage._concurrency import aclose_quietly
from granite_storage._direct_seam import DirectUploadSeam, check_expiry
from granite_storage._objects import BatchDeleteResult as BatchDeleteResult
from granite_storage._objects import BytesReader as BytesReader
from granite_storage._objects import InUse as InUse
from granite_storage._objects import ObjectInfo as ObjectInfo
from granite_storage._objects import ObjectReader as ObjectReader
from granite_storage._objects import PresignedUpload as PresignedUpload
from granite_storage._objects import PutResult as PutResult
from granite_storage._objects import UploadedPart as UploadedPart
from granite_storage._objects import none_in_use
from granite_storage._util import as_utc, batched
from granite_storage.errors import InvalidLocationError
from granite_storage.locations import validate_location, validate_prefix
from granite_storage.refs import StoredObjectRef

__all__ = [
    "CHECKED_METHODS",
    "BatchDeleteResult",
    "BytesReader",
    "InUse",
    "ObjectInfo",
    "ObjectReader",
    "PresignedUpload",
    "PutResult",
    "StorageBackend",
    "UploadedPart",
]


CHECKED_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "aput_stream": "_aput",
        "aopen": "_aopen",
        "aget": "_aopen",
        "adelete": "_adelete",
        "aexists": "_aexists",
        "aiter_objects": "_aiter_objects",
        "aiter_locations": "_aiter_objects",
        "adelete_many": "_adelete_batch",
        "acleanup_leftovers": "_acleanup_leftovers",
        "apresigned_download_url": "_apresign_download",
        "apresigned_upload": "_apresign_upload",
        "aclose": "_aclose",
        "acreate_multipart_upload": "_acreate_multipart",
        "apresign_upload_part": "_apresign_part",
        "alist_upload_parts": "_alist_parts",
        "acomplete_multipart_upload": "_acomplete_multipart",
        "aabort_multipart_upload": "_aabort_multipart",
    }
)
"""The checked public methods of :class:`StorageBackend`, each with the
primitive a backend implements instead. A subclass that overrides one of
them is refused when it is defined."""


class StorageBackend(DirectUploadSeam, abc.ABC):
    """The base class of every storage backend: checks once, primitives below.

    The public methods (:data:`CHECKED_METHODS`) validate every location and
    prefix before a primitive sees it, cut deletions into batches and run
    them concurrently, check presign arguments and translate the backend's
    errors at one edge (:meth:`_translate_errors`). They cannot be
    overridden: a subclass implements the primitives, which only ever
    receive validated locations.
    """

    #: The name written into every ref's ``backend`` field.
    backend_name: str = "custom"
    #: The granularity of :attr:`ObjectInfo.last_modified` (S3 has whole
    #: seconds). The garbage collector widens its age cutoff by this much.
    timestamp_resolution: timedelta = timedelta(0)

    @property
    def stores(self) -> tuple[StorageBackend, ...]:
        """The backends whose storage this one writes to and deletes from: itself,
        or, for a composite such as ``MirrorBackend``, the backends it wraps.
        The garbage collector compares them before a collection that deletes the
        source copies of moved objects."""
        return (self,)

    #: Locations per :meth:`_adelete_batch` call (1: one delete at a time).
    delete_batch_size: int = 1
    #: How many :meth:`_adelete_batch` calls :meth:`adelete_many` runs at once.
    delete_concurrency: int = 16

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, primitive in CHECKED_METHODS.items():
            if getattr(cls, name) is not getattr(StorageBackend, name):  # mixins too
                raise TypeError(
                    f"{cls.__qualname__} overrides StorageBackend.{name}(), which checks its "
                    f"arguments for every backend; implement {primitive}() instead"
                )

    # -- primitives: locations and prefixes are already validated -----------

    @abc.abstractmethod
    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        """Store ``chunks`` at ``location``, all or nothing: if ``chunks``
        raises (``ContentTooLargeError``, a client that went away), the write
        fails or the task is cancelled, nothing remains at ``location``, no
        temporary data is left behind, and the exception propagates as it is.

        :raises ~granite_storage.errors.BackendError: if the store fails.
        """

    @abc.abstractmethod
    def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open bytes ``start`` to ``end`` (exclusive; ``None``: to the end)
        of ``location``; a range past the end reads ``b""``.

        :raises ~granite_storage.errors.ObjectNotFoundError: if it does not exist.
        """

    @abc.abstractmethod
    async def _adelete(self, location: str) -> None:
        """Delete ``location``; a missing object is not an error.

        :raises ~granite_storage.errors.BackendError: if the store fails.
        """

    @abc.abstractmethod
    async def _aexists(self, location: str) -> bool:
        """Whether ``location`` exists.

        :raises ~granite_storage.errors.BackendError: if the store fails.
        """

    @abc.abstractmethod
    def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        """Every stored object under ``prefix`` at a ``/`` boundary (all when
        ``None``), streamed, in any order, with a timezone-aware UTC
        ``last_modified``. Never temporary or incomplete uploads.

        :raises ~granite_storage.errors.BackendError: if the store fails.
        """

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        """Delete up to :attr:`delete_batch_size` distinct locations and
        report each; raising counts every location of the batch as failed.
        The default calls :meth:`_adelete` for each in turn."""
        result = BatchDeleteResult()
        for location in locations:
            try:
                with self._translate_errors("delete", location):
                    await self._adelete(location)
            except Exception as exc:  # reported, not raised: the batch goes on
                result.failed[location] = _reason(exc)
            else:
                result.deleted.append(location)
        return result

    async def _acleanup_leftovers(
        self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
    ) -> int:
        """Remove the incomplete uploads bound for a location under ``prefix``
        (all when ``None``) whose last activity (start, last part or chunk
        received) is before ``older_than`` (aware, UTC), except those whose
        location ``in_use`` returns; return how many there were. An upload
        whose target location is unknown is only removed when ``prefix`` is
        ``None``. The default has none."""
        return 0

    async def _aclose(self) -> None:
        """Release connections and clients; runs shielded from cancellation."""

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        """The one edge where the store's own exceptions become
        :class:`~granite_storage.errors.StorageError`: wraps every primitive
        call but :meth:`_aput` (whose source's errors must pass unchanged).
        ``action`` reads "could not {action} {location}"."""
        return nullcontext()

    # -- the checked public methods ------------------------------------------

    async def aput_stream(
        self, *, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> PutResult:
        """Store ``chunks`` at location ``key``, all or nothing (see :meth:`_aput`).

        :raises InvalidLocationError: before any I/O if ``key`` is unsafe.
        """
        return await self._aput(validate_location(key), chunks, content_type)

    def aopen(
        self, ref: StoredObjectRef, *, verify: bool = False, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open the object of ``ref`` for streaming reads.

        :param verify: check size and sha256 against the ref at the end
            (only for whole-object reads).
        :param start: first byte to read.
        :param end: one past the last byte to read; ``None`` reads to the end.
        :raises InvalidLocationError: before any I/O if the location is unsafe.
        :raises ObjectNotFoundError: if the object does not exist.
        """
        location = validate_location(ref.location)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range start={start} end={end}")
        whole = start == 0 and end is None
        return self._aopen_checked(location, start, end, ref if verify and whole else None)

    @asynccontextmanager
    async def _aopen_checked(
        self, location: str, start: int, end: int | None, expected: StoredObjectRef | None
    ) -> AsyncIterator[ObjectReader]:
        with self._translate_errors("read", location):
            async with self._aopen(location, start, end) as reader:
                if expected is not None:
                    reader._expect(expected)
                yield reader

    async def aget(self, ref: StoredObjectRef, *, verify: bool = False) -> bytes:
        """The whole content of ``ref``'s object. See :meth:`aopen`."""
        async with self.aopen(ref, verify=verify) as reader:
            return await reader.read()

    async def adelete(self, ref: StoredObjectRef) -> None:
        """Delete ``ref``'s object; deleting a missing object is not an error."""
        location = validate_location(ref.location)
        with self._translate_errors("delete", location):
            await self._adelete(location)

    async def aexists(self, ref: StoredObjectRef) -> bool:
        """Whether ``ref``'s object exists."""
        location = validate_location(ref.location)
        with self._translate_errors("check", location):
            return await self._aexists(location)

    async def aiter_objects(self, prefix: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every stored object under ``prefix`` at a ``/`` boundary (all
        objects when ``None``), as bare locations; never temporary uploads,
        nor objects whose key is not a valid location (such as ``folder/``
        markers). Order is unspecified.

        :raises InvalidLocationError: if ``prefix`` is unsafe.
        """
        prefix = validate_prefix(prefix)
        objects = self._aiter_objects(prefix)
        try:
            with self._translate_errors("list", prefix):
                async for info in objects:
                    if _is_valid(info.location):
                        yield info
        finally:
            await aclose_quietly(objects)

    async def aiter_locations(self, prefix: str | None = None) -> AsyncIterator[str]:
        """The bare location of every object under ``prefix``; see :meth:`aiter_objects`."""
        async for info in self.aiter_objects(prefix):
            yield info.location

    async def adelete_many(self, locations: Sequence[str]) -> BatchDeleteResult:
        """Delete many locations: :attr:`delete_batch_size` per
        :meth:`_adelete_batch` call, :attr:`delete_concurrency` calls at once.
        Failures (unsafe locations included) are reported per location, not
        raised; missing objects count as deleted."""
        result = BatchDeleteResult()
        valid: dict[str, None] = {}
        for location in locations:
            try:
                valid[validate_location(location)] = None
            except InvalidLocationError as exc:
                result.failed[location] = _reason(exc)
        batches = iter(batched(list(valid), self.delete_batch_size))

        async def worker() -> None:
            # A few workers share one iterator: no task per batch.
            for batch in batches:
                try:
                    with self._translate_errors(f"delete {len(batch)} objects from", None):
                        done = await self._adelete_batch(batch)
                except Exception as exc:  # reported per location, not raised
                    done = BatchDeleteResult(failed=dict.fromkeys(batch, _reason(exc)))
                result.deleted.extend(done.deleted)
                result.failed.update(done.failed)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.delete_concurrency, len(valid))):
                tg.start_soon(worker)
        return result

    async def acleanup_leftovers(
        self,
        *,
        older_than: datetime,
        dry_run: bool = True,
        prefix: str | None = None,
        in_use: InUse | None = None,
    ) -> int:
        """Remove incomplete uploads (temporary files, pending multipart
        uploads) idle since before ``older_than``: started then, and no part
        or chunk received since. Return how many there were.

        :param prefix: only uploads bound for a location under this prefix
            (a policy's ``key_prefix``); ``None``: every upload of the backend.
        :param in_use: returns which of the given target locations are still
            in use (an object ledger's intents); those are kept.
        :raises ValueError: if ``older_than`` is naive.
        :raises InvalidLocationError: if ``prefix`` is unsafe.
        """
        older_than = as_utc(older_than)
        prefix = validate_prefix(prefix)
        with self._translate_errors("clean up incomplete uploads in", None):
            return await self._acleanup_leftovers(
                prefix, older_than, dry_run, in_use or none_in_use
            )

    async def apresigned_download_url(
        self,
        ref: StoredObjectRef,
        *,
        expires_in: int = 3600,
        content_disposition: str | None = None,
    ) -> str:
        """A URL that downloads ``ref``'s object without credentials, valid
        ``expires_in`` seconds; ``content_disposition`` becomes the response's
        ``Content-Disposition`` header.

        :raises InvalidLocationError: if the ref's location is unsafe.
        :raises ValueError: if ``expires_in`` is not between 1 s and 7 days.
        :raises ~granite_storage.errors.OperationNotSupportedError: if the
            backend cannot sign URLs (local disk and memory cannot).
        """
        location = validate_location(ref.location)
        check_expiry(expires_in)
        with self._translate_errors("presign a download of", location):
            return await self._apresign_download(
                location, expires_in=expires_in, content_disposition=content_disposition
            )

    async def apresigned_upload(
        self,
        *,
        key: str,
        max_size: int | None,
        content_type: str | None = None,
        expires_in: int = 3600,
    ) -> PresignedUpload:
        """A presigned request for uploading one object straight to ``key``.

        :raises InvalidLocationError: if ``key`` is unsafe.
        :raises ValueError: if ``expires_in`` is not between 1 s and 7 days.
        :raises ~granite_storage.errors.OperationNotSupportedError: if the
            backend cannot sign uploads.
        """
        location = validate_location(key)
        check_expiry(expires_in)
        with self._translate_errors("presign an upload to", location):
            return await self._apresign_upload(
                location, max_size=max_size, content_type=content_type, expires_in=expires_in
            )

    async def aclose(self) -> None:
        """Release connections and clients. Called by ``StorageManager.aclose``."""
        with anyio.CancelScope(shield=True):
            await self._aclose()


def _is_valid(location: str) -> bool:
    try:
        validate_location(location)
    except InvalidLocationError:
        return False
    return True


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
