"""StoredContentMixin (one stored field per model, named by class variables)
and stored_content_field (several fields, each with its policy); both run
:class:`~granite_storage.integrations.sqlalchemy.StoredContent`. Examples:
``docs/sqlalchemy.md``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, NoReturn, Self, Unpack, overload

from sqlalchemy import Column, Connection, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, Mapper, QueryContext
from sqlalchemy.orm.attributes import set_committed_value

from granite_storage.contracts import ObjectReader
from granite_storage.direct import DirectUpload
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy._content import (
    FieldSpec,
    ReplaceContentResult,
    StoredContent,
    StoreOptions,
    UploadFileLike,
)
from granite_storage.integrations.sqlalchemy._ledger import ObjectLedger, reserve_direct_uploads
from granite_storage.integrations.sqlalchemy._mapping import (
    MANAGER_ATTRIBUTE,
    PLUGIN_ATTRIBUTE,
    plugin_of,
    storage_manager_of,
)
from granite_storage.integrations.sqlalchemy._mixin_sync import (
    SYNC_MANAGER_ATTRIBUTE,
    BlockingStorageManager,
    SyncContentMethods,
    before_clear,
    split_manager,
)
from granite_storage.integrations.sqlalchemy.types import StoredObjectRefType
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import ByteSource


class StoredContentMixin(SyncContentMethods):
    """Stored content for a SQLAlchemy model, used through an ``AsyncSession``
    (the ``a*`` methods), or through a sync ``Session`` with granite-storage
    0.1.0's blocking methods (``set_content``, ``get_content``, ...; the model
    is then configured with a ``granite_storage.sync.StorageManager``).

    Class variables:

    * ``__stored_content_field_name__``: the ``StoredObjectRefType`` attribute
      the ``*_content`` methods use (its name without leading underscores is
      the field segment of locations);
    * ``__stored_content_storage_key__``: the policy they upload under;
    * ``__stored_content_model_name__``: the model segment of locations
      (default: the table name);
    * ``__stored_content_delete_replaced__``: ``True``/``False`` overrides the
      policy's ``delete_replaced`` for this model; ``None`` (default) defers to it.

    The entity segment of locations is the primary key from the mapper (any
    column name; composite keys are joined with ``_``), so new rows need a
    flush before their first upload. Models with several stored fields use
    :func:`stored_content_field` instead of (or with) the first two variables.

    A new row's ref columns read ``None`` after its first flush. The async
    methods load a ref column that a commit or rollback expired
    (``expire_on_commit=True`` works) and leave it loaded;
    :meth:`clear_content_reference` and ``StoredContent.ref`` do no I/O and
    raise instead. The objects written and replaced follow the session's
    transaction (:func:`drain_pending_deletions` waits for the deletions that
    follow a commit or rollback).

    Methods that need a manager raise
    :class:`~granite_storage.errors.ConfigurationError` until
    :meth:`configure_storage_manager` was called.
    """

    __stored_content_field_name__: ClassVar[str]
    __stored_content_storage_key__: ClassVar[str]
    __stored_content_model_name__: ClassVar[str | None] = None
    __stored_content_delete_replaced__: ClassVar[bool | None] = None

    # -- configuration -----------------------------------------------------------

    @classmethod
    def configure_storage_manager(
        cls,
        manager: StorageManager | BlockingStorageManager,
        *,
        ledger: ObjectLedger | None = None,
    ) -> None:
        """Use ``manager`` for this class and its subclasses (those that do not
        configure their own). Calling it again replaces the manager (and the
        ledger). ``StoredContentMixin.configure_storage_manager(manager)`` sets
        it for every model at once.

        :param manager: a ``granite_storage.StorageManager`` for the async
            methods, or a ``granite_storage.sync.StorageManager`` for the
            blocking ones (the async methods then use its ``async_manager``).

        :param ledger: an :class:`~granite_storage.integrations.sqlalchemy.ObjectLedger`
            to record every upload in (opt-in: strict, listing-free garbage
            collection; see ``docs/ledger.md``). ``None``: plain mode.
        :raises ConfigurationError: if ``manager`` or ``ledger`` has the wrong type.
        """
        async_manager, sync_manager = split_manager(manager)
        if ledger is not None and not isinstance(ledger, ObjectLedger):
            raise ConfigurationError(
                f"configure_storage_manager(ledger=...) takes an ObjectLedger, not "
                f"{type(ledger).__name__}"
            )
        setattr(cls, MANAGER_ATTRIBUTE, async_manager)
        setattr(cls, SYNC_MANAGER_ATTRIBUTE, sync_manager)
        setattr(cls, PLUGIN_ATTRIBUTE, ledger)
        if ledger is not None:  # reserves direct uploads as they are created
            reserve_direct_uploads(async_manager, ledger)
        if not event.contains(cls, "after_insert", _unset_refs_are_null):
            event.listen(cls, "after_insert", _unset_refs_are_null, propagate=True)
        if ledger is not None and not event.contains(cls, "load", _watch_loaded):
            # A session that loads a row of this model follows the ledger from
            # then on, so that deleting or changing the row releases its refs.
            event.listen(cls, "load", _watch_loaded, propagate=True)
            event.listen(cls, "refresh", _watch_refreshed, propagate=True)

    @classmethod
    def get_storage_manager(cls) -> StorageManager:
        """The configured async manager (a sync one's ``async_manager``).

        :raises ConfigurationError: if :meth:`configure_storage_manager` was not called.
        """
        return storage_manager_of(cls)

    @property
    def stored_content(self) -> StoredContent:
        """The field named by ``__stored_content_field_name__``, as a
        :class:`StoredContent` (what the ``*_content`` methods use).

        :raises ConfigurationError: if the class variables are missing.
        """
        cls = type(self)
        ref_attr = getattr(cls, "__stored_content_field_name__", None)
        storage_key = getattr(cls, "__stored_content_storage_key__", None)
        if not ref_attr or not storage_key:
            raise ConfigurationError(
                f"{cls.__name__} must set __stored_content_field_name__ and "
                "__stored_content_storage_key__ to use the *_content methods; for several "
                "stored fields declare each with stored_content_field()"
            )
        spec = FieldSpec(
            ref_attr=ref_attr, storage_key=storage_key, field_name=ref_attr.lstrip("_") or ref_attr
        )
        return StoredContent(self, spec)

    # -- the contract's methods --------------------------------------------------

    async def aset_content(
        self, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef:
        """Store ``content`` in a new object and assign its ref; ``str`` is
        stored as UTF-8 ``text/plain``. ``options``: ``filename``,
        ``content_type``, ``extra`` (:class:`StoreOptions`). See
        :meth:`StoredContent.aset_from_stream` for what is raised and what
        happens to the previous object."""
        return await self.stored_content.aset(content, **options)

    async def aset_content_from_stream(
        self, stream: ByteSource, **options: Unpack[StoreOptions]
    ) -> StoredObjectRef:
        """Stream ``stream`` (anything ``StorageManager.aput_stream`` takes) into
        a new object and assign its ref. See :meth:`StoredContent.aset_from_stream`."""
        return await self.stored_content.aset_from_stream(stream, **options)

    async def aset_content_from_uploadfile(
        self, upload_file: UploadFileLike, *, extra: dict[str, Any] | None = None
    ) -> StoredObjectRef:
        """Store a FastAPI/Starlette ``UploadFile``, read asynchronously from
        its start; its ``filename`` and ``content_type`` go into the ref."""
        return await self.stored_content.aset_from_uploadfile(upload_file, extra=extra)

    async def aattach_direct_upload(self, upload: DirectUpload) -> StoredObjectRef:
        """Complete a direct upload made for this row's field and set its ref
        inside the session's transaction (see ``StoredContent.aattach_direct_upload``)."""
        return await self.stored_content.aattach_direct_upload(upload)

    async def areplace_content(
        self, content: bytes | str, **options: Unpack[StoreOptions]
    ) -> ReplaceContentResult:
        """Like :meth:`aset_content`, returning the previous and the new ref."""
        return await self.stored_content.areplace(content, **options)

    async def aget_content(self, *, verify: bool = False) -> bytes | None:
        """The content, or ``None`` without a ref.

        :raises ObjectNotFoundError: if the ref's object is missing.
        :raises ChecksumMismatchError: with ``verify=True`` on a mismatch.
        """
        return await self.stored_content.aget(verify=verify)

    async def aget_content_text(
        self, encoding: str = "utf-8", *, verify: bool = False
    ) -> str | None:
        """The content decoded with ``encoding``, or ``None`` without a ref.
        Rows migrated from a 0.1.0 text column return their text."""
        return await self.stored_content.aget_text(encoding, verify=verify)

    def aopen_content(self, *, verify: bool = False) -> AbstractAsyncContextManager[ObjectReader]:
        """``async with doc.aopen_content() as reader``: stream the content.

        :raises ObjectNotFoundError: on entering, if there is no ref or its
            object is missing.
        """
        return self.stored_content.aopen(verify=verify)

    def clear_content_reference(self) -> StoredObjectRef | None:
        """Set the ref to ``None`` (no I/O) and return the previous ref. The
        previous object is deleted after the commit only if the policy opts in.

        :raises StorageError: if the ref column is expired (refresh first);
            in a sync ``Session`` it is loaded instead, as any attribute.
        """
        before_clear(self)
        return self.stored_content.clear()


class StoredContentField:
    """A descriptor giving access to one stored field: ``user.avatar`` is a
    :class:`StoredContent` (``aset``, ``aset_from_stream``,
    ``aset_from_uploadfile``, ``areplace``, ``aget``, ``aget_text``, ``aopen``,
    ``clear``, ``ref``). Create it with :func:`stored_content_field`."""

    def __init__(
        self,
        ref_attr: str,
        *,
        storage_key: str,
        field_name: str | None = None,
        delete_replaced: bool | None = None,
    ) -> None:
        self._ref_attr = ref_attr
        self._storage_key = storage_key
        self._field_name = field_name
        self._delete_replaced = delete_replaced
        self._spec: FieldSpec | None = None

    def __set_name__(self, owner: type[Any], name: str) -> None:
        if not issubclass(owner, StoredContentMixin):
            raise ConfigurationError(
                f"{owner.__name__}.{name} is a stored_content_field(), so {owner.__name__} "
                "must inherit from StoredContentMixin (which holds the storage manager)"
            )
        self._spec = FieldSpec(
            ref_attr=self._ref_attr,
            storage_key=self._storage_key,
            field_name=self._field_name or name,
            delete_replaced=self._delete_replaced,
        )

    @property
    def spec(self) -> FieldSpec:
        """The field's configuration."""
        if self._spec is None:
            raise ConfigurationError("stored_content_field() must be assigned in a class body")
        return self._spec

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type[Any]) -> StoredContent: ...

    def __get__(self, instance: object | None, owner: type[Any]) -> Self | StoredContent:
        if instance is None:
            return self
        return StoredContent(instance, self.spec)

    def __set__(self, instance: object, value: object) -> NoReturn:
        raise AttributeError(
            f"assign refs to {self._ref_attr!r}, or store content with "
            "`await obj.<field>.aset(...)`; a stored content field cannot be assigned"
        )


