"""The S3 backend's edge: botocore and aiohttp errors become granite_storage
errors here, in one place (:func:`s3_errors`, which the backend's
``_translate_errors`` returns), with the original exception kept as
``__cause__``; and the reader that streams a GetObject body.

Imported only by :mod:`granite_storage.backends.s3`, after it checked that
aioboto3 is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from granite_storage.contracts import ObjectReader
from granite_storage.errors import BackendError, ConfigurationError, ObjectNotFoundError

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_ACCESS_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in _NOT_FOUND_CODES


@contextmanager
def s3_errors(action: str, bucket: str, location: str | None = None) -> Iterator[None]:
    """The one edge where botocore and aiohttp errors become granite_storage errors."""
    what = f"{location!r} in bucket {bucket!r}" if location is not None else f"bucket {bucket!r}"
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        if code in _NOT_FOUND_CODES and location is not None:
            raise ObjectNotFoundError(f"no object at {location!r}", location=location) from exc
        if code == "NoSuchBucket":
            raise ConfigurationError(
                f"S3 bucket {bucket!r} does not exist; create it, or check bucket= and the "
                "endpoint_url/region_name in client_kwargs"
            ) from exc
        hint = ""
        if code in _ACCESS_CODES:
            hint = "; check the credentials and the bucket policy"
        raise BackendError(f"S3 could not {action} {what}: {code}: {message}{hint}") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ConfigurationError(
            f"no usable AWS credentials to {action} {what}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or pass a configured aioboto3.Session as session="
        ) from exc
    except (BotoCoreError, aiohttp.ClientError) as exc:
        raise BackendError(f"S3 could not {action} {what}: {exc}") from exc


class S3Reader(ObjectReader):
    """Streams a GetObject body; releases the connection when closed. Its
    errors are translated by the backend's edge, around the whole read."""

    def __init__(self, body: Any, *, size: int | None) -> None:
        super().__init__(size=size)
        self._body = body

    async def _read_chunk(self, max_bytes: int) -> bytes:
        chunk: bytes = await self._body.read(max_bytes)
        return chunk

    async def aclose(self) -> None:
        # aiohttp's release() returns a fully read connection to the pool and
        # closes one that still has unread bytes.
        release = getattr(self._body, "release", None) or self._body.close
        result = release()
        if hasattr(result, "__await__"):
            await result
