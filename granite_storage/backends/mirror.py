"""A backend that writes every object to several backends and reads with fallback.

Used to move a policy between backends without downtime (see "Moving
between backends"): new writes land on the old and the new backend while
``granite-storage migrate`` copies the history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from granite_storage.contracts import (
    BatchDeleteResult,
    InUse,
    ObjectInfo,
    ObjectReader,
    PresignedUpload,
    PutResult,
    StorageBackend,
)
from granite_storage.errors import BackendError, ObjectNotFoundError, OperationNotSupportedError
from granite_storage.refs import StoredObjectRef

__all__ = ["MirrorBackend"]

logger = logging.getLogger("granite_storage.mirror")


class MirrorBackend(StorageBackend):
    """Writes to ``primary`` and every mirror; reads from ``primary``.

    - A write streams its source once: each chunk is handed to every backend
      through a memory stream of :attr:`buffer_chunks` chunks, so memory stays
      bounded (the slowest backend sets the pace) and no upload is buffered
      whole. It is all or nothing across backends: if the source or any
      backend fails, nothing remains on any of them.
    - A read comes from ``primary``; an object missing there is read from the
      first mirror that has it, with a warning on the ``granite_storage.mirror``
      logger.
    - Deletions go to every backend; a location counts as deleted once it is
      gone from all of them.
    - Listings are ``primary``'s (the garbage collector never sees an object
      that exists only on a mirror, so it never deletes one); leftovers are
      cleaned on every backend. Presigned downloads come from ``primary``;
      presigned uploads are refused, since they would reach ``primary`` only.
    """

    backend_name = "mirror"
    #: Chunks buffered per backend while a slower one catches up.
    buffer_chunks = 2

    def __init__(self, primary: StorageBackend, *mirrors: StorageBackend) -> None:
        if not mirrors:
            raise ValueError("MirrorBackend needs at least one mirror besides the primary")
        self.primary = primary
        self.mirrors = mirrors
        self.backends = (primary, *mirrors)
        self.timestamp_resolution = max(b.timestamp_resolution for b in self.backends)
        self.delete_batch_size = max(b.delete_batch_size for b in self.backends)
        self.delete_concurrency = min(b.delete_concurrency for b in self.backends)

    @property
    def stores(self) -> tuple[StorageBackend, ...]:
        return tuple(store for backend in self.backends for store in backend.stores)

    def __repr__(self) -> str:
        return f"MirrorBackend({', '.join(map(repr, self.backends))})"

    # -- writes -----------------------------------------------------------------

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        results: dict[int, PutResult] = {}
        source_error: BaseException | None = None
        pairs = [
            anyio.create_memory_object_stream[bytes](self.buffer_chunks) for _ in self.backends
        ]

        async def put_one(index: int, receive: MemoryObjectReceiveStream[bytes]) -> None:
            with receive:
                results[index] = await self.backends[index].aput_stream(
                    key=location, chunks=receive, content_type=content_type
                )

        try:
            async with anyio.create_task_group() as tg:
                for index, (_, receive) in enumerate(pairs):
                    tg.start_soon(put_one, index, receive)
                sends = [send for send, _ in pairs]
                try:
                    await _fan_out(chunks, sends)
                except Exception as exc:  # the source's error: every backend drops its write
                    source_error = exc
                    tg.cancel_scope.cancel()
                else:
                    for send in sends:
                        send.close()  # the end of the object: each backend commits
            if source_error is not None:
                raise source_error
            first = results[0]
            if any((r.size, r.checksum) != (first.size, first.checksum) for r in results.values()):
                raise BackendError(
                    f"the mirrors of {location} stored different bytes: "
                    f"{[(r.size, r.checksum) for r in results.values()]}"
                )
            return first
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._aundo(location, list(results))
            if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None
            raise
        finally:
            for send, receive in pairs:
                send.close()
                receive.close()

    async def _aundo(self, location: str, done: list[int]) -> None:
        """Delete the copies that completed before another backend failed."""
        for index in done:
            try:
                await self.backends[index].adelete(_probe(location))
            except Exception:
                logger.exception(
                    "granite_storage: could not remove %s from %r after a failed mirrored "
                    "write; the garbage collector will",
                    location,
                    self.backends[index],
                )

    # -- reads --------------------------------------------------------------------

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[ObjectReader]:
        async with AsyncExitStack() as stack:
            missing: ObjectNotFoundError | None = None
            for backend in self.backends:
                try:
                    reader = await stack.enter_async_context(
                        backend.aopen(_probe(location), start=start, end=end)
                    )
                except ObjectNotFoundError as exc:
                    missing = missing or exc
                    continue
                if backend is not self.primary:
                    logger.warning(
                        "granite_storage: %s is missing on the primary %r; read from mirror %r",
                        location,
                        self.primary,
                        backend,
                    )
                break
            else:
                assert missing is not None
                raise missing
            yield reader

    async def _aexists(self, location: str) -> bool:
        for backend in self.backends:
            if await backend.aexists(_probe(location)):
                return True
        return False

    def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        return self.primary.aiter_objects(prefix)

    # -- deletions ----------------------------------------------------------------

    async def _adelete(self, location: str) -> None:
        errors: list[Exception] = []
        for backend in self.backends:
            try:
                await backend.adelete(_probe(location))
            except Exception as exc:  # the others are still deleted
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        result = BatchDeleteResult()
        for backend in self.backends:
            done = await backend.adelete_many(locations)
            for location, reason in done.failed.items():
                result.failed.setdefault(location, f"{backend!r}: {reason}")
        result.deleted.extend(loc for loc in locations if loc not in result.failed)
        return result

    async def _acleanup_leftovers(
        self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
    ) -> int:
        total = 0
        for backend in self.backends:
            total += await backend.acleanup_leftovers(
                older_than=older_than, dry_run=dry_run, prefix=prefix, in_use=in_use
            )
        return total

    # -- presigning and lifecycle ---------------------------------------------------

    async def _apresign_download(
        self, location: str, *, expires_in: int, content_disposition: str | None
    ) -> str:
        return await self.primary.apresigned_download_url(
            _probe(location), expires_in=expires_in, content_disposition=content_disposition
        )

    async def _apresign_upload(
        self, location: str, *, max_size: int | None, content_type: str | None, expires_in: int
    ) -> PresignedUpload:
        raise OperationNotSupportedError(
            "a MirrorBackend cannot presign uploads: the upload would reach the primary "
            "only; upload through your application with aput_stream() while mirroring"
        )

    async def _aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()


async def _fan_out(
    chunks: AsyncIterator[bytes], sends: list[MemoryObjectSendStream[bytes]]
) -> None:
    """Hand each chunk to every backend's stream, waiting while one is full."""
    async for chunk in chunks:
        for send in sends:
            await send.send(chunk)


def _probe(location: str) -> StoredObjectRef:
    """A ref carrying only ``location``, for the checked methods of the backends."""
    return StoredObjectRef("", "", location, 0, "")
