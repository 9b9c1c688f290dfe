"""FastAPI and Starlette integration: streaming uploads, downloads, error responses.

* :func:`stream_upload` stores the file of a request while its body is still
  arriving (multipart form or raw body), with the policy's size limit
  enforced as the bytes come in; :func:`stream_upload_to` does the same into
  a model's ``aset_content_from_stream``, so the upload follows the session.
* :func:`storage_response` serves a stored object with ranges, ETags,
  ``HEAD`` and optional presigned redirects.
* :func:`install_exception_handlers` answers granite_storage errors with
  their HTTP status and a ``{"detail": ...}`` JSON body.

Needs the ``fastapi`` extra (``pip install granite-storage[fastapi]``):
Starlette and python-multipart. Only Starlette is used, so the helpers work
in plain Starlette applications too. For uploads through FastAPI's
``UploadFile``, use ``StoredContentMixin.aset_content_from_uploadfile``.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from granite_storage.errors import ContentTooLargeError, StorageError, UploadValidationError
from granite_storage.errors import InvalidUploadError as InvalidUploadError
from granite_storage.integrations._fastapi_direct import DirectUploadScope as DirectUploadScope
from granite_storage.integrations._fastapi_direct import (
    direct_upload_router as direct_upload_router,
)
from granite_storage.integrations._fastapi_download import storage_response as storage_response
from granite_storage.integrations._fastapi_pipe import UploadStore as UploadStore
from granite_storage.integrations._fastapi_upload import StreamedUpload as StreamedUpload
from granite_storage.integrations._fastapi_upload import stream_upload as stream_upload
from granite_storage.integrations._fastapi_upload import stream_upload_to as stream_upload_to

__all__ = [
    "DirectUploadScope",
    "InvalidUploadError",
    "StreamedUpload",
    "UploadStore",
    "direct_upload_router",
    "install_exception_handlers",
    "storage_error_response",
    "storage_response",
    "stream_upload",
    "stream_upload_to",
]

logger = logging.getLogger(__name__)

_SERVER_ERROR_DETAIL = "the storage backend failed; see the server log for details"


def storage_error_response(exc: StorageError) -> JSONResponse:
    """The JSON response for ``exc``: its ``status_code`` and ``{"detail": message}``.

    Client errors (4xx: :class:`~granite_storage.ContentTooLargeError` 413,
    :class:`~granite_storage.ObjectNotFoundError` 404,
    :class:`~granite_storage.InvalidLocationError` 400,
    :class:`InvalidUploadError` 400,
    :class:`~granite_storage.ContentTypeNotAllowedError` 415,
    :class:`~granite_storage.UploadValidationError` 422) carry the exception's message, which
    says what to change; a 413, 415 or 422 also carries ``Connection:
    close``, so the server stops reading the rest of a refused body. Server errors (5xx:
    backend failures, configuration errors) carry a generic message instead,
    so paths and backend details do not leak to clients; the exception is
    logged to the ``granite_storage.integrations.fastapi`` logger.
    """
    status = exc.status_code
    if status >= 500:
        logger.error("storage error answered with HTTP %d", status, exc_info=exc)
        detail = _SERVER_ERROR_DETAIL
    else:
        detail = str(exc)
    # After a 413 (or a 415/422 refusal of an upload's head) the rest of the
    # body is unwanted: closing the connection stops the server from reading
    # (and discarding) it, which uvicorn would otherwise do to keep the
    # connection alive (RFC 9110 15.5.14).
    refused = isinstance(exc, ContentTooLargeError | UploadValidationError)
    headers = {"Connection": "close"} if refused else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _handle_storage_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StorageError):  # pragma: no cover - registered for StorageError
        raise exc
    return storage_error_response(exc)


def install_exception_handlers(app: Starlette) -> None:
    """Answer every :class:`~granite_storage.StorageError` raised in ``app``'s
    endpoints with its HTTP status and a ``{"detail": ...}`` JSON body.

    ``ContentTooLargeError`` becomes 413, ``ObjectNotFoundError`` 404,
    ``InvalidLocationError`` and :class:`InvalidUploadError` 400,
    ``ContentTypeNotAllowedError`` 415, ``UploadValidationError`` 422, and any
    other ``StorageError`` its ``status_code`` (500 unless the class sets
    another). See :func:`storage_error_response` for what the body says.
    Handlers registered later for a subclass take precedence for it.

    :param app: a FastAPI or Starlette application.
    """
    app.add_exception_handler(StorageError, _handle_storage_error)
