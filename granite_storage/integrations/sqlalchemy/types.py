"""Column types for stored object refs: JSON everywhere, JSONB on PostgreSQL.

``StoredObjectRefType`` is the column type models use; ``StorageJSONType`` is
the same storage for plain JSON dicts (what granite-storage 0.1.0 exported);
``portable_storage_ref_type()`` is the plain SQLAlchemy type to write in
Alembic migrations, which renders the same DDL without importing this module.

Change tracking: a :class:`~granite_storage.refs.StoredObjectRef` is a frozen
dataclass, so the only way to change the ref of a row is to assign a new ref
(``doc.file_ref = ref.replace(content_type="text/plain")``). Assignment always
marks the column dirty, and the flush writes it whenever the new ref differs
from the loaded one. Do not mutate ``ref.extra`` in place: the ORM cannot see
such a change and it would be lost; assign ``ref.replace(extra={...})``.

``None`` is stored as SQL ``NULL`` (not the JSON ``null`` literal), so
``column IS NULL`` finds the rows without content. Rows holding JSON ``null``
(written by 0.1.0's plain JSON type) load as ``None`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, Column, MetaData
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from granite_storage.errors import StorageError
from granite_storage.refs import StoredObjectRef

__all__ = [
    "StorageJSONType",
    "StoredObjectRefType",
    "portable_storage_ref_type",
    "stored_ref_columns",
]


def portable_storage_ref_type() -> TypeEngine[Any]:
    """The column type to use for a ref column in an Alembic migration.

    ``JSON`` on every database and ``JSONB`` on PostgreSQL, with ``None`` as
    SQL ``NULL``: the same DDL as :class:`StoredObjectRefType`, built only from
    SQLAlchemy's own types, so a migration file keeps working whatever
    happens to this library's classes later::

        op.add_column("document", sa.Column("file_ref", portable_storage_ref_type()))
    """
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class StorageJSONType(TypeDecorator[Any]):
    """A JSON column: ``JSONB`` on PostgreSQL, ``JSON`` elsewhere.

    Holds any JSON-serialisable value; ``None`` is stored as SQL ``NULL``.
    JSON path expressions work on it as on ``sqlalchemy.JSON``
    (``column["location"].as_string()``). Use it as ``StorageJSONType()`` or,
    as with 0.1.0, as ``StorageJSONType``.
    """

    impl = JSON
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(none_as_null=True)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


class StoredObjectRefType(StorageJSONType):
    """A column that holds a :class:`~granite_storage.refs.StoredObjectRef`.

    Stores the ref's :meth:`~granite_storage.refs.StoredObjectRef.to_dict` as
    JSON (JSONB on PostgreSQL) and loads it back with
    :meth:`~granite_storage.refs.StoredObjectRef.from_dict`, which also reads
    every row granite-storage 0.1.0 wrote, including the
    ``{"legacy_inline_text": ...}`` rows of its text-to-ref migration.

    Bind values may be a ``StoredObjectRef``, a dict in the ref's shape
    (validated and normalised) or ``None``. Two refs compare equal when all
    their fields are equal; the ORM uses that to skip writing an unchanged
    ref. Assigning a new ref always marks the column dirty (refs are frozen:
    see the module documentation).

    Loading a value that is not a JSON object raises
    :class:`~granite_storage.errors.StorageError` (wrapped by SQLAlchemy).
    Binding anything other than a ref, a mapping or ``None`` raises
    :class:`~granite_storage.errors.StorageError` as well.
    """

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, StoredObjectRef):
            return value.to_dict()
        if isinstance(value, Mapping):
            return StoredObjectRef.from_dict(value).to_dict()
        raise StorageError(
            "a StoredObjectRefType column takes a StoredObjectRef, a dict in its shape or "
            f"None, not {type(value).__name__}"
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> StoredObjectRef | None:
        if value is None:
            return None
        return StoredObjectRef.from_dict(value)

    def compare_values(self, x: Any, y: Any) -> bool:
        """Whether two refs are equal (every field); used by the ORM's flush."""
        return bool(x == y)


def stored_ref_columns(metadata: MetaData) -> list[Column[Any]]:
    """Every column under ``metadata`` whose type is :class:`StoredObjectRefType`,
    in a stable order (tables sorted by name, then column order)."""
    return [
        column
        for _, table in sorted(metadata.tables.items())
        for column in table.columns
        if isinstance(column.type, StoredObjectRefType)
    ]
