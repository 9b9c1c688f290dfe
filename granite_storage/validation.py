"""Upload validation: what a validator receives, and the ready validators.

A policy lists validators (``StoragePolicy(..., validators=(...))``). Each
is called with the head of the upload (its first bytes, at most
:data:`HEAD_SIZE`) and an :class:`UploadInfo`, before the backend receives
a byte; it refuses the upload by raising
:class:`~granite_storage.UploadValidationError`. A sync validator runs in a
worker thread, an ``async def`` one on the event loop.

A validator may also have an ``after_upload(info)`` method (sync or async),
called once the last byte is stored and before the ref is returned, with
``info.size`` and ``info.checksum`` set; if it raises, the stored object is
deleted first. :func:`after_upload` makes such a validator from a function.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from granite_storage.errors import ConfigurationError, UploadValidationError

__all__ = [
    "HEAD_SIZE",
    "AfterUploadValidator",
    "UploadInfo",
    "Validator",
    "after_upload",
    "image_dimensions",
    "max_image_pixels",
    "reject_executables",
]

HEAD_SIZE = 64 * 1024
"""The most bytes buffered before the backend is called, and handed to
validators: what content-type detection and image headers need (a JPEG's
size may follow tens of KiB of EXIF). Never more than one of the manager's
chunks."""


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """What is known about an upload when its validators run.

    :param storage_key: the policy's storage key.
    :param location: where the object is (being) stored.
    :param content_type: the type detected from the bytes (or, with
        ``detect_content_type=False``, the declared or guessed one): the
        ref's ``content_type``.
    :param declared_content_type: the type the client declared, if any.
    :param filename: the original file name, if any.
    :param declared_size: the size known before reading (bytes sources), if any.
    :param size: the stored size; set for ``after_upload`` only.
    :param checksum: ``"sha256:<hex>"`` of the stored bytes; ``after_upload`` only.
    """

    storage_key: str
    location: str
    content_type: str
    declared_content_type: str | None = None
    filename: str | None = None
    declared_size: int | None = None
    size: int | None = None
    checksum: str | None = None


@runtime_checkable
class Validator(Protocol):
    """``validator(head, info)``: raise :class:`~granite_storage.UploadValidationError`
    to refuse the upload. Sync (runs in a worker thread) or ``async``."""

    def __call__(self, head: bytes, info: UploadInfo, /) -> Awaitable[None] | None: ...


@runtime_checkable
class AfterUploadValidator(Validator, Protocol):
    """A validator with a second hook, run after the last byte is stored."""

    def after_upload(self, info: UploadInfo, /) -> Awaitable[None] | None: ...


class _AfterUpload:
    def __init__(self, hook: Callable[[UploadInfo], Awaitable[None] | None]) -> None:
        self.after_upload = hook

    async def __call__(self, head: bytes, info: UploadInfo, /) -> None:
        return None  # async: nothing to check, so no worker thread either

    def __repr__(self) -> str:
        return f"after_upload({self.after_upload!r})"


def after_upload(hook: Callable[[UploadInfo], Awaitable[None] | None]) -> AfterUploadValidator:
    """A validator that checks only the stored object: ``hook(info)`` runs
    after the last byte, with ``info.size`` and ``info.checksum``. If it
    raises, the object is deleted before the error propagates::

        def not_known_malware(info: UploadInfo) -> None:
            if info.checksum in BLOCKLIST:
                raise UploadValidationError("this file is on the blocklist")

        StoragePolicy("files", "s3", validators=(after_upload(not_known_malware),))
    """
    return _AfterUpload(hook)


# -- ready validators --------------------------------------------------------

_EXECUTABLE_MAGIC = (
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows (PE/DOS) executable"),
    (b"\xfe\xed\xfa\xce", "a Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary (or Java class)"),
    (b"#!", "a script with a shebang line"),
)


class _RejectExecutables:
    async def __call__(self, head: bytes, info: UploadInfo, /) -> None:  # a few prefix checks
        for magic, what in _EXECUTABLE_MAGIC:
            if head.startswith(magic):
                raise UploadValidationError(
                    f"the upload is {what} (starts with {magic!r}); executables are not accepted"
                )

    def __repr__(self) -> str:
        return "reject_executables()"


def reject_executables() -> Validator:
    """Refuse ELF, PE (``MZ``), Mach-O (and fat/universal) binaries and
    scripts starting with a shebang (``#!``), whatever their declared type
    or file name."""
    return _RejectExecutables()


def _image_size(head: bytes, info: UploadInfo) -> tuple[int, int] | None:
    """The (width, height) in the image header, ``None`` for non-images.

    :raises UploadValidationError: for an image whose header Pillow cannot read.
    """
    if not info.content_type.startswith("image/") or info.content_type == "image/svg+xml":
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(head)) as image:  # parses the header only
                return image.size
    except Image.DecompressionBombError as exc:
        raise UploadValidationError(f"the image is a likely decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadValidationError(
            f"cannot read the size of this {info.content_type} image from its first "
            f"{len(head)} bytes: send a complete, supported image"
        ) from exc


def _require_pillow(name: str) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"{name}() needs Pillow: pip install 'granite-storage[images]'"
        ) from None


class _MaxImagePixels:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, head: bytes, info: UploadInfo, /) -> None:
        size = _image_size(head, info)
        if size is not None and size[0] * size[1] > self.limit:
            raise UploadValidationError(
                f"the image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than "
                f"the limit of {self.limit} pixels"
            )

    def __repr__(self) -> str:
        return f"max_image_pixels({self.limit})"


def max_image_pixels(limit: int) -> Validator:
    """Refuse images of more than ``limit`` pixels (width x height), read
    from the image header in the upload's head: a guard against
    decompression bombs, which never decodes the image. Non-image uploads
    pass; an image whose header cannot be read is refused. Needs Pillow
    (``pip install 'granite-storage[images]'``).

    :raises ConfigurationError: if Pillow is not installed.
    """
    if limit <= 0:
        raise ValueError(f"max_image_pixels needs a positive limit, got {limit}")
    _require_pillow("max_image_pixels")
    return _MaxImagePixels(limit)


class _ImageDimensions:
    def __init__(self, low: tuple[int, int] | None, high: tuple[int, int] | None) -> None:
        self.low = low
        self.high = high

    def __call__(self, head: bytes, info: UploadInfo, /) -> None:
        size = _image_size(head, info)
        if size is None:
            return
        width, height = size
        if self.low is not None and (width < self.low[0] or height < self.low[1]):
            raise UploadValidationError(
                f"the image is {width}x{height}; it must be at least {self.low[0]}x{self.low[1]}"
            )
        if self.high is not None and (width > self.high[0] or height > self.high[1]):
            raise UploadValidationError(
                f"the image is {width}x{height}; it must be at most {self.high[0]}x{self.high[1]}"
            )

    def __repr__(self) -> str:
        return f"image_dimensions(min={self.low}, max={self.high})"


def image_dimensions(
    *, min: tuple[int, int] | None = None, max: tuple[int, int] | None = None
) -> Validator:
    """Refuse images smaller than ``min`` or larger than ``max``, each a
    ``(width, height)``, read from the image header. Non-image uploads
    pass; an image whose header cannot be read is refused. Needs Pillow.

    :raises ConfigurationError: if Pillow is not installed.
    """
    if min is None and max is None:
        raise ValueError("image_dimensions needs min=(width, height), max=(width, height) or both")
    _require_pillow("image_dimensions")
    return _ImageDimensions(min, max)
