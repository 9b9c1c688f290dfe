"""The local backend's edge and its read-only walks: OS errors become
granite_storage errors here (:func:`translate_os_errors`), files are read by
:class:`FileReader`, and the storage root is listed and swept of old
temporary files in worker threads (:func:`scan`, :func:`remove_temp_files`).

Writes and deletes stay in :mod:`granite_storage.backends.local`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import anyio.to_thread

from granite_storage.contracts import ObjectInfo, ObjectReader
from granite_storage.errors import BackendError, ObjectNotFoundError

#: The directory under the root that holds uploads in progress. Locations
#: built by granite_storage never start with a dot, so it cannot collide.
TEMP_DIR_NAME = ".granite-tmp"
_LIST_BATCH = 1000
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


@contextmanager
def translate_os_errors(action: str, location: str | None) -> Iterator[None]:
    """The one edge where OS errors become granite_storage errors."""
    try:
        yield
    except OSError as exc:
        if location is not None and isinstance(exc, _MISSING):
            raise ObjectNotFoundError(f"no object at {location!r}", location=location) from exc
        where = "the storage root" if location is None else repr(location)
        raise BackendError(
            f"local storage could not {action} {where}: {exc.strerror or exc}"
        ) from exc


class FileReader(ObjectReader):
    """Reads ``size`` bytes of an open file, each read in a worker thread."""

    def __init__(self, file: BinaryIO, *, size: int) -> None:
        super().__init__(size=size)
        self._file = file
        self._remaining = size

    async def _read_chunk(self, max_bytes: int) -> bytes:
        if self._remaining <= 0:
            return b""
        chunk = await anyio.to_thread.run_sync(self._file.read, min(max_bytes, self._remaining))
        self._remaining -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._file.close)


def scan(root: str, prefix: str | None) -> Iterator[list[ObjectInfo]]:
    """Every file under ``root/prefix`` but the temporary ones, in batches
    (a worker-thread call each); symlinks are never followed."""
    start = os.path.join(root, prefix) if prefix else root
    cut = len(os.path.join(root, ""))  # every path below starts with it ("/" too)
    stack = [start]
    batch: list[ObjectInfo] = []
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not (directory == root and entry.name == TEMP_DIR_NAME):
                        stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    location = entry.path[cut:].replace(os.sep, "/")
                    modified = datetime.fromtimestamp(st.st_mtime, UTC)
                    batch.append(ObjectInfo(location, st.st_size, modified))
                    if len(batch) >= _LIST_BATCH:
                        yield batch
                        batch = []
    if batch:
        yield batch


def remove_temp_files(temp_dir: str, older_than: datetime, dry_run: bool) -> int:
    """Remove (unless ``dry_run``) the files in ``temp_dir`` last written
    before ``older_than``; return how many there were."""
    cutoff = older_than.timestamp()
    removed = 0
    with os.scandir(temp_dir) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if not dry_run:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue  # an upload finished or was discarded meanwhile
            removed += 1
    return removed
