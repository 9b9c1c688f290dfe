"""The one code path behind ``StoredContentMixin`` and ``stored_content_field``.

A :class:`StoredContent` is the stored content of one ref column of one model
instance: it uploads through the class's :class:`~granite_storage.StorageManager`,
assigns the new ref, and records the objects written and released with the
session (see ``_tracking``). A model configured with a plug-in (the object
ledger) has it claim each upload and follow each session (see ``_plugin``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

from sqlalchemy import Engine, MetaData
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, Session, object_session

from granite_storage.contracts import ObjectReader
from granite_storage.direct import DirectUpload
from granite_storage.errors import InvalidLocationError, ObjectNotFoundError, StorageError
from granite_storage.integrations.sqlalchemy._db import arun_in_session
from granite_storage.integrations.sqlalchemy._mapping import (
    bind_of,
    check_ref_column,
    entity_id_of,
    metadata_of,
    model_name_of,
    plugin_of,
    storage_manager_of,
)
from granite_storage.integrations.sqlalchemy._plugin import (
    TrackedObject,
    UploadClaim,
)
from granite_storage.integrations.sqlalchemy._tracking import track_release, track_upload
from granite_storage.locations import is_under_prefix
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import ByteSource

_TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ReplaceContentResult:
    """What a replace did: the ref that was there before (``None`` if there
    was none) and the ref that is there now."""

    previous_ref: StoredObjectRef | None
    new_ref: StoredObjectRef


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one ref column is stored.

    :param ref_attr: the mapped attribute that holds the ref
        (a :class:`StoredObjectRefType` column).
    :param storage_key: the policy new uploads are written under.
    :param field_name: the field segment of new locations.
    :param delete_replaced: delete replaced and cleared objects after the
        commit; ``None`` defers to the model's ``__stored_content_delete_replaced__``,
        then to the policy's ``delete_replaced``.
    """

    ref_attr: str
    storage_key: str
    field_name: str
    delete_replaced: bool | None = None


class StoreOptions(TypedDict, total=False):
    """The keyword arguments of every method that stores content (all optional)."""

    #: The original filename, kept in the ref; its suffix ends the location.
    filename: str | None
    #: The declared content type (default: guessed).
    content_type: str | None
    #: JSON-serialisable values kept in ``ref.extra``.
    extra: dict[str, Any] | None


class _Where(TypedDict):
    """Where a new object of this field goes (``StorageManager.new_location``)."""

    storage_key: str
    model_name: str
    entity_id: object
    field_name: str


class UploadFileLike(Protocol):
    """What :meth:`StoredContent.aset_from_uploadfile` needs: Starlette's and
    FastAPI's ``UploadFile`` fit."""

    @property
    def filename(self) -> str | None: ...

    @property
    def content_type(self) -> str | None: ...

    async def read(self, size: int = -1) -> bytes: ...


