"""Local disk backend: atomic writes, streaming reads, all file I/O in worker threads.

Every upload is written to a temporary file next to its target,
``<directory>/.granite-tmp.<random>.<name>.part`` (so a collection finds the
temporary files of its own policy's prefix by walking it), flushed and (by
default) fsynced, and then renamed into place with ``os.replace`` within that
directory, which is atomic on POSIX: a reader sees the whole object or
nothing. A rename within one directory is also the cheapest there is (no
second directory to lock, no single directory every upload goes through). A
failed, oversized or cancelled upload removes its temporary file, and the
directories it made, in a cancellation-shielded scope. Temporary files of a
process that died are "leftovers", removed by the garbage collector once idle
for its leftover age. No location may have a segment starting with
``.granite-tmp``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, suppress
from datetime import datetime
from functools import partial
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from granite_storage._concurrency import Checkpoint, copy_slots, run_fed, run_stoppable
from granite_storage.backends._local_io import (
    TEMP_DIR_NAME,
    TEMP_PREFIX,
    FileReader,
    check_not_reserved,
    find_leftovers,
    prune_empty_dirs,
    remove_files,
    scan,
    temp_name,
    translate_os_errors,
)
from granite_storage.contracts import (
    BatchDeleteResult,
    InUse,
    ObjectInfo,
    ObjectReader,
    PutResult,
    StorageBackend,
)
from granite_storage.errors import BackendError, InvalidLocationError, StorageError
from granite_storage.streams import BlockingPull, HashingThread, Sha256Digest, blocking_pull

__all__ = ["TEMP_DIR_NAME", "TEMP_PREFIX", "LocalStorageBackend"]


class LocalStorageBackend(StorageBackend):
    """Objects stored as files under ``root_dir``.

    :param root_dir: the directory that holds every object; created on first use.
    :param fsync: fsync each file and its directory before an upload counts as
        done, so a committed ref survives a power loss. Turn off for caches
        and tests where durability does not matter (uploads of small files
        are several times faster without it). The directories an upload
        makes are not fsynced one by one: on a journaling file system (ext4,
        XFS, btrfs) the file's fsync commits them too, and on ext4 each
        further fsync only costs a disk cache flush (about 15% of small-file
        throughput, measured). On a file system without a journal, a power
        loss could drop a new directory entry.
    """

    backend_name = "local"
    #: One worker-thread call deletes a batch: far fewer hand-offs than one per object.
    delete_batch_size = 256
    delete_concurrency = 4

    def __init__(self, root_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        # No I/O here: constructors run inside event loops. The root is
        # created and resolved (symlinks followed) on first use, in a thread.
        self.root_dir = Path(root_dir)
        self.fsync = fsync
        self._real_root: str | None = None

    def __repr__(self) -> str:
        return f"LocalStorageBackend({str(self.root_dir)!r})"

    # -- helpers that run in worker threads ---------------------------------

    def _root(self) -> str:
        if self._real_root is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._real_root = os.path.realpath(self.root_dir)
        return self._real_root

    def _inside_root(self, path: str, location: str) -> str:
        """``path`` with symlinks resolved, if it stays under the root."""
        check_not_reserved(location)
        root = self._root()
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            raise InvalidLocationError(f"location {location!r} leads outside the storage root")
        return real

    def _open_temp(self, location: str) -> tuple[BinaryIO, str]:
        """A new temporary file in the directory of ``location`` (made if
        missing), open for writing, and its path."""
        name = location.rsplit("/", 1)[-1]
        for _ in range(5):  # a concurrent delete may prune a new directory in between
            try:
                parent = self._parent_dir(location, create=True)
                if parent is None:
                    continue
                path = os.path.join(parent, temp_name(name))
                return open(path, "xb", buffering=0), path
            except FileNotFoundError:
                # A directory was pruned meanwhile, or the whole root was
                # removed while this backend lived (the storage directory
                # emptied): make the root again and retry.
                os.makedirs(self._root(), exist_ok=True)
        raise BackendError(f"could not create the directory of {location!r}")

    def _commit(self, file: BinaryIO, temp: str, location: str) -> None:
        """Rename the temporary file into place, in its own directory (which
        cannot be pruned meanwhile: the temporary file is in it)."""
        if self.fsync:
            os.fsync(file.fileno())
        file.close()
        parent = os.path.dirname(temp)
        os.replace(temp, os.path.join(parent, location.rsplit("/", 1)[-1]))
        if self.fsync:
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _parent_dir(self, location: str, *, create: bool) -> str | None:
        """The directory of ``location``, walked level by level below the root
        with ``lstat`` and, for a missing level when ``create``, ``mkdir``: cheaper than
        ``makedirs`` plus a ``realpath`` of the whole path, and less time
        holding the GIL in worker threads. ``None`` if a level is missing (or,
        without ``create``, is not a directory).

        :raises InvalidLocationError: if a level is a symlink: no write or
            delete can be redirected outside the root.
        :raises BackendError: with ``create``, if a level is not a directory.
        """
        check_not_reserved(location)
        path = self._root()
        made = False  # below a directory made here, every level is new: no lstat
        for segment in location.split("/")[:-1]:
            path = os.path.join(path, segment)
            # lstat first: mkdir of an existing directory still takes its
            # parent's lock, which concurrent writes would queue on.
            mode = None if made else _lstat_mode(path)
            if mode is None:
                if not create:
                    return None
                try:
                    os.mkdir(path)
                    made = True
                    continue
                except FileExistsError:  # made meanwhile by a concurrent write
                    mode = _lstat_mode(path)
                if mode is None:  # ... and pruned again by a delete
                    return None
            if stat.S_ISLNK(mode):
                raise InvalidLocationError(
                    f"location {location!r} leads outside the storage root (through a "
                    f"symlink at {segment!r})"
                )
            if not stat.S_ISDIR(mode):
                if create:
                    raise BackendError(
                        f"cannot store {location!r}: {segment!r} exists and is not a directory"
                    )
                return None
        return path

    def _put_whole(self, data: bytes, location: str) -> PutResult:
        """Store an object that is already in memory, in the calling thread."""
        digest = Sha256Digest()
        digest.update(data)
        file, temp = self._open_temp(location)
        try:
            _write_all(file, data)
            self._commit(file, temp, location)
        except BaseException:
            self._discard(file, temp)
            raise
        return PutResult(size=digest.size, checksum=digest.checksum)

    def _put_pulled(
        self, location: str, pull: BlockingPull, checkpoint: Checkpoint, head: Sequence[bytes] = ()
    ) -> PutResult:
        """Store ``head`` and then what ``pull`` returns, in the calling
        (worker) thread. ``checkpoint`` runs after every chunk and raises
        once the caller is cancelled; the temporary file is then removed."""
        chunks = chain(head, iter(pull, None))
        first = next(chunks, None)
        if first is None or (second := next(chunks, None)) is None:  # one chunk: no hash thread
            with translate_os_errors("write", location):
                return self._put_whole(first or b"", location)
        digest = Sha256Digest()
        with translate_os_errors("create a temporary file for", location):
            file, temp = self._open_temp(location)
        try:
            gate = copy_slots.gate()
            with HashingThread(digest) as hasher:
                for chunk in chain((first, second), chunks):
                    with gate:  # no more copies writing and hashing at once than cores
                        hasher.update(chunk)
                        with translate_os_errors("write", location):
                            _write_all(file, chunk)
                    checkpoint()
            checkpoint()  # a caller cancelled at the end: no object appears
            with translate_os_errors("write", location):
                self._commit(file, temp, location)
        except BaseException:
            self._discard(file, temp)
            raise
        return PutResult(size=digest.size, checksum=digest.checksum)

    def _discard(self, file: BinaryIO, temp: str) -> None:
        """Remove a failed upload's temporary file and the directories it made."""
        file.close()
        with suppress(FileNotFoundError):
            os.unlink(temp)
        prune_empty_dirs(self._root(), os.path.dirname(temp))

    def _open_for_read(self, location: str, start: int, end: int | None) -> tuple[BinaryIO, int]:
        real = self._inside_root(os.path.join(self._root(), location), location)
        file = open(real, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        try:
            size = os.fstat(file.fileno()).st_size
            stop = size if end is None else min(end, size)
            file.seek(min(start, stop))
        except BaseException:
            file.close()
            raise
        return file, max(stop - start, 0)

    def _delete(self, location: str) -> None:
        parent = self._parent_dir(location, create=False)
        if parent is None:
            return
        try:
            os.unlink(os.path.join(parent, location.rsplit("/", 1)[-1]))
        except FileNotFoundError:
            return
        # Prune directories the delete left empty, so millions of deleted
        # objects do not leave millions of empty directories behind.
        prune_empty_dirs(self._root(), parent)

    def _delete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        """Delete ``locations`` (already validated) in the calling thread."""
        result = BatchDeleteResult()
        for location in locations:
            try:
                with translate_os_errors("delete", location):
                    self._delete(location)
            except StorageError as exc:  # reported per location, the batch goes on
                result.failed[location] = f"{type(exc).__name__}: {exc}"
            else:
                result.deleted.append(location)
        return result

    def _exists(self, location: str) -> bool:
        real = self._inside_root(os.path.join(self._root(), location), location)
        return os.path.isfile(real)

    def _scan(self, prefix: str | None) -> Iterator[list[ObjectInfo]]:
        yield from scan(self._root(), prefix)

    # -- the primitives ------------------------------------------------------

    def _translate_errors(self, action: str, location: str | None) -> AbstractContextManager[None]:
        return translate_os_errors(action, location)

    async def _aput(
        self, location: str, chunks: AsyncIterator[bytes], content_type: str | None
    ) -> PutResult:
        pull = blocking_pull(chunks)
        if pull is not None:
            # A sync file or bytes in memory: read, hash and write it all in
            # one worker thread, like a plain copy loop, with no hand-off to
            # the event loop per chunk.
            return await run_stoppable(partial(self._put_pulled, location, pull))
        # An async source. Read up to two chunks first: an object that fits
        # in one chunk (most uploads) is written, hashed and renamed in a
        # single worker-thread call.
        first = await anext(chunks, b"")
        second = await anext(chunks, None) if first else None
        if second is None:
            with translate_os_errors("write", location):
                return await run_stoppable(lambda _: self._put_whole(first, location))
        # A larger one goes to one writer thread of its own, which the event
        # loop feeds chunk by chunk (one hand-off each) while it hashes in
        # another: the same copy loop as for a sync file.
        job = partial(self._put_pulled, location, head=(first, second))
        return await run_fed(job, chunks)

    @asynccontextmanager
    async def _aopen(
        self, location: str, start: int, end: int | None
    ) -> AsyncIterator[ObjectReader]:
        file, size = await anyio.to_thread.run_sync(self._open_for_read, location, start, end)
        async with FileReader(file, size=size) as reader:
            yield reader

    async def _adelete(self, location: str) -> None:
        await anyio.to_thread.run_sync(self._delete, location)

    async def _adelete_batch(self, locations: Sequence[str]) -> BatchDeleteResult:
        return await anyio.to_thread.run_sync(self._delete_batch, locations)

    async def _aexists(self, location: str) -> bool:
        return await anyio.to_thread.run_sync(self._exists, location)

    async def _aiter_objects(self, prefix: str | None) -> AsyncIterator[ObjectInfo]:
        batches = self._scan(prefix)  # a generator: no I/O until the first next()
        while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
            for info in batch:
                yield info

    async def _acleanup_leftovers(
        self, prefix: str | None, older_than: datetime, dry_run: bool, in_use: InUse
    ) -> int:
        """Remove the temporary files bound for a location under ``prefix``
        (found by walking it) and not written to since ``older_than``."""
        root = await anyio.to_thread.run_sync(self._root)
        found = await anyio.to_thread.run_sync(find_leftovers, root, prefix, older_than)
        kept = set(await in_use([t for _, t in found if t and not t.endswith("/")]))
        stale = [path for path, target in found if target not in kept]
        if dry_run:
            return len(stale)
        return await anyio.to_thread.run_sync(remove_files, root, stale)


def _lstat_mode(path: str) -> int | None:
    """The mode of ``path`` itself (a symlink is not followed); ``None`` if missing."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def _write_all(file: BinaryIO, chunk: bytes) -> None:
    """Write all of ``chunk``: an unbuffered write may take only part of it."""
    view = memoryview(chunk)
    while view:
        written = file.write(view)
        view = view[written or 0 :]
