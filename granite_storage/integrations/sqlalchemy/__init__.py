"""SQLAlchemy 2 integration: ref columns, the stored-content mixin, files that
follow the transaction, ref iterators for the garbage collector, and the
optional object ledger."""

from granite_storage.integrations.sqlalchemy._ledger_gc import (
    LedgerGarbageCollector as LedgerGarbageCollector,
)
from granite_storage.integrations.sqlalchemy.content import (
    FieldSpec as FieldSpec,
)
from granite_storage.integrations.sqlalchemy.content import (
    ReplaceContentResult as ReplaceContentResult,
)
from granite_storage.integrations.sqlalchemy.content import (
    StoredContent as StoredContent,
)
from granite_storage.integrations.sqlalchemy.content import (
    UploadFileLike as UploadFileLike,
)
from granite_storage.integrations.sqlalchemy.events import (
    drain_pending_deletions as drain_pending_deletions,
)
from granite_storage.integrations.sqlalchemy.ledger import (
    LedgerConflictError as LedgerConflictError,
)
from granite_storage.integrations.sqlalchemy.ledger import (
    ObjectLedger as ObjectLedger,
)
from granite_storage.integrations.sqlalchemy.mixin import (
    StoredContentField as StoredContentField,
)
from granite_storage.integrations.sqlalchemy.mixin import (
    StoredContentMixin as StoredContentMixin,
)
from granite_storage.integrations.sqlalchemy.mixin import (
    stored_content_field as stored_content_field,
)
from granite_storage.integrations.sqlalchemy.refs import (
    iter_metadata_storage_refs as iter_metadata_storage_refs,
)
from granite_storage.integrations.sqlalchemy.refs import (
    iter_model_storage_refs as iter_model_storage_refs,
)
from granite_storage.integrations.sqlalchemy.types import (
    StorageJSONType as StorageJSONType,
)
from granite_storage.integrations.sqlalchemy.types import (
    StoredObjectRefType as StoredObjectRefType,
)
from granite_storage.integrations.sqlalchemy.types import (
    portable_storage_ref_type as portable_storage_ref_type,
)
from granite_storage.integrations.sqlalchemy.types import (
    stored_ref_columns as stored_ref_columns,
)

__all__ = [
    "FieldSpec",
    "LedgerConflictError",
    "LedgerGarbageCollector",
    "ObjectLedger",
    "ReplaceContentResult",
    "StorageJSONType",
    "StoredContent",
    "StoredContentField",
    "StoredContentMixin",
    "StoredObjectRefType",
    "UploadFileLike",
    "drain_pending_deletions",
    "iter_metadata_storage_refs",
    "iter_model_storage_refs",
    "portable_storage_ref_type",
    "stored_content_field",
    "stored_ref_columns",
]
