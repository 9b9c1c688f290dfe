"""Read a garbage collection's reference source into a compact set of protected locations.

The source is a zero-argument callable returning an async or a sync iterable
of ``StoredObjectRef | None``. Async iterables are iterated on the event
loop (with a checkpoint every :data:`REFERENCE_BATCH` refs); sync iterables
are iterated entirely in one worker thread, so a thread-bound database
connection (a sync SQLAlchemy ``Session``, sqlite3) always sees the same
thread, and the event loop never waits on a blocking driver.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from granite_storage._concurrency import aclose_quietly, closing
from granite_storage.errors import ConfigurationError
from granite_storage.refs import StoredObjectRef

#: The references handled between two checkpoints (cancellation, progress).
REFERENCE_BATCH = 1000

#: What ``StorageGarbageCollector(iter_references=...)`` accepts.
ReferenceSource: TypeAlias = Callable[
    [], AsyncIterable[StoredObjectRef | None] | Iterable[StoredObjectRef | None]
]


class ReferenceIndex:
    """The locations under one key prefix that some reference points at.

    Every ref whose location lies under the prefix protects its object,
    whatever its ``storage_key`` or ``backend``: a ref of another policy
    that points at the same location must keep the object too, and a false
    protection only keeps an orphan one more run, while a false deletion
    loses data. Refs outside the prefix cannot match a listed object and
    are not stored at all.

    Memory: each protected location is kept as its 64-bit ``hash()``, an
    ``int`` in a ``set``: about 75-80 bytes per distinct location measured
    on CPython 3.11, whatever the location's length (the strings themselves
    would cost about twice that). 500,000 references take about 40 MB.
    Two locations with the same hash (about one chance in 10^8 for a million
    refs and a million objects) can only *keep* an orphan, never delete a
    referenced object.
    """

    __slots__ = (
        "_hashes",
        "_prefix_slash",
        "_released",
        "referenced",
        "references_read",
        "storage_key",
    )

    def __init__(
        self,
        *,
        storage_key: str,
        key_prefix: str | None,
        released_backends: frozenset[str] = frozenset(),
    ) -> None:
        self.storage_key = storage_key
        #: Refs naming one of these backend keys protect nothing (see
        #: ``acollect(delete_source=True)``): their objects were moved there.
        self._released = released_backends
        # Equivalent to locations.is_under_prefix(location, key_prefix) for a
        # validated prefix, computed once instead of once per ref.
        self._prefix_slash = f"{key_prefix}/" if key_prefix else ""
        self._hashes: set[int] = set()
        #: Refs of ``storage_key`` seen (the report's ``referenced``).
        self.referenced = 0
        #: Every item the source yielded, ``None`` included.
        self.references_read = 0

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, location: str) -> bool:
        return hash(location) in self._hashes

    def add(self, ref: object) -> None:
        """Record one item of the source.

        :raises ConfigurationError: if ``ref`` is neither a ``StoredObjectRef``
            nor ``None``: silently skipping it could leave its object
            unprotected.
        """
        self.references_read += 1
        if ref is None:
            return
        if not isinstance(ref, StoredObjectRef):
            raise ConfigurationError(
                f"iter_references yielded a {type(ref).__qualname__} ({ref!r:.200}); it must "
                "yield StoredObjectRef or None (for a SQLAlchemy select, iterate "
                "session.scalars(...) rather than session.execute(...) rows, or use "
                "granite_storage.integrations.sqlalchemy.iter_model_storage_refs)"
            )
        if ref.storage_key == self.storage_key:
            self.referenced += 1
        location = ref.location
        if ref.backend in self._released:
            return
        if location and location.startswith(self._prefix_slash):
            self._hashes.add(hash(location))


async def aread_references(
    source: ReferenceSource,
    index: ReferenceIndex,
    *,
    on_batch: Callable[[], None],
) -> None:
    """Read every item of ``source()`` into ``index``; call ``on_batch`` every
    :data:`REFERENCE_BATCH` items.

    ``source`` itself is called on the event loop and must return quickly;
    a sync source should do its work lazily (a generator, a query result),
    since only its iteration runs in the worker thread.

    :raises ConfigurationError: if ``source()`` is not an iterable, or yields
        something other than a ref or ``None``.
    :raises Exception: whatever the source raises, unchanged.
    """
    iterable: object = source()
    if isinstance(iterable, AsyncIterable):
        await _aread_async(iterable, index, on_batch)
    elif isinstance(iterable, Iterable) and not isinstance(iterable, str | bytes):
        await anyio.to_thread.run_sync(_read_sync, iterable, index, on_batch)
    else:
        hint = ""
        if hasattr(iterable, "__await__"):
            if inspect.iscoroutine(iterable):
                iterable.close()  # never awaited: no "was never awaited" warning
            hint = " (it returned an awaitable: make it an async generator, or return the "
            hint += "async iterator without awaiting it)"
        raise ConfigurationError(
            f"iter_references() returned a {type(iterable).__qualname__}{hint}; it must "
            "return an async or a sync iterable of StoredObjectRef | None"
        )


async def _aread_async(
    iterable: AsyncIterable[Any], index: ReferenceIndex, on_batch: Callable[[], None]
) -> None:
    iterator = aiter(iterable)
    try:
        count = 0
        async for ref in iterator:
            index.add(ref)
            count += 1
            if count % REFERENCE_BATCH == 0:
                on_batch()
                # A source that yields without awaiting must not starve the
                # listing or hide a cancellation.
                await anyio.lowlevel.checkpoint()
    finally:
        await aclose_quietly(iterator)


def _read_sync(
    iterable: Iterable[Any], index: ReferenceIndex, on_batch: Callable[[], None]
) -> None:
    """Runs in one worker thread from the first item to the last."""
    iterator = iter(iterable)
    with closing(iterator):
        for count, ref in enumerate(iterator, 1):
            index.add(ref)
            if count % REFERENCE_BATCH == 0:
                anyio.from_thread.check_cancelled()
                anyio.from_thread.run_sync(on_batch)
