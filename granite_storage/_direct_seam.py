"""The optional presign seam of :class:`~granite_storage.contracts.StorageBackend`:
presigned downloads and uploads, and direct multipart uploads a client sends
in parts to presigned URLs.

The public methods check every value (location, upload id, part numbers)
before a primitive sees it; the primitives raise
:class:`~granite_storage.errors.OperationNotSupportedError` unless a backend
(S3) implements them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager

from granite_storage._objects import PresignedUpload, UploadedPart
from granite_storage.errors import InvalidUploadError, OperationNotSupportedError
from granite_storage.locations import validate_location

#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = 10_000
_MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit, the longest anyone signs
# Upload ids are opaque tokens; S3's are URL-safe base64 and a few punctuation marks.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9._~+/=-]{1,1024}")


def check_expiry(expires_in: int) -> None:
    if not 1 <= expires_in <= _MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"expires_in must be between 1 and {_MAX_PRESIGN_SECONDS} seconds (7 days), "
            f"got {expires_in}"
        )


def check_upload_id(upload_id: object) -> str:
    """``upload_id`` if it looks like an upload id, else :class:`InvalidUploadError`."""
    if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
        raise InvalidUploadError(f"{upload_id!r} is not a valid multipart upload id")
    return upload_id


def check_part_number(part_number: object) -> int:
    """``part_number`` if it is an int from 1 to 10,000, else :class:`InvalidUploadError`."""
    if type(part_number) is not int or not 1 <= part_number <= MAX_PARTS:
        raise InvalidUploadError(
            f"part number must be an integer from 1 to {MAX_PARTS}, got {part_number!r}"
        )
    return part_number


class DirectUploadSeam:
    """Multipart uploads sent by clients: primitives, and their checked methods."""

    backend_name: str

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        raise NotImplementedError  # StorageBackend's

    def _unsupported(self) -> OperationNotSupportedError:
        return OperationNotSupportedError(
            f"backend {self.backend_name!r} cannot take direct multipart uploads; upload "
            "through your application with aput_stream() instead"
        )

    # -- primitives: every value is already checked ------------------------------

    async def _apresign_download(
        self, location: str, *, expires_in: int, content_disposition: str | None
    ) -> str:
        """A URL that downloads ``location`` for ``expires_in`` seconds.

        :raises ~granite_storage.errors.OperationNotSupportedError: by default.
        """
        raise OperationNotSupportedError(
            f"backend {self.backend_name!r} cannot presign URLs; stream the object "
            "through your application with aopen() instead"
        )

    async def _apresign_upload(
        self, location: str, *, max_size: int | None, content_type: str | None, expires_in: int
    ) -> PresignedUpload:
        """A presigned request that uploads one object to ``location``.

        :raises ~granite_storage.errors.OperationNotSupportedError: by default.
        """
        raise OperationNotSupportedError(
            f"backend {self.backend_name!r} cannot presign uploads; upload through "
            "your application with aput_stream() instead"
        )

    async def _acreate_multipart(self, location: str, content_type: str | None) -> str:
        """Start a multipart upload to ``location``; return its upload id."""
        raise self._unsupported()

    async def _apresign_part(
        self, location: str, upload_id: str, part_number: int, expires_in: int
    ) -> str:
        """A URL that PUTs part ``part_number`` of the upload."""
        raise self._unsupported()

    async def _alist_parts(self, location: str, upload_id: str) -> list[UploadedPart]:
        """The parts received so far, by part number.

        :raises InvalidUploadError: if there is no such upload at ``location``.
        """
        raise self._unsupported()

    async def _acomplete_multipart(
        self, location: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        """Assemble ``parts`` into the object at ``location``."""
        raise self._unsupported()

    async def _aabort_multipart(self, location: str, upload_id: str) -> None:
        """Abort the upload; one that is gone already is not an error."""
        raise self._unsupported()

    # -- the checked public methods ----------------------------------------------

    async def acreate_multipart_upload(self, *, key: str, content_type: str | None = None) -> str:
        """Start a multipart upload that a client sends to presigned part URLs.

        :raises OperationNotSupportedError: if the backend cannot sign.
        """
        location = validate_location(key)
        with self._translate_errors("start a multipart upload to", location):
            return await self._acreate_multipart(location, content_type)

    async def apresign_upload_part(
        self, *, key: str, upload_id: str, part_number: int, expires_in: int = 3600
    ) -> str:
        """A presigned URL that PUTs one part (1 to 10,000) of the upload."""
        location = validate_location(key)
        upload_id, part_number = check_upload_id(upload_id), check_part_number(part_number)
        check_expiry(expires_in)
        with self._translate_errors("presign a part upload to", location):
            return await self._apresign_part(location, upload_id, part_number, expires_in)

    async def alist_upload_parts(self, *, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts received so far, by part number."""
        location, upload_id = validate_location(key), check_upload_id(upload_id)
        with self._translate_errors("list the parts of an upload to", location):
            return await self._alist_parts(location, upload_id)

    async def acomplete_multipart_upload(
        self, *, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        """Assemble ``parts`` (as :meth:`alist_upload_parts` returned them)."""
        location, upload_id = validate_location(key), check_upload_id(upload_id)
        for part in parts:
            check_part_number(part.part_number)
        with self._translate_errors("complete the upload to", location):
            await self._acomplete_multipart(location, upload_id, parts)

    async def aabort_multipart_upload(self, *, key: str, upload_id: str) -> None:
        """Abort the upload and drop its parts; idempotent."""
        location, upload_id = validate_location(key), check_upload_id(upload_id)
        with self._translate_errors("abort the upload to", location):
            await self._aabort_multipart(location, upload_id)
