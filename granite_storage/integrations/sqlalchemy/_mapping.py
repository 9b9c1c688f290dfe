"""What stored content needs to know about a mapped class: its configuration
(manager, plug-in) and facts read from the mapper, without I/O."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper, Session

from granite_storage.errors import ConfigurationError, StorageError
from granite_storage.integrations.sqlalchemy._plugin import ContentPlugin
from granite_storage.integrations.sqlalchemy.types import StoredObjectRefType
from granite_storage.locations import sanitize_segment
from granite_storage.manager import StorageManager

#: The class attribute ``configure_storage_manager`` sets.
MANAGER_ATTRIBUTE = "__granite_storage_manager__"
#: The class attribute holding the plug-in, the object ledger (``None``: plain mode).
PLUGIN_ATTRIBUTE = "__granite_storage_ledger__"


def storage_manager_of(cls: type[Any]) -> StorageManager:
    """The manager ``cls.configure_storage_manager`` set (inherited from a base class).

    :raises ConfigurationError: if none was configured.
    """
    manager = getattr(cls, MANAGER_ATTRIBUTE, None)
    if not isinstance(manager, StorageManager):
        raise ConfigurationError(
            f"{cls.__name__} has no storage manager: call "
            f"{cls.__name__}.configure_storage_manager(manager) at application startup "
            "(or StoredContentMixin.configure_storage_manager(manager) for every model) "
            "before using its stored content"
        )
    return manager


def plugin_of(cls: type[Any]) -> ContentPlugin | None:
    """The plug-in (object ledger) ``cls.configure_storage_manager`` set, or ``None``."""
    plugin: ContentPlugin | None = getattr(cls, PLUGIN_ATTRIBUTE, None)
    return plugin


def entity_id_of(state: InstanceState[Any]) -> object:
    """The entity segment of new locations: the primary key from the mapper.

    The identity of a persistent object, else the primary key attributes as
    set; a composite key becomes its sanitised parts joined with ``_``.

    :raises StorageError: if a primary key value is still ``None`` (not flushed).
    """
    mapper = state.mapper
    keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
    values: tuple[Any, ...]
    if state.identity is not None:
        values = tuple(state.identity)
    else:
        values = tuple(state.dict.get(key) for key in keys)
    if not values or any(value is None for value in values):
        raise StorageError(
            f"{mapper.class_.__name__} must have an id (its primary key, {', '.join(keys)}) "
            "before it stores content, which is filed under it: add the object to the session and "
            "`await session.flush()` first (or set the primary key yourself)"
        )
    if len(values) == 1:
        return values[0]
    return "_".join(sanitize_segment(value, what="primary key part") for value in values)


def model_name_of(mapper: Mapper[Any]) -> str:
    """The model segment of new locations: ``__stored_content_model_name__``,
    else the table name."""
    override = getattr(mapper.class_, "__stored_content_model_name__", None)
    if override:
        return str(override)
    name = getattr(mapper.local_table, "name", None)
    return str(name) if name else mapper.class_.__name__.lower()


def metadata_of(mapper: Mapper[Any]) -> MetaData:
    """The ``MetaData`` whose ref columns are checked before a deletion.

    :raises ConfigurationError: if the class is not mapped to a ``Table``.
    """
    metadata = getattr(mapper.local_table, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"{mapper.class_.__name__} is not mapped to a Table, so its stored content "
            "cannot be tracked"
        )
    return metadata


def bind_of(session: Session, mapper: Mapper[Any]) -> Engine:
    """The engine the session uses for ``mapper`` (a connection's engine)."""
    bind = session.get_bind(mapper=mapper)
    return bind.engine if isinstance(bind, Connection) else bind


def check_ref_column(mapper: Mapper[Any], attr: str) -> None:
    """:raises ConfigurationError: unless ``attr`` is a mapped ``StoredObjectRefType`` column."""
    prop = mapper.attrs.get(attr)
    columns = prop.columns if isinstance(prop, ColumnProperty) else []
    if not columns or not isinstance(columns[0].type, StoredObjectRefType):
        raise ConfigurationError(
            f"{mapper.class_.__name__}.{attr} must be a mapped column of type "
            "StoredObjectRefType() to hold stored content"
        )
