"""A policy's upload rules, applied to the head of an upload and, after its
last byte, to the stored object: detection, the allow-list, validators."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from granite_storage._detect import adetect_content_type
from granite_storage._head import HeadStage
from granite_storage.contracts import StorageBackend
from granite_storage.errors import ContentTypeNotAllowedError
from granite_storage.http import declared_or_guessed_type
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef, clean_text
from granite_storage.validation import HEAD_SIZE, UploadInfo


def essence(content_type: str) -> str:
    """``type/subtype`` of a content type, lower case, without parameters."""
    return content_type.partition(";")[0].strip().lower()


def is_allowed(content_type: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether ``content_type`` matches an entry of ``allowed`` (exact, or ``type/*``)."""
    if allowed is None:
        return True
    kind = essence(content_type)
    major = kind.partition("/")[0]
    return any(entry == kind or entry == f"{major}/*" for entry in allowed)


def needs_head(policy: StoragePolicy) -> bool:
    """Whether uploads under ``policy`` must be held back until their head is read."""
    return bool(
        policy.detect_content_type or policy.allowed_content_types is not None or policy.validators
    )


async def acheck(policy: StoragePolicy, head: bytes, info: UploadInfo) -> UploadInfo:
    """Detect the content type from ``head`` (unless the policy turned detection
    off), then apply the allow-list and the validators; the info they saw.

    :raises ContentTypeNotAllowedError: for a type outside the allow-list.
    :raises UploadValidationError: if a validator refused.
    """
    if policy.detect_content_type:
        detected = await adetect_content_type(head, info.filename)
        declared = info.declared_content_type
        if declared and essence(declared) == detected:
            detected = declared  # the same type: keep the client's parameters (charset)
        info = dataclasses.replace(info, content_type=detected)
    if not is_allowed(info.content_type, policy.allowed_content_types):
        allowed = policy.allowed_content_types or ()
        raise ContentTypeNotAllowedError(
            f"the upload is {info.content_type!r} (declared {info.declared_content_type!r}, "
            f"file name {info.filename!r}), which policy {policy.storage_key!r} does not "
            f"accept; allowed: {', '.join(allowed) or 'nothing'}",
            content_type=info.content_type,
            declared_content_type=info.declared_content_type,
            allowed=allowed,
        )
    for validator in policy.validators:
        await _arun(validator, head, info)
    return info


async def acheck_stored(
    policy: StoragePolicy, backend: StorageBackend, ref: StoredObjectRef, info: UploadInfo
) -> None:
    """Run the validators' ``after_upload`` hooks on the stored ``ref``; if one
    fails, the object is deleted before the error propagates."""
    info = dataclasses.replace(info, size=ref.size, checksum=ref.checksum)
    try:
        for validator in policy.validators:
            hook = getattr(validator, "after_upload", None)
            if hook is not None:
                await _arun(hook, info)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await backend.adelete(ref)
        raise


async def _arun(function: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Await an async function; run a sync one in a worker thread."""
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - an object with async __call__
    ):
        result = function(*args)
    else:
        result = await anyio.to_thread.run_sync(function, *args)
    if inspect.isawaitable(result):
        await result


async def ainspect_upload(
    policy: StoragePolicy,
    chunks: AsyncIterator[bytes],
    *,
    chunk_size: int,
    location: str,
    declared_content_type: str | None,
    filename: str | None,
    declared_size: int | None,
) -> tuple[AsyncIterator[bytes], UploadInfo]:
    """Read the head of ``chunks`` (at most :data:`HEAD_SIZE` bytes, never more
    than one chunk) and check it; return the chunks, head included, for the
    backend, and the checked info. Nothing is read when the policy has no
    rule that needs the bytes.

    :raises ContentTypeNotAllowedError: see :func:`acheck`.
    :raises UploadValidationError: see :func:`acheck`.
    """
    declared = clean_text(declared_content_type)
    info = UploadInfo(
        storage_key=policy.storage_key,
        location=location,
        content_type=await declared_or_guessed_type(declared, filename),
        declared_content_type=declared,
        filename=filename,
        declared_size=declared_size,
    )
    if not needs_head(policy):
        return chunks, info
    stage = HeadStage(chunks, min(HEAD_SIZE, chunk_size))
    head = await stage.afill()
    return stage, await acheck(policy, head, info)


def declared_extra(info: UploadInfo) -> dict[str, str]:
    """``{"declared_content_type": ...}`` when the declared type differs from the ref's."""
    declared = info.declared_content_type
    if declared and essence(declared) != essence(info.content_type):
        return {"declared_content_type": declared}
    return {}
