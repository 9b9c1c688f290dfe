"""SQLAlchemy 2 integration: ref columns, the stored-content mixin, files that
follow the transaction, ref iterators for the garbage collector, and the
optional object ledger.

Import every name from here; the modules behind it are private, except
``types`` and ``refs``, which 0.1.0 migrations and older code import.
"""

from granite_storage.errors import LedgerConflictError as LedgerConflictError
from granite_storage.integrations.sqlalchemy._content import FieldSpec as FieldSpec
from granite_storage.integrations.sqlalchemy._content import (
    ReplaceContentResult as ReplaceContentResult,
)
from granite_storage.integrations.sqlalchemy._content import StoredContent as StoredContent
from granite_storage.integrations.sqlalchemy._content import StoreOptions as StoreOptions
from granite_storage.integrations.sqlalchemy._content import UploadFileLike as UploadFileLike
from granite_storage.integrations.sqlalchemy._ledger import ObjectLedger as ObjectLedger
from granite_storage.integrations.sqlalchemy._ledger_gc import (
    LedgerGarbageCollector as LedgerGarbageCollector,
)
from granite_storage.integrations.sqlalchemy._ledger_schema import LedgerState as LedgerState
from granite_storage.integrations.sqlalchemy._ledger_schema import ledger_table as ledger_table
from granite_storage.integrations.sqlalchemy._migrate import ref_rewriter as ref_rewriter
from granite_storage.integrations.sqlalchemy._mixin import (
    StoredContentField as StoredContentField,
)
from granite_storage.integrations.sqlalchemy._mixin import (
    StoredContentMixin as StoredContentMixin,
)
from granite_storage.integrations.sqlalchemy._mixin import (
    stored_content_field as stored_content_field,
)
from granite_storage.integrations.sqlalchemy._tracking import (
    drain_pending_deletions as drain_pending_deletions,
)
from granite_storage.integrations.sqlalchemy.refs import (
    iter_metadata_storage_refs as iter_metadata_storage_refs,
)
from granite_storage.integrations.sqlalchemy.refs import (
    iter_model_storage_refs as iter_model_storage_refs,
)
from granite_storage.integrations.sqlalchemy.refs import (
    select_model_storage_refs as select_model_storage_refs,
)
from granite_storage.integrations.sqlalchemy.types import StorageJSONType as StorageJSONType
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
    "LedgerState",
    "ObjectLedger",
    "ReplaceContentResult",
    "StorageJSONType",
    "StoreOptions",
    "StoredContent",
    "StoredContentField",
    "StoredContentMixin",
    "StoredObjectRefType",
    "UploadFileLike",
    "drain_pending_deletions",
    "iter_metadata_storage_refs",
    "iter_model_storage_refs",
    "ledger_table",
    "portable_storage_ref_type",
    "ref_rewriter",
    "select_model_storage_refs",
    "stored_content_field",
    "stored_ref_columns",
]
