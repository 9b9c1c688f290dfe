"""Deleting a batch and counting it, one way for every collector: the report's
counters after a batch delete, the deletion cap, and the warnings a failed
batch logs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from granite_storage.contracts import BatchDeleteResult
from granite_storage.gc._report import GarbageCollectionReport

logger = logging.getLogger("granite_storage.gc")

#: Deletes a batch of locations (``backend.adelete_many``, or the object
#: ledger's: win each location first, then delete).
DeleteBatch = Callable[[list[str]], Awaitable[BatchDeleteResult]]


async def adelete_counted(
    report: GarbageCollectionReport, delete: DeleteBatch, sizes: Mapping[str, int | None]
) -> list[str]:
    """Delete the locations of ``sizes`` (location -> listed size) with ``delete``
    and count the outcome in ``report``.

    A batch that raises is counted, not raised: one failed batch must not stop
    the run. Locations ``delete`` neither deleted nor reported failed count as
    ``skipped_in_use`` (the ledger kept them: a transaction holds them).

    :returns: the locations deleted.
    """
    try:
        result = await delete(list(sizes))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        for location in sizes:
            report.add_failure(location, reason)
        logger.warning("deleting a batch of %d objects failed: %s", len(sizes), reason)
        return []
    for location in result.deleted:
        report.deleted += 1
        report.bytes_freed += sizes.get(location) or 0
    for location, reason in result.failed.items():
        report.add_failure(location, reason)
    report.skipped_in_use += max(0, len(sizes) - len(result.deleted) - len(result.failed))
    if result.failed:
        location, reason = next(iter(result.failed.items()))
        logger.warning(
            "could not delete %d of %d objects, e.g. %r: %s",
            len(result.failed),
            len(sizes),
            location,
            reason,
        )
    return result.deleted


def stop_at_cap(report: GarbageCollectionReport, cap: int) -> None:
    """Mark ``report`` as stopped early by the ``max_deletions`` cap."""
    report.stopped_early = True
    report.stop_reason = f"reached max_deletions={cap}; more orphans remain"