class StoredContent:
    """The stored content of one ref column of one model instance.

    Obtained as ``user.avatar`` (see ``stored_content_field``); the mixin's
    ``a*_content`` methods use the same class. Methods that upload need the
    instance's primary key: add it to a session and ``await session.flush()``
    first, unless you set the key yourself.
    """

    __slots__ = ("_instance", "_spec")

    def __init__(self, instance: object, spec: FieldSpec) -> None:
        self._instance = instance
        self._spec = spec

    def __repr__(self) -> str:
        return f"<StoredContent {type(self._instance).__name__}.{self._spec.ref_attr}>"

    @property
    def spec(self) -> FieldSpec:
        """The field's configuration."""
        return self._spec

    # -- the ref ---------------------------------------------------------------

    @property
    def ref(self) -> StoredObjectRef | None:
        """The current ref, without I/O.

        :raises StorageError: if the column is not loaded (expired by a commit
            or rollback, or left out of the query): use :meth:`aget_ref`, or
            ``await session.refresh(obj, [attr])`` first.
        """
        state = self._state()
        key = self._spec.ref_attr
        if key in state.unloaded and state.has_identity:
            cause = (
                "was expired (by a commit with expire_on_commit=True, a rollback, or "
                "session.expire())"
                if key in state.expired_attributes
                else "was never loaded (deferred, or left out of the query that loaded the row)"
            )
            raise StorageError(
                f"{self._describe()} {cause}, and reading it needs I/O: "
                f"`await session.refresh(obj, [{key!r}])` first (or `await "
                f"obj.awaitable_attrs.{key}` on a model with AsyncAttrs), or call an async "
                "method, which loads it itself"
            )
        return self._current()

    async def aget_ref(self) -> StoredObjectRef | None:
        """The current ref, loaded from the database if it is not loaded (it
        stays loaded afterwards).

        :raises sqlalchemy.orm.exc.DetachedInstanceError: if it is not loaded and
            the instance belongs to no session.
        """
        state = self._state()
        key = self._spec.ref_attr
        if key in state.unloaded and state.has_identity:
            instance = self._instance

            def load(session: Session) -> None:
                if key in state.expired_attributes:
                    getattr(instance, key)  # loads every expired column at once
                else:  # never loaded: reading it would not keep it, or give None
                    session.refresh(instance, [key])

            await arun_in_session(instance, load)
        return self._current()

    # -- writes ----------------------------------------------------------------

    async def aset(self, content: bytes | str, **options: Unpack[StoreOptions]) -> StoredObjectRef:
        """Store ``content`` (``str`` is encoded as UTF-8, ``text/plain``) in a
        new object and assign its ref. See :meth:`aset_from_stream`."""
        return (await self.areplace(content, **options)).new_ref

    async def areplace(
        self, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> ReplaceContentResult:
        """Like :meth:`aset`, and say which ref was replaced."""
        if isinstance(content, str):
            content = content.encode("utf-8")
            options["content_type"] = options.get("content_type") or _TEXT_CONTENT_TYPE
        return await self._astore(content, **options)

    async def aset_from_stream(
        self, stream: ByteSource, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef:
        """Stream ``stream`` into a new object and assign its ref.

        ``stream`` is anything ``StorageManager.aput_stream`` takes; ``options``
        are :class:`StoreOptions`. The previous object (if any) is released:
        deleted after the commit when the policy opts in, left to the garbage
        collector otherwise. If the transaction rolls back, the new object is
        deleted.

        :raises StorageError: if the primary key is not known yet (flush first).
        :raises ConfigurationError: if no manager is configured or the field
            does not name a ``StoredObjectRefType`` column.
        :raises ContentTooLargeError: past the policy's ``max_size``; nothing is
            stored and the ref is unchanged.
        """
        return (await self._astore(stream, **options)).new_ref

    async def aset_from_uploadfile(
        self, upload_file: UploadFileLike, *, extra: dict[str, Any] | None = None
    ) -> StoredObjectRef:
        """Store an ``UploadFile`` from its start, read with its async ``read``;
        its ``filename`` and ``content_type`` go into the ref. See
        :meth:`aset_from_stream`."""
        seek = getattr(upload_file, "seek", None)
        if seek is not None and inspect.iscoroutinefunction(seek):
            await seek(0)
        options = StoreOptions(
            filename=upload_file.filename, content_type=upload_file.content_type, extra=extra
        )
        return (await self._astore(upload_file, **options)).new_ref

    def clear(self) -> StoredObjectRef | None:
        """Set the ref to ``None`` without I/O and return the previous ref.

        The previous object is released as by a replace.

        :raises StorageError: if the column is not loaded (see :attr:`ref`).
        """
        previous = self.ref
        setattr(self._instance, self._spec.ref_attr, None)
        if previous is not None:
            self._release(previous)
        return previous

    # -- reads -----------------------------------------------------------------

    async def aget(self, *, verify: bool = False) -> bytes | None:
        """The whole content, or ``None`` when there is no ref.

        :raises ObjectNotFoundError: if the ref's object is missing.
        :raises ChecksumMismatchError: with ``verify=True``, if the bytes differ
            from the ref's size or checksum.
        :raises ConfigurationError: if no manager is configured.
        """
        manager = self._manager()
        ref = await self.aget_ref()
        if ref is None:
            return None
        return await manager.aget(ref, verify=verify)

    async def aget_text(self, encoding: str = "utf-8", *, verify: bool = False) -> str | None:
        """The content decoded with ``encoding``, or ``None`` when there is no
        ref. Refs migrated from 0.1.0 text columns return their text.

        :raises UnicodeDecodeError: if the content is not valid ``encoding``.
        """
        content = await self.aget(verify=verify)
        return None if content is None else content.decode(encoding)

    @asynccontextmanager
    async def aopen(self, *, verify: bool = False) -> AsyncIterator[ObjectReader]:
        """``async with content.aopen() as reader``: stream the content.

        :raises ObjectNotFoundError: if there is no ref, or its object is missing.
        """
        manager = self._manager()
        ref = await self.aget_ref()
        if ref is None:
            raise ObjectNotFoundError(
                f"{self._describe()} has no stored content; store some first (aset_content / aset)"
            )
        async with manager.aopen(ref, verify=verify) as reader:
            yield reader

    # -- internals -------------------------------------------------------------

    async def aattach_direct_upload(self, upload: DirectUpload) -> StoredObjectRef:
        """Complete a direct upload made for this field and instance, and assign
        its ref as :meth:`aset_from_stream` would (the ledger claims it first).

        :raises InvalidLocationError: if the upload belongs elsewhere."""
        return (await self._astore(upload, filename=upload.original_filename)).new_ref

    async def _astore(
        self,
        source: ByteSource | DirectUpload,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ReplaceContentResult:
        # Explicit keywords: the public methods take **options, and a misspelt
        # one (filenme=...) must raise TypeError here instead of being ignored.
        manager = self._manager()
        state = self._state()
        mapper = state.mapper
        check_ref_column(mapper, self._spec.ref_attr)
        where = _Where(
            storage_key=self._spec.storage_key,
            model_name=model_name_of(mapper),
            entity_id=entity_id_of(state),
            field_name=self._spec.field_name,
        )
        location = manager.new_location(**where, original_filename=filename)
        if isinstance(source, DirectUpload):  # completed below, at its own location
            directory = location.rsplit("/", 1)[0]
            if source.storage_key != where["storage_key"] or not is_under_prefix(
                source.location, directory
            ):
                raise InvalidLocationError(f"{source.location!r} is not {self._describe()}'s")
            location = source.location
        session = object_session(self._instance)
        follow = None if session is None else self._follow(session)
        await self.aget_ref()  # load an expired column before the upload
        plugin = plugin_of(type(self._instance)) if session is not None else None
        claim: UploadClaim | None = None
        if plugin is not None:
            # The plug-in (object ledger) claims the location before any byte is sent.
            policy = manager.get_policy(where["storage_key"])
            claim = await plugin.aclaim_upload(
                self._instance,
                location=location,
                storage_key=policy.storage_key,
                backend=manager.get_backend_for_policy(policy).backend_name,
                reserved=isinstance(source, DirectUpload),
            )
        try:
            if isinstance(source, DirectUpload):
                ref = await manager.acomplete_direct_upload(source)
            else:
                ref = await manager.aput_stream(
                    **where,
                    stream=source,
                    content_type=content_type,
                    original_filename=filename,
                    extra=extra,
                    location=None if claim is None else claim.location,
                )
        except BaseException:
            if claim is not None:
                await claim.aabandon()
            raise
        if session is not None and follow is not None:
            track_upload(session, TrackedObject(manager, ref, *follow, plugin))
        if claim is not None:
            await claim.arecord(ref)
        # From here to the end nothing awaits: what was read is what gets replaced.
        previous = self._current()
        setattr(self._instance, self._spec.ref_attr, ref)
        if previous is not None:
            self._release(previous)
        return ReplaceContentResult(previous_ref=previous, new_ref=ref)

    def _release(self, previous: StoredObjectRef) -> None:
        session = object_session(self._instance)
        if session is None or not previous.has_object:
            return  # no transaction to follow, or nothing stored to release
        plugin = plugin_of(type(self._instance))
        if plugin is not None:
            plugin.watch(session)  # the flush releases the previous ref in the ledger
        manager = self._manager()
        obj = TrackedObject(manager, previous, *self._follow(session), plugin)
        track_release(session, obj, delete_after_commit=self._delete_replaced(manager, previous))

    def _follow(self, session: Session) -> tuple[MetaData, Engine]:
        """Where the rows that may reference this field's objects live."""
        mapper = self._state().mapper
        return metadata_of(mapper), bind_of(session, mapper)

    def _delete_replaced(self, manager: StorageManager, previous: StoredObjectRef) -> bool:
        if self._spec.delete_replaced is not None:
            return self._spec.delete_replaced
        model_choice = getattr(type(self._instance), "__stored_content_delete_replaced__", None)
        if model_choice is not None:
            return bool(model_choice)
        policy = manager.policies.get(previous.storage_key)
        return policy is not None and policy.delete_replaced

    def _current(self) -> StoredObjectRef | None:
        value = self._state().dict.get(self._spec.ref_attr)
        if value is not None and not isinstance(value, StoredObjectRef):
            value = StoredObjectRef.from_dict(value)  # a dict assigned by hand
        return value

    def _manager(self) -> StorageManager:
        return storage_manager_of(type(self._instance))

    def _state(self) -> InstanceState[Any]:
        state: InstanceState[Any] = sa_inspect(self._instance)
        return state

    def _describe(self) -> str:
        return f"{type(self._instance).__name__}.{self._spec.ref_attr}"
