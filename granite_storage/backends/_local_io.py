"""The local backend's edge and its walks: OS errors become
granite_storage errors here (:func:`translate_os_errors`), files are read by
:class:`FileReader`, and the storage root is listed and swept of old
temporary files in worker threads (:func:`scan`, :func:`find_leftovers`).

Writes and deletes stay in :mod:`granite_storage.backends.local`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import unquote

import anyio.to_thread

from granite_storage.contracts import ObjectInfo, ObjectReader
from granite_storage.errors import BackendError, InvalidLocationError, ObjectNotFoundError
from granite_storage.locations import unique_name

#: Uploads in progress are written next to their target as
#: ``<directory>/.granite-tmp.<random>.<name>.part`` and renamed within that
#: directory. No location may have a segment starting with it
#: (:func:`check_not_reserved`); locations built by granite_storage never start
#: a segment with a dot.
TEMP_PREFIX = ".granite-tmp"
#: The directory under the root where earlier versions wrote every upload in
#: progress; its leftovers are still swept.
TEMP_DIR_NAME = TEMP_PREFIX
_LIST_BATCH = 1000
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_RANDOM = 32  # hex digits of unique_name()
# 255 bytes per file name, less the prefix, the random name, three dots and "part".
_MAX_TARGET_NAME = 255 - len(TEMP_PREFIX) - _RANDOM - 3 - 4


def check_not_reserved(location: str) -> None:
    """Refuse a location with a segment starting with :data:`TEMP_PREFIX`.

    :raises InvalidLocationError: naming the segment.
    """
    if TEMP_PREFIX in location:
        for segment in location.split("/"):
            if segment.startswith(TEMP_PREFIX):
                raise InvalidLocationError(
                    f"location {location!r} has a segment starting with {TEMP_PREFIX!r}, "
                    "which the local backend keeps for uploads in progress; "
                    "choose another name"
                )


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
    """Reads ``size`` bytes of an open file, each read in a worker thread.

    A read whose caller was cancelled by ``task.cancel()`` runs on in its
    thread; the close waits for it (one lock around both), so the file is
    never closed under a read in flight, and a read that starts after the
    close fails on the closed file instead of reading whatever file was
    opened meanwhile under the same descriptor number.
    """

    def __init__(self, file: BinaryIO, *, size: int) -> None:
        super().__init__(size=size)
        self._file = file
        self._remaining = size
        self._using = threading.Lock()

    def _read(self, size: int) -> bytes:
        with self._using:
            return self._file.read(size)

    def _close(self) -> None:
        with self._using:
            self._file.close()

    async def _read_chunk(self, max_bytes: int) -> bytes:
        if self._remaining <= 0:
            return b""
        chunk = await anyio.to_thread.run_sync(self._read, min(max_bytes, self._remaining))
        self._remaining -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)


def scan(root: str, prefix: str | None) -> Iterator[list[ObjectInfo]]:
    """Every file under ``root/prefix`` but the temporary ones, in batches
    (a worker-thread call each); symlinks are never followed."""
    start = os.path.join(root, prefix) if prefix else root
    cut = len(os.path.join(root, ""))  # every path below starts with it ("/" too)
    batch: list[ObjectInfo] = []
    for _, entry in _walk(start):
        if entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            location = entry.path[cut:].replace(os.sep, "/")
            modified = datetime.fromtimestamp(st.st_mtime, UTC)
            batch.append(ObjectInfo(location, st.st_size, modified))
            if len(batch) >= _LIST_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _walk(start: str, *, temporary: bool = False) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(directory, entry)`` of every non-directory entry below ``start``
    but the temporary ones, or with ``temporary`` of the temporary ones only
    (no ``stat`` of the others). Directories whose name starts with
    :data:`TEMP_PREFIX` (the shared temporary directory of earlier versions)
    are not entered; symlinks are not followed."""
    stack = [start]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    if temporary and entry.name.startswith(TEMP_PREFIX + "."):
                        yield directory, entry
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif not temporary:
                    yield directory, entry


def temp_name(name: str) -> str:
    """A new name for the temporary file of an upload to ``name`` (the last
    segment of its location), in the same directory:
    ``.granite-tmp.<random>.<name>.part``, or ``.granite-tmp.<random>.part``
    when ``name`` is too long to fit in one file name with the rest."""
    if len(os.fsencode(name)) > _MAX_TARGET_NAME:
        return f"{TEMP_PREFIX}.{unique_name()}.part"
    return f"{TEMP_PREFIX}.{unique_name()}.{name}.part"


def temp_target(directory: str, name: str) -> str | None:
    """The location the temporary file ``name`` in ``directory`` (a location,
    ``""`` for the root) was bound for; ``None`` if its name does not say."""
    rest = name.removeprefix(TEMP_PREFIX + ".")[_RANDOM:]
    if not (rest.startswith(".") and rest.endswith(".part")) or len(rest) <= len("..part"):
        return None
    target = rest[1 : -len(".part")]
    return f"{directory}/{target}" if directory else target


def find_leftovers(
    root: str, prefix: str | None, older_than: datetime
) -> list[tuple[str, str | None]]:
    """``(path, target)`` of the temporary files bound for a location under
    ``prefix`` (every one when ``None``) and last written before ``older_than``:
    those next to their targets, found by walking ``root/prefix`` (names only,
    one ``stat`` per temporary file), and those in the shared temporary
    directory of earlier versions."""
    cutoff = older_than.timestamp()
    cut = len(os.path.join(root, ""))
    start = os.path.join(root, prefix) if prefix else root
    found = []
    for directory, entry in _walk(start, temporary=True):
        if _idle_file(entry, cutoff):
            where = directory[cut:].replace(os.sep, "/")
            found.append((entry.path, temp_target(where, entry.name)))
    legacy = os.path.join(root, TEMP_DIR_NAME)
    with suppress(FileNotFoundError, NotADirectoryError):
        found.extend(_find_legacy_temp_files(legacy, prefix, cutoff))
    return found


def _idle_file(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Whether ``entry`` is a regular file last written before ``cutoff``."""
    try:
        return (
            entry.is_file(follow_symlinks=False)
            and entry.stat(follow_symlinks=False).st_mtime < cutoff
        )
    except FileNotFoundError:  # an upload finished or was discarded meanwhile
        return False


def _legacy_target(name: str) -> str | None:
    """The location (or ``dir/`` prefix) a file of the shared temporary
    directory, ``<random>.<location, percent-encoded>.part``, was bound for."""
    _, dot, encoded = name.removesuffix(".part").partition(".")
    return unquote(encoded) or None if dot else None


def _find_legacy_temp_files(
    temp_dir: str, prefix: str | None, cutoff: float
) -> list[tuple[str, str | None]]:
    found = []
    with os.scandir(temp_dir) as entries:
        for entry in entries:
            target = _legacy_target(entry.name)
            if prefix is not None and not (target or "").startswith(prefix + "/"):
                continue  # another policy's upload, or one whose target is unknown
            if _idle_file(entry, cutoff):
                found.append((entry.path, target))
    return found


def prune_empty_dirs(root: str, directory: str) -> None:
    """Remove ``directory`` and its parents below ``root`` while they are
    empty, so deleted objects and failed uploads leave no empty directories."""
    while directory != root and directory.startswith(root + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


def remove_files(root: str, paths: list[str]) -> int:
    """Remove ``paths`` (and the directories left empty below ``root``);
    return how many were there (those gone meanwhile, an upload that
    finished, are not an error)."""
    removed = 0
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
            prune_empty_dirs(root, os.path.dirname(path))
    return removed
