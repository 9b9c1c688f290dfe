"""Copy a policy's objects to another backend, verified and resumable.

:func:`amigrate` reads every ref of the policy from a reference source (the
garbage collector's), and for each ref that does not name the target yet:

1. copies the object from the backend the ref resolves to onto the target,
   streaming, at the same location; a copy whose sha256 (as the target
   stored it) differs from the ref's is deleted from the target and reported;
   an object already on the target when the run started (an interrupted
   run; the target is listed once) is read back and verified instead of
   copied again;
2. hands the verified refs, a small batch at a time, to a :data:`RefRewriter`
   that makes their ``backend`` name the target's key in the database (the
   SQLAlchemy integration's ``ref_rewriter``). Each ref then resolves to the
   target (see ``StorageManager.get_backend_for_ref``). Where the database
   refuses writes while the references are read (SQLite without WAL), the
   rewrites wait until the source is exhausted.

The checkpoint is the database itself: a rerun skips every ref that names
the target already. The source is never deleted; a missing source is
reported, never fatal. The same run is the ``granite-storage migrate``
command and the ARQ job ``migrate_objects``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio

from granite_storage._concurrency import aclose_quietly, aiter_in_thread
from granite_storage.contracts import StorageBackend
from granite_storage.errors import ConfigurationError, ObjectNotFoundError
from granite_storage.manager import StorageManager
from granite_storage.refs import StoredObjectRef
from granite_storage.streams import Sha256Digest

__all__ = ["MigrationProgress", "MigrationReport", "RefRewriter", "amigrate"]

logger = logging.getLogger("granite_storage.migrate")

#: ``rewrite(refs, target_key)``: make every row holding one of ``refs``
#: (same storage key, backend and location) name ``target_key`` instead, in
#: one transaction; returns how many rows changed.
RefRewriter: TypeAlias = Callable[[Sequence[StoredObjectRef], str], Awaitable[int]]

#: Refs rewritten per transaction.
REWRITE_BATCH = 100


@dataclass(slots=True)
class MigrationReport:
    """What a migration did (or, with ``dry_run``, would do)."""

    storage_key: str
    target: str
    dry_run: bool
    #: Objects copied to the target (``dry_run``: to copy).
    copied: int = 0
    #: Objects found on the target already and verified, not copied again.
    verified: int = 0
    #: Refs that needed nothing: naming the target already, or inline text.
    skipped: int = 0
    #: Database rows whose ref now names the target.
    rewritten: int = 0
    #: Bytes copied (``dry_run``: to copy).
    bytes: int = 0
    #: Reasons by location: a missing source, a checksum mismatch, an error.
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every ref of the policy now names the target (or would)."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage_key": self.storage_key,
            "target": self.target,
            "dry_run": self.dry_run,
            "copied": self.copied,
            "verified": self.verified,
            "skipped": self.skipped,
            "rewritten": self.rewritten,
            "bytes": self.bytes,
            "failed": dict(self.failed),
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        lines = [
            f"migration of {self.storage_key!r} to {self.target!r}: {verb} {self.copied} "
            f"objects ({self.bytes} bytes), verified {self.verified} already there, "
            f"skipped {self.skipped}, rewrote {self.rewritten} refs, failed {len(self.failed)}, "
            f"in {self.seconds:.1f}s"
        ]
        lines += [f"  failed {location}: {reason}" for location, reason in self.failed.items()]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """A snapshot handed to the progress callback after each ref."""

    refs_seen: int
    copied: int
    failed: int
    bytes: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"migrate: {self.refs_seen} refs seen, {self.copied} copied "
            f"({self.bytes} bytes), {self.failed} failed, {self.seconds:.0f}s"
        )


async def amigrate(
    manager: StorageManager,
    iter_references: Callable[[], AsyncIterable[StoredObjectRef | None] | Any],
    rewrite: RefRewriter,
    *,
    storage_key: str,
    to: str,
    dry_run: bool = False,
    concurrency: int = 4,
    progress: Callable[[MigrationProgress], object] | None = None,
) -> MigrationReport:
    """Move the objects of policy ``storage_key`` to the backend registered
    as ``to`` (see the module documentation).

    :param iter_references: the garbage collector's reference source.
    :param rewrite: rewrites refs in the database (``ref_rewriter`` of the
        SQLAlchemy integration).
    :param concurrency: objects copied at once.
    :param progress: called with a :class:`MigrationProgress` after each ref.
    :raises ConfigurationError: for an unknown storage key or backend, or a
        target key that refs could not name unambiguously.
    """
    target = _check_target(manager, storage_key, to)
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    run = _Run(manager, rewrite, target, MigrationReport(storage_key, to, dry_run), progress)
    if not dry_run:  # what an interrupted run left there: one listing, not a request per ref
        prefix = manager.get_policy(storage_key).key_prefix
        run.on_target = {hash(info.location) async for info in target.aiter_objects(prefix)}
    send, receive = anyio.create_memory_object_stream[StoredObjectRef](concurrency)
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(run.awork, receive.clone())
        receive.close()
        with send:
            async for ref in _aiter_source(iter_references):
                if ref is not None and ref.storage_key == storage_key:
                    await send.send(ref)
    await run.aflush(final=True)
    run.report.seconds = time.monotonic() - run.started
    logger.info("%s", run.report)
    return run.report


def _check_target(manager: StorageManager, storage_key: str, to: str) -> StorageBackend:
    own = manager.get_backend_for_policy(manager.get_policy(storage_key))
    if to not in manager.backends:
        raise ConfigurationError(
            f"unknown target backend {to!r}; the manager's backends are {sorted(manager.backends)}"
        )
    target = manager.backends[to]
    if to == own.backend_name and target is not own:
        raise ConfigurationError(
            f"target key {to!r} is also the backend_name of policy {storage_key!r}'s backend, "
            "so refs naming it would still resolve to the policy's backend; register the "
            "target under another key"
        )
    return target


async def _aiter_source(source: Callable[[], Any]) -> AsyncIterator[StoredObjectRef | None]:
    iterable = source()
    if isinstance(iterable, AsyncIterable):
        iterator = aiter(iterable)
        try:
            async for ref in iterator:
                yield ref
        finally:
            await aclose_quietly(iterator)
    else:
        async for ref in aiter_in_thread(iter(iterable)):
            yield ref


class _Run:
    """The state one migration's workers share."""

    def __init__(
        self,
        manager: StorageManager,
        rewrite: RefRewriter,
        target: StorageBackend,
        report: MigrationReport,
        progress: Callable[[MigrationProgress], object] | None,
    ) -> None:
        self.manager, self.rewrite, self.target, self.report = manager, rewrite, target, report
        self.progress = progress
        self.started = time.monotonic()
        self.seen = 0
        self.pending: list[StoredObjectRef] = []
        self.deferred = False
        #: ``hash()`` of every location on the target when the run started.
        self.on_target: set[int] = set()
        self.db_lock = anyio.Lock()

    async def awork(self, refs: Any) -> None:
        async with refs:
            async for ref in refs:
                await self._amove(ref)
                self.seen += 1
                if self.progress is not None:
                    r = self.report
                    elapsed = time.monotonic() - self.started
                    self.progress(
                        MigrationProgress(self.seen, r.copied, len(r.failed), r.bytes, elapsed)
                    )

    async def _amove(self, ref: StoredObjectRef) -> None:
        report = self.report
        if ref.backend == report.target or not ref.has_object:
            report.skipped += 1
            return
        try:
            source = self.manager.get_backend_for_ref(ref)
            if source is not self.target:
                if report.dry_run:
                    report.copied += 1
                    report.bytes += ref.size
                    return
                await self._acopy(source, ref)
        except ObjectNotFoundError:
            report.failed[ref.location] = "the source object is missing"
            return
        except Exception as exc:  # reported per object; the run goes on
            report.failed[ref.location] = f"{type(exc).__name__}: {exc}"
            return
        if not report.dry_run:
            self.pending.append(ref)
            if len(self.pending) >= REWRITE_BATCH:
                await self.aflush()

    async def _acopy(self, source: StorageBackend, ref: StoredObjectRef) -> None:
        if not ref.checksum:
            raise ValueError("the ref has no checksum to verify a copy against")
        if hash(ref.location) in self.on_target and await self.target.aexists(ref):
            if await _achecksum(self.target, ref) == ref.checksum:
                self.report.verified += 1
                return
            logger.warning("granite_storage: %s differs on the target; copying it again", ref)
        async with source.aopen(ref) as reader:
            result = await self.target.aput_stream(
                key=ref.location, chunks=aiter(reader), content_type=ref.content_type
            )
        if result.checksum != ref.checksum:
            with anyio.CancelScope(shield=True):
                await self.target.adelete(ref)
            raise ValueError(
                f"the copy's checksum {result.checksum} differs from the ref's {ref.checksum}; "
                "the copy was removed from the target"
            )
        self.report.copied += 1
        self.report.bytes += result.size

    async def aflush(self, *, final: bool = False) -> None:
        """Rewrite the pending refs, :data:`REWRITE_BATCH` per transaction.

        A failure while the source is still read defers every rewrite to the
        end (``final``): SQLite without WAL refuses writes while a reader's
        cursor is open. A failure at the end is reported per ref; their copies
        are verified, not copied again, by a rerun.
        """
        async with self.db_lock:
            while self.pending and (final or not self.deferred):
                batch = self.pending[:REWRITE_BATCH]
                try:
                    self.report.rewritten += await self.rewrite(batch, self.report.target)
                except Exception as exc:
                    if not final:
                        logger.warning(
                            "granite_storage: rewriting refs failed while the references are "
                            "read (%s: %s); the rewrites wait until all are read",
                            type(exc).__name__,
                            exc,
                        )
                        self.deferred = True
                        return
                    for ref in batch:
                        self.report.failed[ref.location] = (
                            f"copied, but rewriting its ref failed: {type(exc).__name__}: {exc}"
                        )
                del self.pending[: len(batch)]


async def _achecksum(backend: StorageBackend, ref: StoredObjectRef) -> str:
    digest = Sha256Digest()
    async with backend.aopen(ref) as reader:
        async for chunk in reader:
            await digest.aupdate(chunk)
    return digest.checksum
