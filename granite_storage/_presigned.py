"""The manager's presigned transfers: URLs a client downloads from or uploads
to directly, and the ref of an object uploaded that way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import anyio

from granite_storage._checks import acheck_stored, ainspect_upload, declared_extra
from granite_storage.contracts import PresignedUpload, StorageBackend
from granite_storage.errors import ContentTooLargeError, UploadValidationError
from granite_storage.http import content_disposition, declared_or_guessed_type, safe_disposition
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef, clean_text, utcnow_iso
from granite_storage.streams import Sha256Digest, SizeLimiter


class _Manager(Protocol):
    chunk_size: int

    def get_policy(self, storage_key: str) -> StoragePolicy: ...
    def get_backend_for_policy(self, policy: StoragePolicy) -> StorageBackend: ...
    def _resolve(self, ref: StoredObjectRef) -> tuple[StoragePolicy, StorageBackend]: ...

    @property
    def new_location(self) -> Callable[..., str]: ...  # StorageManager.new_location


class PresignedTransfers:
    """Methods of :class:`~granite_storage.StorageManager`."""

    async def apresigned_url(
        self: _Manager,
        ref: StoredObjectRef,
        *,
        expires_in: int = 3600,
        disposition: str = "attachment",
    ) -> str:
        """A URL that downloads ``ref``'s object directly from the backend,
        with a ``Content-Disposition`` built from ``original_filename``.
        Types a browser would run (HTML, SVG, XHTML, JavaScript) are always
        served as ``attachment``, whatever ``disposition`` asks.

        :raises OperationNotSupportedError: if the backend cannot sign URLs
            (local disk and memory cannot; S3 and S3-compatible stores can).
        """
        _, backend = self._resolve(ref)
        return await backend.apresigned_download_url(
            ref,
            expires_in=expires_in,
            content_disposition=content_disposition(
                ref.original_filename, disposition=safe_disposition(ref.content_type, disposition)
            ),
        )

    async def apresigned_upload(
        self: _Manager,
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
        self: _Manager,
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
        :raises UploadValidationError: (or :class:`ContentTypeNotAllowedError`)
            if the policy's rules refuse the object; it has been deleted.
        :raises InvalidLocationError: if ``location`` is unsafe or outside the
            policy's prefix.
        """
        original_filename = clean_text(original_filename)
        probe = StoredObjectRef(storage_key, "", location, 0, "")
        policy, backend = self._resolve(probe)
        digest = Sha256Digest()
        try:
            async with backend.aopen(probe) as reader:
                chunks, info = await ainspect_upload(
                    policy,
                    SizeLimiter(aiter(reader), policy.max_size),
                    chunk_size=self.chunk_size,
                    location=location,
                    declared_content_type=content_type,
                    filename=original_filename,
                    declared_size=None,
                )
                async for chunk in chunks:
                    await digest.aupdate(chunk)
        except (ContentTooLargeError, UploadValidationError):
            with anyio.CancelScope(shield=True):
                await backend.adelete(probe)
            raise
        merged_extra = {**(extra or {}), **declared_extra(info)} or None
        ref = StoredObjectRef(
            storage_key, backend.backend_name, location, digest.size, digest.checksum,
            info.content_type, original_filename, utcnow_iso(), merged_extra,
        )  # fmt: skip
        await acheck_stored(policy, backend, ref, info)
        return ref
