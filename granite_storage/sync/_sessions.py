"""Waiting for what a sync ``Session``'s transactions left to delete."""

from __future__ import annotations

import anyio
from sqlalchemy.orm import Session

from granite_storage._concurrency import check_no_running_loop
from granite_storage.integrations import sqlalchemy


def drain_pending_deletions(session: Session) -> None:
    """Wait until the deletions that followed ``session``'s past commits and
    rollbacks end: the blocking twin of
    ``granite_storage.integrations.sqlalchemy.drain_pending_deletions``.

    Those deletions run on the loop of the model's sync manager, in the
    background; call this where a deterministic end matters (tests, a task
    before it returns, a script before it closes the manager, which would
    cancel them). Never raises the deletions' errors (they are logged).
    """
    check_no_running_loop(
        "drain_pending_deletions",
        "await granite_storage.integrations.sqlalchemy.drain_pending_deletions(session)",
    )
    anyio.run(sqlalchemy.drain_pending_deletions, session)
