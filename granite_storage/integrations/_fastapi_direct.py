"""The router for direct multipart uploads from Uppy's ``@uppy/aws-s3``
(multipart mode, ``endpoint`` option): the five Companion-style endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from starlette.responses import JSONResponse, Response

from granite_storage.direct import DirectUpload
from granite_storage.errors import StorageError
from granite_storage.http import declared_or_guessed_type
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef


@dataclass(frozen=True, slots=True)
class DirectUploadScope:
    """Where the caller may upload: what the ``authorize`` dependency returns.
    A request about an upload outside this place is answered 403."""

    model_name: str
    entity_id: object
    field_name: str


OnComplete = Callable[[StoredObjectRef, DirectUploadScope], Awaitable[Any]]


def direct_upload_router(
    manager: StorageManager,
    *,
    storage_key: str,
    authorize: Callable[..., Any],
    on_complete: OnComplete | None = None,
    expires_in: int = 3600,
) -> APIRouter:
    """An ``APIRouter`` serving Uppy's ``@uppy/aws-s3`` multipart endpoints
    for one policy. Mount it at the ``endpoint`` you give Uppy::

        app.include_router(direct_upload_router(manager, storage_key="videos",
                                                authorize=current_video), prefix="/uploads")
        # new AwsS3({endpoint: "/uploads", shouldUseMultipart: true})

    ``POST /s3/multipart`` starts an upload (``{"filename", "type",
    "size"?}``), ``GET /s3/multipart/{upload_id}/{part_number}?key=`` signs a
    part, ``GET /s3/multipart/{upload_id}?key=`` lists the parts,
    ``POST /s3/multipart/{upload_id}/complete?key=`` completes it and
    ``DELETE /s3/multipart/{upload_id}?key=`` aborts it. ``key`` is the
    upload's location.

    :param authorize: a FastAPI dependency (it may use ``Depends`` itself)
        that returns the :class:`DirectUploadScope` the caller may upload to,
        or raises ``HTTPException``; it runs for every request.
    :param on_complete: awaited with the new ref and the scope (to set it on
        the row and commit); what it returns is sent as ``"result"``.
    :param expires_in: the lifetime of each signed part URL, in seconds.
    """
    router = APIRouter(prefix="/s3/multipart")
    place = Depends(authorize)

    def upload_of(scope: DirectUploadScope, upload_id: str, key: str) -> DirectUpload:
        directory = manager.new_location(
            storage_key=storage_key,
            model_name=scope.model_name,
            entity_id=scope.entity_id,
            field_name=scope.field_name,
        ).rsplit("/", 1)[0]
        if not key.startswith(directory + "/") or "/" in key[len(directory) + 1 :]:
            raise HTTPException(403, "this upload does not belong to the authorised place")
        # The client's file name is not sent back; the type follows the location's suffix.
        return DirectUpload(storage_key, key, upload_id, part_size=0)

    @router.post("")
    async def create(
        body: Annotated[dict[str, Any], Body()], scope: DirectUploadScope = place
    ) -> Response:
        size = body.get("size")
        upload = await _answer(
            manager.acreate_direct_upload(
                storage_key=storage_key,
                model_name=scope.model_name,
                entity_id=scope.entity_id,
                field_name=scope.field_name,
                original_filename=_text(body.get("filename")),
                content_type=_text(body.get("type")),
                size=size if type(size) is int else None,
            )
        )
        if isinstance(upload, Response):
            return upload
        return JSONResponse(
            {"uploadId": upload.upload_id, "key": upload.location, "partSize": upload.part_size}
        )

    @router.get("/{upload_id}/{part_number}")
    async def sign_part(
        upload_id: str, part_number: int, key: str, scope: DirectUploadScope = place
    ) -> Response:
        upload = upload_of(scope, upload_id, key)
        url = await _answer(
            manager.apresign_upload_part(upload, part_number, expires_in=expires_in)
        )
        return (
            url if isinstance(url, Response) else JSONResponse({"url": url, "expires": expires_in})
        )

    @router.get("/{upload_id}")
    async def list_parts(upload_id: str, key: str, scope: DirectUploadScope = place) -> Response:
        parts = await _answer(manager.alist_upload_parts(upload_of(scope, upload_id, key)))
        if isinstance(parts, Response):
            return parts
        return JSONResponse(
            [{"PartNumber": p.part_number, "Size": p.size, "ETag": p.etag} for p in parts]
        )

    @router.post("/{upload_id}/complete")
    async def complete(
        upload_id: str,
        key: str,
        body: Annotated[dict[str, Any], Body()],
        scope: DirectUploadScope = place,
    ) -> Response:
        upload = upload_of(scope, upload_id, key)
        numbers = _part_numbers(body.get("parts"))
        if numbers is None:
            return JSONResponse({"detail": "parts must be a list of {PartNumber, ETag}"}, 400)
        content_type = await declared_or_guessed_type(None, key)
        upload = replace(upload, content_type=content_type)
        ref = await _answer(manager.acomplete_direct_upload(upload, numbers))
        if isinstance(ref, Response):
            return ref
        result = await on_complete(ref, scope) if on_complete is not None else None
        return JSONResponse(
            {"location": ref.location, "key": ref.location, "ref": ref.to_dict(), "result": result}
        )

    @router.delete("/{upload_id}")
    async def abort(upload_id: str, key: str, scope: DirectUploadScope = place) -> Response:
        done = await _answer(manager.aabort_direct_upload(upload_of(scope, upload_id, key)))
        return done if isinstance(done, Response) else JSONResponse({})

    return router


async def _answer(call: Awaitable[Any]) -> Any:
    """The result of ``call``, or the JSON error response of its StorageError."""
    from granite_storage.integrations.fastapi import storage_error_response

    try:
        return await call
    except StorageError as exc:
        return storage_error_response(exc)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _part_numbers(parts: object) -> Sequence[int] | None:
    """The part numbers of Uppy's ``[{"PartNumber": n, "ETag": ...}]``; the
    ETags are not used (the bucket's listing has the true ones)."""
    if not isinstance(parts, list):
        return None
    numbers = [part.get("PartNumber") for part in parts if isinstance(part, dict)]
    valid = [number for number in numbers if type(number) is int]
    return valid if len(valid) == len(parts) else None