def _watch_loaded(target: object, context: QueryContext) -> None:
    plugin = plugin_of(type(target))
    if plugin is not None and context.session is not None:
        plugin.watch(context.session)


def _watch_refreshed(target: object, context: QueryContext, attrs: object) -> None:
    _watch_loaded(target, context)


def _unset_refs_are_null(mapper: Mapper[Any], connection: Connection, target: object) -> None:
    """After its INSERT, a ref column that was never set is known to be NULL:
    mark it loaded (``None``), so that reading it needs no I/O. SQLAlchemy
    leaves such a column unloaded; one with a server default stays expired."""
    state: InstanceState[Any] = sa_inspect(target)
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if (
            isinstance(column, Column)
            and isinstance(column.type, StoredObjectRefType)
            and column.server_default is None
            and prop.key not in state.dict
            and prop.key not in state.expired_attributes
        ):
            set_committed_value(target, prop.key, None)


def stored_content_field(
    ref_attr: str,
    *,
    storage_key: str,
    field_name: str | None = None,
    delete_replaced: bool | None = None,
) -> StoredContentField:
    """Declare a stored field backed by the ``StoredObjectRefType`` column ``ref_attr``.

    :param ref_attr: the mapped attribute holding the ref.
    :param storage_key: the policy this field uploads under.
    :param field_name: the field segment of locations (default: the
        descriptor's attribute name, e.g. ``"avatar"``).
    :param delete_replaced: delete replaced/cleared objects after the commit;
        ``None`` defers to the model's ``__stored_content_delete_replaced__``,
        then to the policy.

    The model must inherit from :class:`StoredContentMixin`, whose
    ``configure_storage_manager`` gives all its fields their manager.
    """
    return StoredContentField(
        ref_attr, storage_key=storage_key, field_name=field_name, delete_replaced=delete_replaced
    )
