"""The garbage collector: delete stored objects that no reference points at.

How a run works (:meth:`StorageGarbageCollector.acollect`):

1. The age cutoff is fixed first: ``now - min_age``. An object is old
   enough to delete only if ``last_modified + backend.timestamp_resolution
   <= cutoff``, so an object written during the run (whose ref may be
   committed after the references were read) is never deleted, even with
   ``min_age=0``.
2. Two tasks start together in an anyio task group: the backend listing
   (``backend.aiter_objects(key_prefix)``) feeds a bounded memory object
   stream in chunks (at most :attr:`~StorageGarbageCollector.listing_buffer`
   objects, then it waits), while every reference is read into a set of
   protected locations.
3. Once all references are read, the listing is streamed against that set.
   Old-enough orphans accumulate into batches of
   :attr:`~StorageGarbageCollector.batch_size` that are handed to
   ``backend.adelete_many`` (S3: one DeleteObjects request per 1000 keys),
   at most :attr:`~StorageGarbageCollector.delete_concurrency` batches at once.
4. Leftovers (temporary files, multipart uploads) bound for the policy's
   prefix and idle for longer than ``leftover_min_age`` (default 24 h) and
   ``min_age`` are removed with ``backend.acleanup_leftovers``. Idle means no
   part or chunk received since: an upload still sending data is never
   aborted, however long it runs, nor one of another policy.

Memory is O(references) + O(listing buffer) + O(batch size x concurrency):
the listing is never held whole. The reference set costs about 80 bytes
per distinct referenced location (see :class:`ReferenceIndex`). Nothing is
deleted before the last reference was read, so a reference source that
fails deletes nothing.

The grace period is what protects uploads in flight. ``last_modified`` is
when the backend recorded the object, which can be well before the ref is
committed: the last write before the atomic rename on local disk, the
*start* of a multipart upload on S3. With ``min_age=0`` an upload that began
before the run and whose ref is committed after the references were read can
be deleted; use ``0`` only when nothing is being uploaded (tests, maintenance
windows), and otherwise a grace period longer than your slowest upload plus
its commit.
"""

from granite_storage.errors import UnsafeCollectionError
from granite_storage.gc._collector import (
    DEFAULT_LEFTOVER_MIN_AGE,
    DEFAULT_MIN_AGE,
    StorageGarbageCollector,
)
from granite_storage.gc._refs import ReferenceIndex, ReferenceSource
from granite_storage.gc._report import GarbageCollectionProgress, GarbageCollectionReport
from granite_storage.gc._run import ProgressCallback

__all__ = [
    "DEFAULT_LEFTOVER_MIN_AGE",
    "DEFAULT_MIN_AGE",
    "GarbageCollectionProgress",
    "GarbageCollectionReport",
    "ProgressCallback",
    "ReferenceIndex",
    "ReferenceSource",
    "StorageGarbageCollector",
    "UnsafeCollectionError",
]
