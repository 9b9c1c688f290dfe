"""Streaming uploads for Starlette and FastAPI: the body goes to the backend as it arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from python_multipart.multipart import parse_options_header
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

from granite_storage.errors import ContentTooLargeError, InvalidUploadError
from granite_storage.integrations._fastapi_multipart import MAX_PART_HEADER_SIZE, MultipartReceiver
from granite_storage.integrations._fastapi_pipe import ObjectPipe, UploadStore
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import DEFAULT_CHUNK_SIZE

# Bytes handed to the multipart parser at once: a network read larger than
# this (an in-process test client sends the whole body as one chunk) is cut
# up, so parsed file data never piles up beyond this much.
_FEED_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class StreamedUpload:
    """The result of :func:`stream_upload` and :func:`stream_upload_to`.

    :param ref: the stored file's ref.
    :param fields: the form's other (non-file) fields, as strings; a
        repeated name keeps every value (``fields.getlist(name)``) and
        ``fields[name]`` is the last one. Empty for a raw (non-multipart) body.
    """

    ref: StoredObjectRef
    fields: ImmutableMultiDict[str, str]


async def stream_upload(
    request: Request,
    manager: StorageManager,
    *,
    storage_key: str,
    model_name: str,
    entity_id: object,
    field_name: str,
    file_field: str = "file",
    max_fields: int = 16,
    max_field_size: int = 64 * 1024,
    filename_query_param: str = "filename",
    filename_header: str = "x-filename",
    extra: dict[str, Any] | None = None,
) -> StreamedUpload:
    """Store the file in ``request``'s body while the body is still arriving.

    Unlike FastAPI's ``UploadFile``, which spools every file to a temporary
    file and calls the endpoint only once the whole body is in, this parses
    the body from ``request.stream()`` chunk by chunk and pipes the file's
    bytes into :meth:`StorageManager.aput_stream` through a bounded memory
    stream: memory use stays at a few chunks whatever the file's size,
    nothing is spooled to the local disk, a slow backend slows the client
    down, and an oversized upload fails as soon as the policy's ``max_size``
    is passed, before the rest of the body is read.

    Two kinds of bodies are accepted:

    * ``multipart/form-data`` (an HTML form, ``curl -F``, ``httpx files=``):
      the part named ``file_field`` is the file; its ``filename`` and
      ``Content-Type`` become the ref's ``original_filename`` and
      ``content_type``. Other parts are small text fields, returned in
      :attr:`StreamedUpload.fields`: at most ``max_fields`` of them, each at
      most ``max_field_size`` bytes. Another part carrying a file is refused.
      The object is completed only once the closing boundary arrived and
      every field passed its limits, so a form that turns out bad after the
      file part stores nothing either.
    * any other ``Content-Type`` (``application/octet-stream``,
      ``image/png``, none): the whole body is the file and the request's
      ``Content-Type`` its content type. The file name comes from the
      ``filename_query_param`` query parameter, else from the
      ``filename_header`` header (percent-decoded, so UTF-8 names can be
      sent as ``X-Filename: %E6%97%A5.txt``).

    A ``Content-Length`` that cannot fit the policy's ``max_size`` (plus, for
    a form, the room its fields and part headers may take) is refused before
    any byte is read.

    Call it from an endpoint that takes the ``Request`` and declares no
    ``Form``/``File``/body parameters (those would read the body first)::

        @app.post("/files")
        async def upload(request: Request) -> dict[str, str]:
            upload = await stream_upload(request, manager, storage_key="files",
                                         model_name="file", entity_id=file_id,
                                         field_name="content")
            return {"location": upload.ref.location, "title": upload.fields.get("title", "")}

    To store into a model that uses ``StoredContentMixin`` (so that the
    upload follows the session's transaction), use :func:`stream_upload_to`.
    Install :func:`install_exception_handlers` to answer the errors below
    with their HTTP status. Each upload gets a new, unique location; if the
    endpoint fails afterwards (say, at the database commit), delete it with
    ``manager.adelete(upload.ref)`` or leave it to the garbage collector.

    :param request: the incoming request; its body must not have been read.
    :param manager: the manager to store through.
    :param storage_key: the policy to store under (it sets ``max_size``).
    :param model_name: the location's model segment (e.g. the table name).
    :param entity_id: the location's entity segment (e.g. the row's id).
    :param field_name: the location's field segment.
    :param file_field: the name of the form part holding the file.
    :param max_fields: the most non-file form fields accepted.
    :param max_field_size: the most bytes a non-file field's value may have.
    :param filename_query_param: for a raw body, the query parameter that
        names the file.
    :param filename_header: for a raw body, the header that names the file
        when the query parameter is absent.
    :param extra: stored in the ref's ``extra``.
    :returns: the ref and the form's other fields.
    :raises ContentTooLargeError: (HTTP 413) if the ``Content-Length`` is
        too large, as soon as the file passes the policy's ``max_size``, or
        when a field or the form's non-file bytes pass their limits; nothing
        of the upload remains in the backend.
    :raises InvalidUploadError: (HTTP 400) for a malformed or truncated
        multipart body, a missing or repeated ``file_field`` part, another
        part carrying a file, too many fields, or a field that is not UTF-8;
        nothing remains in the backend.
    :raises starlette.requests.ClientDisconnect: if the client went away
        mid-upload; nothing remains in the backend.
    :raises StorageError: for an unknown storage key or a backend failure.
    """
    policy = manager.get_policy(storage_key)

    async def store(
        stream: AsyncIterator[bytes], /, *, filename: str | None, content_type: str | None
    ) -> StoredObjectRef:
        return await manager.aput_stream(
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            stream=stream,
            original_filename=filename,
            content_type=content_type,
            extra=extra,
        )

    return await stream_upload_to(
        request,
        store,
        max_size=policy.max_size,
        chunk_size=manager.chunk_size,
        file_field=file_field,
        max_fields=max_fields,
        max_field_size=max_field_size,
        filename_query_param=filename_query_param,
        filename_header=filename_header,
    )


async def stream_upload_to(
    request: Request,
    store: UploadStore,
    *,
    max_size: int | None,
    file_field: str = "file",
    max_fields: int = 16,
    max_field_size: int = 64 * 1024,
    filename_query_param: str = "filename",
    filename_header: str = "x-filename",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> StreamedUpload:
    """Like :func:`stream_upload`, storing the file with ``store``.

    ``store`` is called once the file's name and type are known, as
    ``await store(stream, filename=..., content_type=...)``, with an async
    iterator over the file's bytes as they arrive. Pass a model's
    ``aset_content_from_stream`` so the ref is assigned to the row and the
    object follows the session's transaction (deleted if it rolls back)::

        @app.post("/documents")
        async def upload(request: Request, session: AsyncSession = Depends(get_session)):
            doc = Document()
            session.add(doc)
            await session.flush()                      # the primary key names the location
            upload = await stream_upload_to(request, doc.aset_content_from_stream,
                                            max_size=MAX_UPLOAD_SIZE)
            doc.title = upload.fields.get("title", "")
            await session.commit()

    :param request: the incoming request; its body must not have been read.
    :param store: reads the stream to its end and returns the ref (see
        :class:`UploadStore`).
    :param max_size: the upload limit, used to refuse a too large
        ``Content-Length`` up front and to stop reading as soon as the file
        passes it; pass the policy's ``max_size`` (the manager enforces it
        as well). ``None`` checks nothing here.
    :param chunk_size: the size of the chunks handed to ``store``.
    :returns: the ref ``store`` returned, and the form's other fields.
    :raises ContentTooLargeError: see :func:`stream_upload`.
    :raises InvalidUploadError: see :func:`stream_upload`.
    :raises starlette.requests.ClientDisconnect: if the client went away.
    :raises Exception: whatever ``store`` raised.

    The other parameters are those of :func:`stream_upload`.
    """
    media_type, options = parse_options_header(request.headers.get("content-type"))
    if media_type != b"multipart/form-data":
        if max_size is not None:
            _check_content_length(request, max_size)
        filename = _raw_filename(request, filename_query_param, filename_header)
        content_type = request.headers.get("content-type") or None
        pipe = ObjectPipe(store, max_size=max_size, chunk_size=chunk_size)
        ref = await pipe.arun(lambda: _read_raw(request, pipe, filename, content_type))
        return StreamedUpload(ref, ImmutableMultiDict())

    # Everything in a form body that is not the file: fields, part headers,
    # boundaries and epilogue.
    allowance = max_fields * max_field_size + (max_fields + 2) * MAX_PART_HEADER_SIZE
    if max_size is not None:
        _check_content_length(request, max_size + allowance)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidUploadError("the multipart/form-data Content-Type has no boundary")
    receiver = MultipartReceiver(
        boundary, file_field=file_field, max_fields=max_fields, max_field_size=max_field_size
    )
    pipe = ObjectPipe(store, max_size=max_size, chunk_size=chunk_size)
    ref = await pipe.arun(lambda: _read_form(request, pipe, receiver, allowance))
    return StreamedUpload(ref, ImmutableMultiDict(receiver.fields))


async def _read_raw(
    request: Request, pipe: ObjectPipe, filename: str | None, content_type: str | None
) -> None:
    pipe.start(filename=filename, content_type=content_type)
    async for chunk in request.stream():
        await pipe.write(chunk)
    await pipe.finish()


async def _read_form(
    request: Request, pipe: ObjectPipe, receiver: MultipartReceiver, allowance: int
) -> None:
    received = 0
    async for chunk in request.stream():
        for start in range(0, len(chunk), _FEED_SIZE):
            piece = chunk[start : start + _FEED_SIZE]
            receiver.feed(piece)
            received += len(piece)
            if receiver.file_started and not pipe.started:
                pipe.start(filename=receiver.filename, content_type=receiver.content_type)
            if data := receiver.take_file_data():
                await pipe.write(data)
            if received - receiver.file_size > allowance:
                raise ContentTooLargeError(
                    f"the form's fields, part headers and epilogue take more than {allowance} "
                    "bytes; send the file with fewer or smaller fields",
                    max_size=allowance,
                )
    if not receiver.ended:
        raise InvalidUploadError(
            "the multipart body ended before its closing boundary: the upload is incomplete"
        )
    if not receiver.file_started:
        raise InvalidUploadError(f"the form has no file part named {receiver.file_field!r}")
    # Only now, with the whole form read and valid, does the object complete.
    await pipe.finish()


def _check_content_length(request: Request, limit: int) -> None:
    raw = request.headers.get("content-length", "").strip()
    if not (raw.isascii() and raw.isdigit()):
        return  # chunked, or a malformed value the server refuses itself
    length = int(raw)
    if length > limit:
        raise ContentTooLargeError(
            f"the request body of {length} bytes is larger than the upload limit of {limit} bytes",
            max_size=limit,
        )


def _raw_filename(request: Request, query_param: str, header: str) -> str | None:
    name = request.query_params.get(query_param)
    if name is None and (raw := request.headers.get(header)) is not None:
        name = unquote(raw)
    return name or None
