"""Compatibility module: migrations written for granite-storage 0.1.0 import
``granite_storage.alembic_helpers.portable_storage_ref_type``; they keep working.

New code imports it from :mod:`granite_storage`.
"""

from granite_storage.integrations.sqlalchemy.types import (
    portable_storage_ref_type as portable_storage_ref_type,
)

__all__ = ["portable_storage_ref_type"]
