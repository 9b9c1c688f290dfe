"""StorageManager: routes writes to their policy's backend, reads to the backend a ref names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Self

import anyio

from granite_storage._checks import acheck_stored, ainspect_upload, declared_extra
from granite_storage._concurrency import aclose_quietly
from granite_storage._presigned import PresignedTransfers
from granite_storage.contracts import BytesReader, ObjectReader, StorageBackend
from granite_storage.direct import DirectUploads
from granite_storage.errors import ConfigurationError, ContentTooLargeError, InvalidLocationError
from granite_storage.locations import build_location, is_under_prefix, validate_location
from granite_storage.policy import StoragePolicy
from granite_storage.refs import StoredObjectRef, clean_text, utcnow_iso
from granite_storage.streams import (
    DEFAULT_CHUNK_SIZE,
    ByteSource,
    SizeLimiter,
    check_size_limit,
    chunks_of,
    coalesce,
)

__all__ = ["StorageManager"]


class StorageManager(PresignedTransfers, DirectUploads):
    """The entry point: policies pick backends, backends store bytes.

    ``async with StorageManager(...) as manager:`` (or ``await manager.aclose()``)
    closes the clients and connections that backends opened.

    :param backends: backend instances by backend key.
    :param policies: policies by storage key (each policy's ``storage_key``
        must equal its key here).
    :param chunk_size: the size of the chunks read from upload sources.
    :raises ConfigurationError: if a policy names an unknown backend.
    """

    def __init__(
        self,
        backends: Mapping[str, StorageBackend],
        policies: Mapping[str, StoragePolicy],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.backends = dict(backends)
        self.policies = dict(policies)
        self.chunk_size = chunk_size
        for key, policy in self.policies.items():
            if key != policy.storage_key:
                raise ConfigurationError(
                    f"policy registered as {key!r} has storage_key={policy.storage_key!r}; "
                    "they must be equal"
                )
            if policy.backend_key not in self.backends:
                raise ConfigurationError(
                    f"policy {key!r} uses backend {policy.backend_key!r}, which is not one of "
                    f"the manager's backends {sorted(self.backends)}"
                )

    def __repr__(self) -> str:
        return f"StorageManager(backends={sorted(self.backends)}, policies={sorted(self.policies)})"

    # -- configuration ------------------------------------------------------

    def get_policy(self, storage_key: str) -> StoragePolicy:
        """The policy for ``storage_key``.

        :raises StorageError: (a :class:`ConfigurationError`) for an unknown key.
        """
        try:
            return self.policies[storage_key]
        except KeyError:
            raise ConfigurationError(
                f"unknown storage key {storage_key!r}; configured keys: {sorted(self.policies)}"
            ) from None

    def get_backend_for_policy(self, policy: StoragePolicy) -> StorageBackend:
        """The backend that ``policy`` writes to."""
        try:
            return self.backends[policy.backend_key]
        except KeyError:
            raise ConfigurationError(
                f"unknown backend {policy.backend_key!r} for policy {policy.storage_key!r}"
            ) from None

    def _resolve(self, ref: StoredObjectRef) -> tuple[StoragePolicy, StorageBackend]:
        """The policy and backend of ``ref``, after checking its location is
        safe and lies under the policy's prefix (before any I/O)."""
        policy = self.get_policy(ref.storage_key)
        self._check_location(policy, ref.location)
        return policy, self.get_backend_for_ref(ref)

    def get_backend_for_ref(self, ref: StoredObjectRef) -> StorageBackend:
        """The backend holding ``ref``'s object (no I/O): the one registered under
        the *key* ``ref.backend`` (what ``granite-storage migrate`` writes), else
        the policy's. New writes record the policy backend's ``backend_name``,
        as 0.1.0 did: that name means the policy's backend even if it is a key."""
        own = self.get_backend_for_policy(self.get_policy(ref.storage_key))
        named = self.backends.get(ref.backend)
        return own if named is None or ref.backend == own.backend_name else named

    def new_location(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        original_filename: str | None = None,
    ) -> str:
        """A new, unique location for one write under ``storage_key``'s policy
        (see :func:`~granite_storage.locations.build_location`). No I/O.

        :raises StorageError: for an unknown storage key.
        :raises InvalidLocationError: if a name has no safe characters.
        """
        return build_location(
            key_prefix=self.get_policy(storage_key).key_prefix,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            original_filename=original_filename,
        )

    @staticmethod
    def _check_location(policy: StoragePolicy, location: str) -> None:
        validate_location(location)
        if not is_under_prefix(location, policy.key_prefix):
            raise InvalidLocationError(
                f"location {location!r} is outside the prefix {policy.key_prefix!r} "
                f"of policy {policy.storage_key!r}"
            )

    # -- writes -------------------------------------------------------------

    async def aput_bytes(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        content: bytes,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredObjectRef:
        """Store ``content``; see :meth:`aput_stream`. An oversized ``content``
        is refused before any I/O."""
        policy = self.get_policy(storage_key)
        if policy.max_size is not None and len(content) > policy.max_size:
            raise ContentTooLargeError(
                f"content of {len(content)} bytes is larger than the limit of "
                f"{policy.max_size} bytes of policy {policy.storage_key!r}",
                max_size=policy.max_size,
            )
        return await self.aput_stream(
            storage_key=storage_key,
            model_name=model_name,
            entity_id=entity_id,
            field_name=field_name,
            stream=content,
            content_type=content_type,
            original_filename=original_filename,
            extra=extra,
        )

    async def aput_stream(
        self,
        *,
        storage_key: str,
        model_name: str,
        entity_id: object,
        field_name: str,
        stream: ByteSource,
        content_type: str | None = None,
        original_filename: str | None = None,
        extra: dict[str, Any] | None = None,
        location: str | None = None,
    ) -> StoredObjectRef:
        """Stream ``stream`` into a new object and return its ref.

        ``storage_key`` names the policy (its backend, ``max_size`` and
        ``key_prefix``); ``model_name``, ``entity_id`` and ``field_name``
        become the location's sanitised segments (for example the table, the
        row's primary key and the column).

        The ref's ``content_type`` is detected from the first bytes (see
        :class:`StoragePolicy`'s ``detect_content_type``); a declared
        ``content_type`` that differs is kept in ``extra["declared_content_type"]``.

        ``stream`` may be bytes, an object with ``async read(n)`` (an
        ``UploadFile``, an aiofiles file), a sync binary file (read in a
        worker thread), or a (async) iterable of bytes. Every call writes a
        new, unique location.

        :param location: a location made beforehand with :meth:`new_location`
            for the same policy (for callers that must record the location
            before the upload starts, such as the SQLAlchemy object ledger);
            ``None`` builds a new one.
        :raises ContentTooLargeError: as soon as more than the policy's
            ``max_size`` bytes arrived; nothing of the upload remains.
        :raises ContentTypeNotAllowedError: if the type detected from the
            head is outside the policy's ``allowed_content_types``; the
            backend was not called.
        :raises UploadValidationError: if a validator refused the head (the
            backend was not called) or the stored object (it was deleted).
        :raises InvalidLocationError: if a name has no safe characters, or a
            given ``location`` is unsafe or outside the policy's prefix.
        :raises StorageError: for an unknown storage key or a backend failure.
        """
        policy = self.get_policy(storage_key)
        backend = self.get_backend_for_policy(policy)
        original_filename = clean_text(original_filename)
        if location is None:
            location = self.new_location(
                storage_key=storage_key,
                model_name=model_name,
                entity_id=entity_id,
                field_name=field_name,
                original_filename=original_filename,
            )
        else:
            self._check_location(policy, location)
        # source -> bounded chunks -> size limit (counts every byte as it
        # arrives) -> small chunks merged, so tiny pieces cost no extra I/O
        # -> the head checked, before the backend is called at all. Bytes in
        # memory are cut into whole chunks and their size is known: checked
        # once, before any I/O.
        chunks: AsyncIterator[bytes]
        if isinstance(stream, bytes | bytearray):
            check_size_limit(len(stream), policy.max_size)
            chunks = chunks_of(stream, self.chunk_size)
        else:
            limited = SizeLimiter(chunks_of(stream, self.chunk_size), policy.max_size)
            chunks = coalesce(limited, self.chunk_size)
        try:
            chunks, info = await ainspect_upload(
                policy,
                chunks,
                chunk_size=self.chunk_size,
                location=location,
                declared_content_type=content_type,
                filename=original_filename,
                declared_size=len(stream) if isinstance(stream, bytes | bytearray) else None,
            )
            result = await backend.aput_stream(
                key=location, chunks=chunks, content_type=info.content_type
            )
        finally:
            await aclose_quietly(chunks)  # shielded from cancellation
        merged_extra = {**(result.extra or {}), **(extra or {}), **declared_extra(info)} or None
        ref = StoredObjectRef(
            policy.storage_key, backend.backend_name, location, result.size, result.checksum,
            info.content_type, original_filename, utcnow_iso(), merged_extra,
        )  # fmt: skip
        if policy.validators:  # their after_upload hooks
            await acheck_stored(policy, backend, ref, info)
        return ref

    # -- reads and deletes ----------------------------------------------------

    def aopen(
        self,
        ref: StoredObjectRef,
        *,
        verify: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open ``ref``'s object: ``async with manager.aopen(ref) as reader``.

        :param verify: compare size and sha256 with the ref at the end.
        :param start: first byte; ``end``: one past the last byte (``None``: to the end).
        :raises ObjectNotFoundError: if the object does not exist.
        :raises InvalidLocationError: if the ref's location is unsafe or outside
            its policy's prefix (before any I/O).
        :raises ChecksumMismatchError: with ``verify=True``, at the end of a
            whole read whose bytes differ from the ref.
        """
        return self._holder(ref).aopen(ref, verify=verify, start=start, end=end)

    async def aget(self, ref: StoredObjectRef, *, verify: bool = False) -> bytes:
        """The whole content of ``ref``'s object. See :meth:`aopen`."""
        async with self.aopen(ref, verify=verify) as reader:
            return await reader.read()

    async def adelete(self, ref: StoredObjectRef) -> None:
        """Delete ``ref``'s object. Deleting a missing object is not an error."""
        await self._holder(ref).adelete(ref)

    async def aexists(self, ref: StoredObjectRef) -> bool:
        """Whether ``ref``'s object exists."""
        return await self._holder(ref).aexists(ref)

    def _holder(self, ref: StoredObjectRef) -> StorageBackend | _InlineText:
        """What holds ``ref``'s content: the text of a 0.1.0 inline-text ref,
        else its backend (after :meth:`_resolve` checked the ref, before any I/O)."""
        text = ref.legacy_inline_text
        return _InlineText(text) if text is not None else self._resolve(ref)[1]

    # -- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Close every backend (clients, connection pools). Safe to call twice."""
        with anyio.CancelScope(shield=True):
            for backend in self.backends.values():
                await backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _InlineText:
    """The content of a 0.1.0 inline-text ref, held by the ref itself (see
    :attr:`StoredObjectRef.legacy_inline_text`): read from memory, always
    there, nothing stored to delete, no checksum to verify. Answers as a
    backend would."""

    def __init__(self, text: str) -> None:
        self._data = text.encode()

    def aopen(
        self, ref: StoredObjectRef, *, verify: bool = False, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range start={start} end={end}")
        return nullcontext(BytesReader(self._data[start:end]))

    async def aexists(self, ref: StoredObjectRef) -> bool:
        return True

    async def adelete(self, ref: StoredObjectRef) -> None:
        return None
