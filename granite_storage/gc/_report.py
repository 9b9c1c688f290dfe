"""What a garbage collection found and did: the report and the progress snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal

#: How many ``(location, reason)`` pairs a report keeps; ``failed`` counts them all.
MAX_FAILURES_KEPT = 100
#: How many orphan locations a dry run lists in :attr:`GarbageCollectionReport.orphan_sample`.
ORPHAN_SAMPLE_SIZE = 20

#: The step a collection is in: reading references, streaming the listing
#: against them (and deleting), removing leftovers, finished.
Phase = Literal["references", "sweep", "leftovers", "done"]


@dataclass(slots=True)
class GarbageCollectionReport:
    """The outcome of one :meth:`StorageGarbageCollector.acollect` run.

    The first four counters keep their meaning from granite-storage 0.1.0:

    * ``scanned``: objects listed under the policy's key prefix;
    * ``referenced``: references of this policy (``storage_key``) that the
      reference source yielded (``None`` and other policies' refs excluded);
    * ``orphaned``: scanned objects that no reference points at;
    * ``deleted``: orphans actually deleted (always 0 in a dry run).

    The rest is what this version learns on the way. Orphans split into
    ``skipped_too_young`` (younger than the minimum age: kept) and
    ``eligible`` (old enough: deleted, failed, or in a dry run "would be
    deleted"). In a run that was not stopped early,
    ``orphaned == skipped_too_young + eligible`` and, unless it was a dry run,
    ``eligible == deleted + failed + skipped_in_use`` (a leftover cleanup
    that fails also counts one failure; ``skipped_in_use`` is 0 except for
    the object ledger's strict collections, see
    ``granite_storage.integrations.sqlalchemy.LedgerGarbageCollector``).
    """

    scanned: int = 0
    referenced: int = 0
    orphaned: int = 0
    deleted: int = 0
    #: The policy collected, and its key prefix (``None``: the whole backend).
    storage_key: str = ""
    key_prefix: str | None = None
    dry_run: bool = True
    #: The grace period, and the cutoff fixed from it before references were read.
    min_age: timedelta = timedelta(0)
    cutoff: datetime | None = None
    #: Every ref or ``None`` the reference source yielded, whatever its policy.
    references_read: int = 0
    #: Orphans younger than the minimum age (at the backend's timestamp resolution): kept.
    skipped_too_young: int = 0
    #: Orphans old enough to delete (deleted, failed or, in a dry run, to be deleted).
    eligible: int = 0
    #: Deletions that failed; the first :data:`MAX_FAILURES_KEPT` are in ``failures``.
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Orphans a strict (ledger) collection did not delete because a
    #: transaction held them or a reference appeared: kept, retried next run.
    skipped_in_use: int = 0
    #: The sizes of the objects deleted (listing sizes), in bytes.
    bytes_freed: int = 0
    #: Temporary files or multipart uploads removed (or, in a dry run, found).
    leftovers_removed: int = 0
    #: Wall-clock seconds the run took.
    duration: float = 0.0
    #: ``True`` when the run ended before the whole listing was processed;
    #: ``stop_reason`` says why (the ``max_deletions`` cap).
    stopped_early: bool = False
    stop_reason: str | None = None
    #: In a dry run, the first :data:`ORPHAN_SAMPLE_SIZE` orphans that would be deleted.
    orphan_sample: list[str] = field(default_factory=list)

    def add_failure(self, location: str, reason: str) -> None:
        """Count one failed deletion, keeping the first few reasons."""
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((location, reason))

    @property
    def ok(self) -> bool:
        """``True`` when nothing failed."""
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-compatible values (for job results and ``--json``):
        every field, with ``min_age`` as ``min_age_seconds`` and ``cutoff`` in ISO 8601."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["min_age_seconds"] = data.pop("min_age").total_seconds()
        data["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        data["failures"] = [[location, reason] for location, reason in self.failures]
        data["orphan_sample"] = list(self.orphan_sample)
        return data

    def __str__(self) -> str:
        prefix = repr(self.key_prefix) if self.key_prefix else "(none: the whole backend)"
        if self.dry_run:
            title = f"Garbage collection of {self.storage_key!r}: dry run, nothing was deleted"
            deleted = f"0 ({self.eligible:,} would be deleted; run with deletion to remove them)"
            leftovers = f"{self.leftovers_removed:,} found (would be removed)"
        else:
            title = f"Garbage collection of {self.storage_key!r}"
            deleted = f"{self.deleted:,} ({_human_bytes(self.bytes_freed)} freed)"
            leftovers = f"{self.leftovers_removed:,} removed"
        lines = [
            title,
            f"  key prefix         {prefix}",
            f"  scanned            {self.scanned:,} objects",
            f"  referenced         {self.referenced:,} refs of this policy "
            f"({self.references_read:,} read in all)",
            f"  orphaned           {self.orphaned:,} "
            f"({self.skipped_too_young:,} younger than {_human_duration(self.min_age)}, kept)",
            f"  deleted            {deleted}",
            f"  failed             {self.failed:,}",
            *(
                [f"  in use             {self.skipped_in_use:,} (kept: a transaction holds them)"]
                if self.skipped_in_use
                else []
            ),
            f"  leftovers          {leftovers}",
            f"  duration           {self.duration:.2f} s",
        ]
        if self.stopped_early:
            lines.append(f"  stopped early      {self.stop_reason}")
        if self.failures:
            more = self.failed - len(self.failures)
            lines.append("  failures:")
            lines.extend(f"    {location}: {reason}" for location, reason in self.failures)
            if more > 0:
                lines.append(f"    ... and {more:,} more")
        if self.orphan_sample:
            lines.append(f"  orphans (first {len(self.orphan_sample)}):")
            lines.extend(f"    {location}" for location in self.orphan_sample)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class GarbageCollectionProgress:
    """A snapshot passed to the collector's ``progress`` callback."""

    storage_key: str
    phase: Phase
    references_read: int
    scanned: int
    orphaned: int
    deleted: int
    failed: int
    #: Seconds since the run started.
    elapsed: float

    def __str__(self) -> str:
        return (
            f"gc {self.storage_key}: {self.phase}: {self.references_read:,} refs read, "
            f"{self.scanned:,} scanned, {self.orphaned:,} orphans, {self.deleted:,} deleted, "
            f"{self.failed:,} failed ({self.elapsed:.1f} s)"
        )


def _human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size:,} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _human_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds != delta.total_seconds() or seconds < 60:
        return f"{delta.total_seconds():g} s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
