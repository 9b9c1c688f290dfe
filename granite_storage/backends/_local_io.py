"""The local backend's edge and its read-only walks: OS errors become
granite_storage errors here (:func:`translate_os_errors`), files are read by
:class:`FileReader`, and the storage root is listed and swept of old
temporary files in worker threads (:func:`scan`, :func:`find_temp_files`).

Writes and deletes stay in :mod:`granite_storage.backends.local`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import quote, unquote

import anyio.to_thread

from granite_storage.contracts import ObjectInfo, ObjectReader
from granite_storage.errors import BackendError, ObjectNotFoundError
from granite_storage.locations import unique_name

#: The directory under the root that holds uploads in progress. Locations
#: built by granite_storage never start with a dot, so it cannot collide.
TEMP_DIR_NAME = ".granite-tmp"
_LIST_BATCH = 1000
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# 255 bytes per file name, less the random name, two dots and "part".
_MAX_TARGET_NAME = 255 - 32 - 6


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


def temp_name(location: str) -> str:
    """A new temporary file name that records its target: ``<random>.<location,
    percent-encoded>.part``. A location too long for one file name is cut at
    a ``/`` and keeps the trailing slash (``docs/m/``): still enough to tell
    which prefix the upload belongs to."""
    target = location
    while len(encoded := quote(target, safe="")) > _MAX_TARGET_NAME:
        head, slash, _ = target.rstrip("/").rpartition("/")
        target = head + slash
    return f"{unique_name()}.{encoded}.part"


def temp_target(name: str) -> str | None:
    """The location (or ``dir/`` prefix) a temporary file was bound for;
    ``None`` if its name does not say (files of granite-storage 0.1.0)."""
    _, dot, encoded = name.removesuffix(".part").partition(".")
    return unquote(encoded) or None if dot else None


def find_temp_files(
    temp_dir: str, prefix: str | None, older_than: datetime
) -> list[tuple[str, str | None]]:
    """``(path, target)`` of the files in ``temp_dir`` bound for a location
    under ``prefix`` (every file when ``None``) and last written before
    ``older_than``."""
    cutoff = older_than.timestamp()
    found = []
    with os.scandir(temp_dir) as entries:
        for entry in entries:
            target = temp_target(entry.name)
            if prefix is not None and not (target or "").startswith(prefix + "/"):
                continue  # another policy's upload, or one whose target is unknown
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue  # written to within the cutoff: in progress
            except FileNotFoundError:
                continue  # an upload finished or was discarded meanwhile
            found.append((entry.path, target))
    return found


def remove_files(paths: list[str]) -> int:
    """Remove ``paths``; return how many were there (those gone meanwhile,
    an upload that finished, are not an error)."""
    removed = 0
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed
