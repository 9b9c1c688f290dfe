"""The seam between stored content and a plug-in that follows its objects.

:class:`ContentPlugin` is what ``configure_storage_manager(manager, ledger=...)``
plugs in (the :class:`~granite_storage.integrations.sqlalchemy.ObjectLedger`
is the one implementation): stored content asks it to follow a session, to
claim each upload's location before the upload, and to delete the objects a
transaction left behind. The session listeners only call these hooks, so they
never know which plug-in, if any, is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session

from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef


@dataclass(frozen=True, eq=False, slots=True)
class TrackedObject:
    """One stored object whose fate depends on a transaction.

    :param manager: the manager that stored it (and deletes it).
    :param ref: its ref.
    :param metadata: where to look for rows that still reference it.
    :param bind: the engine of those rows (a fresh connection is taken from it).
    :param plugin: the model's plug-in, if one is configured: the deletion
        then goes through it.
    """

    manager: StorageManager
    ref: StoredObjectRef
    metadata: MetaData
    bind: Engine
    plugin: ContentPlugin | None = None


class UploadClaim(Protocol):
    """One upload's location, claimed before the upload."""

    @property
    def location(self) -> str: ...

    async def arecord(self, ref: StoredObjectRef) -> None:
        """The upload succeeded: record what was stored."""

    async def aabandon(self) -> None:
        """The upload failed: give the location up. Never raises."""


class ContentPlugin(Protocol):
    """What stored content calls, when a model is configured with a plug-in."""

    def watch(self, session: Session) -> None:
        """Follow ``session`` (no I/O; called again for every row it loads)."""

    async def aclaim_upload(
        self,
        instance: object,
        *,
        location: str,
        storage_key: str,
        backend: str,
        reserved: bool = False,
    ) -> UploadClaim:
        """Claim ``location`` for an upload by ``instance`` (which belongs to a
        session), before any byte is sent; ``reserved``: a direct upload,
        whose location may have been reserved when it was created."""

    async def asweep_tracked(
        self, objects: Sequence[TrackedObject], *, bind: Engine, metadata: MetaData, reason: str
    ) -> None:
        """Delete objects a transaction left behind. Never raises (except
        cancellation): failures are logged."""
