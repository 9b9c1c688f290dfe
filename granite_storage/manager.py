"""StorageManager: routes each operation to the backend of its policy."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Self

import anyio

from granite_storage._concurrency import aclose_quietly
from granite_storage.contracts import BytesReader, ObjectReader, PresignedUpload, StorageBackend
from granite_storage.direct import DirectUploads
from granite_storage.errors import ConfigurationError, ContentTooLargeError, InvalidLocationError
from granite_storage.http import content_disposition, declared_or_guessed_type
from granite_storage.locations import build_location, is_under_prefix, validate_location
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef, clean_text, utcnow_iso
from granite_storage.streams import (
    DEFAULT_CHUNK_SIZE,
    ByteSource,
    Sha256Digest,
    SizeLimiter,
    check_size_limit,
    chunks_of,
    coalesce,
)

__all__ = ["StorageManager"]


class StorageManager(DirectUploads):
    """The entry point: policies pick backends, backends store bytes.

    ``async with StorageManager(...) as manager:`` (or ``await manager.aclose()``)
    closes the clients and connections that backends opened.

    :param backends: backend instances by backend key.
    :param policies: policies by storage key (each policy's ``storage_key``
        must equal its key here).
    :param chunk_size: the size of the chunks read from upload sources.
    :raises ConfigurationError: if a policy names an unknown backend.
    """

    def __init__(
        self,
        backends: Mapping[str, StorageBackend],
        policies: Mapping[str, StoragePolicy],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.backends = dict(backends)
        self.policies = dict(policies)
        self.chunk_size = chunk_size
        for key, policy in self.policies.items():
            if key != policy.storage_key:
                raise ConfigurationError(
                    f"policy registered as {key!r} has storage_key={policy.storage_key!r}; "
                    "they must be equal"
                )
            if policy.backend_key not in self.backends:
                raise ConfigurationError(
                    f"policy {key!r} uses backend {policy.backend_key!r}, which is not one of "
                    f"the manager's backends {sorted(self.backends)}"
                )

    def __repr__(self) -> str:
        return f"StorageManager(backends={sorted(self.backends)}, policies={sorted(self.policies)})"

    # -- configuration ------------------------------------------------------

    def get_policy(self, storage_key: str) -> StoragePolicy:
        """The policy for ``storage_key``.

        :raises StorageError: (a :class:`ConfigurationError`) for an unknown key.
        """
        try:
            return self.policies[storage_key]
        except KeyError:
            raise ConfigurationError(
                f"unknown storage key {storage_key!r}; configured keys: {sorted(self.policies)}"
            ) from None

    def get_backend_for_policy(self, policy: StoragePolicy) -> StorageBackend:
        """The backend that ``policy`` writes to."""
        try:
            return self.backends[policy.backend_key]
        except KeyError:
            raise ConfigurationError(
                f"unknown backend {policy.backend_key!r} for policy {policy.storage_key!r}"
            ) from None

    def _resolve(self, ref: StoredObjectRef) -> tuple[StoragePolicy, StorageBackend]:
        """The policy and backend of ``ref``, after checking its location is
        safe and lies under the policy's prefix (before any I/O)."""
        policy = self.get_policy(ref.storage_key)
        self._check_location(policy, ref.location)
        return policy, self.get_backend_for_policy(policy)

    def new_location(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        original_filename: str | None = None,
    ) -> str:
        """A new, unique location for one write under ``storage_key``'s policy
        (see :func:`~granite_storage.locations.build_location`). No I/O.

        :raises StorageError: for an unknown storage key.
        :raises InvalidLocationError: if a name has no safe characters.
        """
        return build_location(
            key_prefix=self.get_policy(storage_key).key_prefix,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            original_filename=original_filename,
        )

    @staticmethod
    def _check_location(policy: StoragePolicy, location: str) -> None:
        validate_location(location)
        if not is_under_prefix(location, policy.key_prefix):
            raise InvalidLocationError(
                f"location {location!r} is outside the prefix {policy.key_prefix!r} "
                f"of policy {policy.storage_key!r}"
            )

    # -- writes -------------------------------------------------------------

    async def aput_bytes(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        content: bytes,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredObjectRef:
        """Store ``content``; see :meth:`aput_stream`. An oversized ``content``
        is refused before any I/O."""
        policy = self.get_policy(storage_key)
        if policy.max_size is not None and len(content) > policy.max_size:
            raise ContentTooLargeError(
                f"content of {len(content)} bytes is larger than the limit of "
                f"{policy.max_size} bytes of policy {policy.storage_key!r}",
                max_size=policy.max_size,
            )
        return await self.aput_stream(
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            stream=content,
            content_type=content_type,
            original_filename=original_filename,
            extra=extra,
        )

    async def aput_stream(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        stream: ByteSource,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
        location: str | None = None,
    ) -> StoredObjectRef:
        """Stream ``stream`` into a new object and return its ref.

        ``storage_key`` names the policy (its backend, ``max_size`` and
        ``key_prefix``); ``model_name``, ``entity_id`` and ``field_name``
        become the location's sanitised segments (for example the table, the
        row's primary key and the column).

        ``stream`` may be bytes, an object with ``async read(n)`` (an
        ``UploadFile``, an aiofiles file), a sync binary file (read in a
        worker thread), or a (async) iterable of bytes. Every call writes a
        new, unique location.

        :param location: a location made beforehand with :meth:`new_location`
            for the same policy (for callers that must record the location
            before the upload starts, such as the SQLAlchemy object ledger);
            ``None`` builds a new one.
        :raises ContentTooLargeError: as soon as more than the policy's
            ``max_size`` bytes arrived; nothing of the upload remains.
        :raises InvalidLocationError: if a name has no safe characters, or a
            given ``location`` is unsafe or outside the policy's prefix.
        :raises StorageError: for an unknown storage key or a backend failure.
        """
        policy = self.get_policy(storage_key)
        backend = self.get_backend_for_policy(policy)
        original_filename = clean_text(original_filename)
        content_type = await declared_or_guessed_type(content_type, original_filename)
        if location is None:
            location = self.new_location(
                storage_key=storage_key,
                model_name=model_name,
                entity_id=entity_id,
                field_name=field_name,
                original_filename=original_filename,
            )
        else:
            self._check_location(policy, location)
        # source -> bounded chunks -> size limit (counts every byte as it
        # arrives) -> small chunks merged, so tiny pieces cost no extra I/O.
        chunks = coalesce(
            SizeLimiter(chunks_of(stream, self.chunk_size), policy.max_size), self.chunk_size
        )
        try:
            result = await backend.aput_stream(
                key=location, chunks=chunks, content_type=content_type
            )
        finally:
            with anyio.CancelScope(shield=True):
                await aclose_quietly(chunks)
        merged_extra = {**(result.extra or {}), **(extra or {})} or None
        return StoredObjectRef(
            policy.storage_key, backend.backend_name, location, result.size, result.checksum,
            content_type, original_filename, utcnow_iso(), merged_extra,
        )  # fmt: skip

    # -- reads and deletes ----------------------------------------------------

    def aopen(
        self,
        ref: StoredObjectRef,
        *,
        verify: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open ``ref``'s object: ``async with manager.aopen(ref) as reader``.

        :param verify: compare size and sha256 with the ref at the end.
        :param start: first byte; ``end``: one past the last byte (``None``: to the end).
        :raises ObjectNotFoundError: if the object does not exist.
        :raises InvalidLocationError: if the ref's location is unsafe or outside
            its policy's prefix (before any I/O).
        :raises ChecksumMismatchError: with ``verify=True``, at the end of a
            whole read whose bytes differ from the ref.
        """
        inline = ref.legacy_inline_text
        if inline is not None:
            return nullcontext(BytesReader(inline.encode()[start:end]))
        _, backend = self._resolve(ref)
        return backend.aopen(ref, verify=verify, start=start, end=end)

    async def aget(self, ref: StoredObjectRef, *, verify: bool = False) -> bytes:
        """The whole content of ``ref``'s object. See :meth:`aopen`."""
        async with self.aopen(ref, verify=verify) as reader:
            return await reader.read()

    async def adelete(self, ref: StoredObjectRef) -> None:
        """Delete ``ref``'s object. Deleting a missing object is not an error."""
        if ref.legacy_inline_text is not None:
            return
        _, backend = self._resolve(ref)
        await backend.adelete(ref)

    async def aexists(self, ref: StoredObjectRef) -> bool:
        """Whether ``ref``'s object exists."""
        if ref.legacy_inline_text is not None:
            return True
        _, backend = self._resolve(ref)
        return await backend.aexists(ref)

    # -- presigned URLs -------------------------------------------------------

    async def apresigned_url(
        self,
        ref: StoredObjectRef,
        *,
        expires_in: int = 3600,
        disposition: str = "attachment",
    ) -> str:
        """A URL that downloads ``ref``'s object directly from the backend,
        with a ``Content-Disposition`` built from ``original_filename``.

        :raises OperationNotSupportedError: if the backend cannot sign URLs
            (local disk and memory cannot; S3 and S3-compatible stores can).
        """
        _, backend = self._resolve(ref)
        return await backend.apresigned_download_url(
            ref,
            expires_in=expires_in,
            content_disposition=content_disposition(ref.original_filename, disposition=disposition),
        )

    async def apresigned_upload(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        original_filename: str | None = None,
        content_type: str | None = None,
        expires_in: int = 3600,
    ) -> PresignedUpload:
        """A presigned request for a browser to upload straight to the backend.

        The location is generated as for :meth:`aput_stream`, and the policy's
        ``max_size`` becomes the allowed content-length range. After the
        upload, build the ref with :meth:`aref_for_upload` and the location
        returned here.

        :raises OperationNotSupportedError: if the backend cannot sign uploads.
        """
        policy = self.get_policy(storage_key)
        location = self.new_location(
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            original_filename=original_filename,
        )
        return await self.get_backend_for_policy(policy).apresigned_upload(
            key=location,
            max_size=policy.max_size,
            content_type=await declared_or_guessed_type(content_type, original_filename),
            expires_in=expires_in,
        )

    async def aref_for_upload(
        self,
        *,
        storage_key: str,
        location: str,
        original_filename: str | None = None,
        content_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredObjectRef:
        """The ref of an object a client uploaded directly (see
        :meth:`apresigned_upload`), built by reading the object once.

        The size and sha256 are measured from the stored bytes, never taken
        from the client. An object over the policy's ``max_size`` (a store
        that does not enforce the presigned content-length range) is deleted.

        :raises ObjectNotFoundError: if nothing was uploaded at ``location``.
        :raises ContentTooLargeError: if the object is over ``max_size``; it
            has been deleted.
        :raises InvalidLocationError: if ``location`` is unsafe or outside the
            policy's prefix.
        """
        original_filename = clean_text(original_filename)
        probe = StoredObjectRef(storage_key, "", location, 0, "")
        policy, backend = self._resolve(probe)
        digest = Sha256Digest()
        try:
            async with backend.aopen(probe) as reader:
                async for chunk in reader:
                    await digest.aupdate(chunk)
                    check_size_limit(digest.size, policy.max_size)
        except ContentTooLargeError:
            with anyio.CancelScope(shield=True):
                await backend.adelete(probe)
            raise
        content_type = await declared_or_guessed_type(content_type, original_filename)
        return StoredObjectRef(
            storage_key, backend.backend_name, location, digest.size, digest.checksum,
            content_type, original_filename, utcnow_iso(), extra,
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Close every backend (clients, connection pools). Safe to call twice."""
        with anyio.CancelScope(shield=True):
            for backend in self.backends.values():
                await backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
