"""Direct multipart uploads: a browser sends a large file in parts straight
to the bucket, the application only signs and checks.

::

    upload = await manager.acreate_direct_upload(storage_key="videos", model_name="video",
                                                 entity_id=video.id, field_name="file",
                                                 original_filename="talk.mp4", size=size)
    send(upload.to_dict())                                # to the browser
    upload = DirectUpload.from_dict(received)             # back from it
    url = await manager.apresign_upload_part(upload, 1)   # PUT part 1 there
    parts = await manager.alist_upload_parts(upload)      # resume after a reload
    ref = await manager.acomplete_direct_upload(upload)   # size checked, then read back

Everything a client sends back is checked before use: the policy must exist,
the location must be safe and under the policy's prefix
(:class:`~granite_storage.errors.InvalidLocationError`), the upload id and
part numbers well-formed; the store refuses an upload id that does not
belong to the location. Sizes and checksums are measured from the stored
bytes, never taken from the client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio

from granite_storage._direct_seam import MAX_PARTS
from granite_storage._objects import UploadedPart
from granite_storage.contracts import StorageBackend
from granite_storage.errors import ContentTooLargeError, InvalidUploadError
from granite_storage.http import declared_or_guessed_type
from granite_storage.refs import StoredObjectRef, clean_text
from granite_storage.streams import check_size_limit

if TYPE_CHECKING:
    from granite_storage.manager import StorageManager

__all__ = ["MIN_PART_SIZE", "DirectUpload", "DirectUploadHook", "UploadedPart", "part_size_for"]

#: The smallest part S3 accepts (all parts but the last).
MIN_PART_SIZE = 5 * 1024 * 1024
_MiB = 1024 * 1024
_MAX_OBJECT_SIZE = 5 * 1024**4  # S3's largest object: 5 TiB

logger = logging.getLogger("granite_storage.direct")


def part_size_for(size: int | None) -> int:
    """The part size for an upload of ``size`` bytes (``None``: S3's largest
    object): whole MiB, at least 5 MiB, and so that it needs at most 10,000 parts."""
    needed = math.ceil((size if size is not None else _MAX_OBJECT_SIZE) / MAX_PARTS)
    return max(MIN_PART_SIZE, math.ceil(needed / _MiB) * _MiB)


@dataclass(frozen=True, slots=True)
class DirectUpload:
    """A direct multipart upload in progress, as it travels to the client and back.

    ``part_count`` is ``None`` when the size was not declared.
    """

    storage_key: str
    location: str
    upload_id: str
    part_size: int
    part_count: int | None = None
    size: int | None = None
    content_type: str | None = None
    original_filename: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DirectUpload:
        """Read what :meth:`to_dict` wrote (usually sent back by a client).

        :raises InvalidUploadError: if a field is missing or of the wrong type.
        """
        try:
            upload = cls(**{name: data[name] for name in _REQUIRED}, **_optional(data))
        except (KeyError, TypeError) as exc:
            raise InvalidUploadError(f"not a direct upload: {exc}") from None
        for name, kind in _TYPES.items():
            value = getattr(upload, name)
            if not (isinstance(value, kind) and not isinstance(value, bool)) and not (
                value is None and name not in _REQUIRED
            ):
                raise InvalidUploadError(f"direct upload field {name!r} is not a {kind.__name__}")
        return upload


_TYPES: dict[str, type] = {
    "storage_key": str,
    "location": str,
    "upload_id": str,
    "part_size": int,
    "part_count": int,
    "size": int,
    "content_type": str,
    "original_filename": str,
}
_REQUIRED = ("storage_key", "location", "upload_id", "part_size")


def _optional(data: Mapping[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in _TYPES if name not in _REQUIRED and name in data}


class DirectUploadHook(Protocol):
    """What a manager tells about the direct uploads it starts, when a hook
    is added with :meth:`DirectUploads.add_direct_upload_hook`. The SQLAlchemy
    integration's object ledger is one: it reserves each upload's location,
    so that its collector leaves a live direct upload alone and finds an
    abandoned one without listing the bucket."""

    async def areserve_direct_upload(
        self, *, location: str, storage_key: str, backend: str
    ) -> None:
        """Called with the new upload's location before the multipart upload
        starts (``backend`` is the backend's name); raising stops
        ``acreate_direct_upload``, with nothing started."""

    async def arelease_direct_upload(self, *, location: str, storage_key: str) -> None:
        """Called once ``aabort_direct_upload`` has aborted the upload: nothing
        will ever be stored at ``location``. Errors are logged, not raised."""


class DirectUploads:
    """The direct-upload methods of :class:`~granite_storage.StorageManager`."""

    _direct_upload_hooks: tuple[DirectUploadHook, ...] = ()

    def _manager(self) -> StorageManager:
        return cast("StorageManager", self)

    def add_direct_upload_hook(self, hook: DirectUploadHook) -> None:
        """Tell ``hook`` about every direct upload this manager creates (once,
        however often it is added). Integrations call it, e.g.
        ``configure_storage_manager(manager, ledger=...)``."""
        if hook not in self._direct_upload_hooks:
            self._direct_upload_hooks = (*self._direct_upload_hooks, hook)

    def remove_direct_upload_hook(self, hook: DirectUploadHook) -> None:
        """Stop telling ``hook``; one that was not added is ignored."""
        self._direct_upload_hooks = tuple(h for h in self._direct_upload_hooks if h is not hook)

    @property
    def direct_upload_hooks(self) -> tuple[DirectUploadHook, ...]:
        """The hooks told about new direct uploads."""
        return self._direct_upload_hooks

    async def acreate_direct_upload(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        original_filename: str | None = None,
        content_type: str | None = None,
        size: int | None = None,
    ) -> DirectUpload:
        """Start a direct multipart upload to a new location of the policy.

        Each :class:`DirectUploadHook` added to the manager is told the
        location first (the object ledger reserves it).

        :param size: the size the client declares, if known: refused at once
            over ``max_size``, and it sets the part size and count.
        :raises ContentTooLargeError: if ``size`` is over the policy's ``max_size``.
        :raises OperationNotSupportedError: if the backend cannot sign (S3 can).
        """
        manager = self._manager()
        policy = manager.get_policy(storage_key)
        if size is not None:
            if size < 0:
                raise InvalidUploadError(f"size must not be negative, got {size}")
            check_size_limit(size, policy.max_size)
        original_filename = clean_text(original_filename)
        content_type = await declared_or_guessed_type(content_type, original_filename)
        location = manager.new_location(
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            original_filename=original_filename,
        )
        backend = manager.get_backend_for_policy(policy)
        for hook in self._direct_upload_hooks:
            await hook.areserve_direct_upload(
                location=location, storage_key=policy.storage_key, backend=backend.backend_name
            )
        upload_id = await backend.acreate_multipart_upload(key=location, content_type=content_type)
        part_size = part_size_for(size if size is not None else policy.max_size)
        return DirectUpload(
            storage_key, location, upload_id, part_size,
            None if size is None else max(1, math.ceil(size / part_size)),
            size, content_type, original_filename,
        )  # fmt: skip

    async def apresign_upload_part(
        self, upload: DirectUpload, part_number: int, *, expires_in: int = 3600
    ) -> str:
        """A presigned URL the client PUTs part ``part_number`` (1 to 10,000) to.

        :raises InvalidLocationError: if the upload's location is not the policy's.
        :raises InvalidUploadError: for a malformed upload id or part number.
        """
        backend = self._direct_backend(upload)
        return await backend.apresign_upload_part(
            key=upload.location,
            upload_id=upload.upload_id,
            part_number=part_number,
            expires_in=expires_in,
        )

    async def alist_upload_parts(self, upload: DirectUpload) -> list[UploadedPart]:
        """The parts the store received so far (to resume after a reload).

        :raises InvalidUploadError: if there is no such upload (completed,
            aborted, or an upload id of another location).
        """
        backend = self._direct_backend(upload)
        return await backend.alist_upload_parts(key=upload.location, upload_id=upload.upload_id)

    async def acomplete_direct_upload(
        self, upload: DirectUpload, parts: Sequence[int] | None = None
    ) -> StoredObjectRef:
        """Complete the upload and return the ref of the new object.

        The parts are listed first: over the policy's ``max_size`` in total,
        the upload is aborted and nothing is stored. Then the object is
        assembled and read back once (streaming) to measure its size and sha256.

        :param parts: the part numbers to assemble (each must have been
            received; their ETags come from the store); ``None``: all received.
        :raises ContentTooLargeError: if the parts are over ``max_size``;
            the upload was aborted.
        :raises InvalidUploadError: for a part that was not received, or no part.
        """
        backend = self._direct_backend(upload)
        policy = self._manager().get_policy(upload.storage_key)
        listed = await backend.alist_upload_parts(key=upload.location, upload_id=upload.upload_id)
        by_number = {part.part_number: part for part in listed}
        if parts is not None:
            missing = sorted(set(parts) - set(by_number))
            if missing:
                raise InvalidUploadError(f"parts {missing} of the upload were not received")
            listed = [by_number[number] for number in sorted(set(parts))]
        if not listed:
            raise InvalidUploadError("the upload has no part yet; send at least one")
        total = sum(part.size for part in listed)
        try:
            check_size_limit(total, policy.max_size)
        except ContentTooLargeError:
            with anyio.CancelScope(shield=True):
                await self.aabort_direct_upload(upload)
            raise
        await backend.acomplete_multipart_upload(
            key=upload.location, upload_id=upload.upload_id, parts=listed
        )
        return await self._manager().aref_for_upload(
            storage_key=upload.storage_key,
            location=upload.location,
            original_filename=upload.original_filename,
            content_type=upload.content_type,
        )

    async def aabort_direct_upload(self, upload: DirectUpload) -> None:
        """Abort the upload and drop its parts; aborting twice is not an error.
        The hooks then release the upload's location (the ledger's reservation)."""
        backend = self._direct_backend(upload)
        await backend.aabort_multipart_upload(key=upload.location, upload_id=upload.upload_id)
        for hook in self._direct_upload_hooks:
            try:
                await hook.arelease_direct_upload(
                    location=upload.location, storage_key=upload.storage_key
                )
            except Exception:  # the upload is aborted; a later collection releases it
                logger.exception("could not release the direct upload %r", upload.location)

    def _direct_backend(self, upload: DirectUpload) -> StorageBackend:
        """The backend of ``upload``'s policy, once its location is checked."""
        if not isinstance(upload, DirectUpload):
            raise TypeError(f"expected a DirectUpload, got {type(upload).__name__}")
        manager = self._manager()
        policy = manager.get_policy(upload.storage_key)
        manager._check_location(policy, upload.location)
        return manager.get_backend_for_policy(policy)
