"""Serving stored objects over HTTP: ranges, ETags, HEAD, presigned redirects."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Literal

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from granite_storage.contracts import ObjectReader
from granite_storage.errors import ObjectNotFoundError, OperationNotSupportedError
from granite_storage.http import (
    aguess_content_type,
    content_disposition,
    etag_for,
    safe_disposition,
)
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef

_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", re.IGNORECASE | re.ASCII)
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class _Unsatisfiable:
    """The parsed ``Range`` starts past the end of the object."""


_UNSATISFIABLE = _Unsatisfiable()


async def storage_response(
    manager: StorageManager,
    ref: StoredObjectRef,
    request: Request,
    *,
    disposition: Literal["attachment", "inline"] = "attachment",
    redirect: bool = False,
    expires_in: int = 300,
) -> Response:
    """An HTTP response that serves ``ref``'s object, streamed from its backend.

    The response carries ``Content-Type`` (the ref's, else guessed from the
    file name), ``Content-Length``, ``Content-Disposition`` built from the
    ref's ``original_filename`` (RFC 6266, with ``filename*`` for non-ASCII
    names), a strong ``ETag`` derived from the sha256 checksum,
    ``Accept-Ranges: bytes`` and ``X-Content-Type-Options: nosniff``. It
    answers:

    * ``304 Not Modified`` when ``If-None-Match`` matches the ETag (or is ``*``);
    * ``206 Partial Content`` with ``Content-Range`` for a single
      ``Range: bytes=...`` request (``a-b``, ``a-``, ``-n``), honouring
      ``If-Range``; a range list or a malformed ``Range`` is ignored and the
      whole object is sent, as RFC 9110 allows;
    * ``416 Range Not Satisfiable`` with ``Content-Range: bytes */size``
      when the range starts past the end;
    * the headers alone for ``HEAD`` (after checking the object exists);
    * ``307 Temporary Redirect`` to a presigned URL when ``redirect`` is true
      and the backend can sign URLs (S3); backends that cannot (local disk,
      memory) are streamed as usual.

    The object is opened before this returns, so a missing object raises
    here, where the endpoint can still handle it. The reader is closed when
    the response has been sent, fails, or the client disconnects.

    Serve from an endpoint that accepts both ``GET`` and ``HEAD``::

        @app.api_route("/documents/{doc_id}/content", methods=["GET", "HEAD"])
        async def download(doc_id: uuid.UUID, request: Request) -> Response:
            doc = ...
            return await storage_response(manager, doc.file_ref, request)

    :param manager: the manager that stored the object.
    :param ref: the object to serve.
    :param request: the request being answered (method and conditional headers).
    :param disposition: ``"attachment"`` (download) or ``"inline"`` (display
        in the browser). Types a browser would run with the site's origin
        (HTML, SVG, XHTML, JavaScript) are always sent as ``attachment``,
        and an inline response carries ``Content-Security-Policy: sandbox``,
        so nothing served can run scripts as the site.
    :param redirect: answer with a redirect to a presigned URL when possible.
    :param expires_in: lifetime of the presigned URL in seconds.
    :raises ObjectNotFoundError: (HTTP 404) if the object does not exist.
    :raises InvalidLocationError: (HTTP 400) if the ref's location is unsafe
        or outside its policy's prefix.
    :raises StorageError: for an unknown storage key or a backend failure.
    """
    if redirect and ref.has_object:  # an inline-text ref has nothing to sign
        try:
            url = await manager.apresigned_url(ref, expires_in=expires_in, disposition=disposition)
        except OperationNotSupportedError:
            pass
        else:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

    size = ref.size
    etag = etag_for(ref) if ref.checksum else None
    media_type = await _amedia_type(ref)
    served_as = safe_disposition(media_type, disposition)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": media_type,
        "Content-Disposition": content_disposition(ref.original_filename, disposition=served_as),
        "X-Content-Type-Options": "nosniff",
    }
    if served_as != "attachment":
        headers["Content-Security-Policy"] = "sandbox"
    if etag is not None:
        headers["ETag"] = etag
        if _none_match(request.headers.get("if-none-match"), etag):
            # RFC 9110 15.4.5: a 304 repeats the validator, and sends no body.
            return Response(status_code=304, headers={"ETag": etag})

    start, end, status = 0, size, 200
    range_header = request.headers.get("range")
    if range_header is not None and _if_range_allows(request.headers.get("if-range"), etag):
        byte_range = _parse_range(range_header, size)
        if isinstance(byte_range, _Unsatisfiable):
            return JSONResponse(
                {"detail": f"the requested range is not satisfiable: the object has {size} bytes"},
                status_code=416,
                headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            )
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)

    if request.method == "HEAD":
        if not await manager.aexists(ref):
            raise ObjectNotFoundError(f"no object at {ref.location!r}", location=ref.location)
        return Response(status_code=status, headers=headers)

    stack = AsyncExitStack()
    try:
        reader = await stack.enter_async_context(
            manager.aopen(ref, start=start, end=None if end == size else end)
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        raise
    return _ReaderResponse(reader, stack, status_code=status, headers=headers)


class _ReaderResponse(StreamingResponse):
    """Streams an open reader and closes it however the response ends."""

    def __init__(
        self,
        reader: ObjectReader,
        stack: AsyncExitStack,
        *,
        status_code: int,
        headers: dict[str, str],
    ) -> None:
        self._stack = stack
        self._chunks = _iter_reader(reader)
        super().__init__(self._chunks, status_code=status_code, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._chunks.aclose()
                finally:
                    await self._stack.aclose()


async def _iter_reader(reader: ObjectReader) -> AsyncGenerator[bytes, None]:
    async for chunk in reader:
        yield chunk


async def _amedia_type(ref: StoredObjectRef) -> str:
    """The ref's content type if it can travel in a header, else a guess."""
    value = ref.content_type
    if value and _PRINTABLE_ASCII.fullmatch(value):
        return value
    return await aguess_content_type(ref.original_filename)


def _none_match(header: str | None, etag: str) -> bool:
    """``If-None-Match`` with the weak comparison RFC 9110 13.1.2 asks for."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(_strip_weak(tag) == etag for tag in header.split(","))


def _strip_weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def _if_range_allows(header: str | None, etag: str | None) -> bool:
    """Whether a ``Range`` may be honoured: ``If-Range`` is absent or names
    the current ETag exactly (strong comparison; dates are never a match,
    since refs carry no modification time)."""
    if header is None:
        return True
    return etag is not None and header.strip() == etag


def _parse_range(header: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """``(start, end)`` with ``end`` exclusive, ``_UNSATISFIABLE``, or ``None``
    to ignore the header (malformed, several ranges, or nothing to cut)."""
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            return _UNSATISFIABLE
        if size == 0:
            return None  # RFC 9110 14.1.1: satisfiable, yet nothing to cut: send it whole
        return max(size - suffix, 0), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        return _UNSATISFIABLE
    end = size if not last else min(int(last) + 1, size)
    return start, end
