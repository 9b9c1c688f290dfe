"""Every bridge between the event loop and worker threads, in one place.

- :func:`aiter_in_thread`: a sync iterator, each ``next`` in a worker thread.
- :func:`aclose_quietly` and :func:`closing`: close an (async) iterator that
  can be closed, whatever it is, shielded from cancellation.
- :func:`run_stoppable`: a long blocking job that stops when its caller is
  cancelled, and :data:`copy_slots`, which keeps file copies from
  outnumbering the cores.
- :func:`run_fed`: the same for a job that consumes items the event loop
  produces (an async source copied by one writer thread), through a
  bounded queue: one hand-off per item.
- :func:`runs_a_loop` and :func:`check_no_running_loop`: whether this thread
  runs an event loop, which a blocking call must not stall.

Long blocking jobs in a worker thread that stop when their caller is cancelled:

A thread the event loop hands a job to runs on when the awaiting task is
cancelled (by ``task.cancel()``, ``asyncio.timeout`` or an anyio cancel
scope, which cancels the task the same way): for a job that writes a file
for seconds, that would leave a file behind after the caller was told the
upload was cancelled. :func:`run_stoppable` closes the gap: the job calls its
``checkpoint`` between steps, and a cancelled caller waits (shielded) until
the job has stopped and cleaned up. The price: a job blocked in a call that
does not return (a read of a pipe nobody writes to) holds its cancelled
caller until the call returns, as anyio does for any worker thread it was
not told to abandon.

Its jobs (every local upload but an async source of more than one chunk,
which :func:`run_fed` writes) run on the threads of
:func:`~granite_storage._jobs.job_pool`, one queue put and one
``call_soon_threadsafe`` per job: under 32 concurrent small uploads anyio's
``to_thread.run_sync`` cost about 10% more CPU per upload than asyncio's
``run_in_executor`` (its checkpoints, capacity limiter and cancel scopes,
which the stoppable hand-shake makes unnecessary here), and
``run_in_executor`` about 20% more than the job pool (see
:mod:`granite_storage._jobs`). granite_storage runs on asyncio (as aiofiles
and aiobotocore do).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from granite_storage._jobs import job_pool
from granite_storage.errors import SyncInEventLoopError

T = TypeVar("T")
R = TypeVar("R")

#: Called by a job between steps; raises if its caller was cancelled.
Checkpoint = Callable[[], None]


_DONE: Any = object()


async def aiter_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Items of a sync iterator, each ``next`` called in a worker thread, so
    a blocking source (a file, a generator that reads a socket) never holds
    the event loop."""
    while (item := await anyio.to_thread.run_sync(next, iterator, _DONE)) is not _DONE:
        yield item


async def aclose_quietly(iterator: object) -> None:
    """Call ``iterator.aclose()`` if it has one (async generators do),
    shielded, so a cancelled caller still releases what the iterator holds."""
    aclose = getattr(iterator, "aclose", None)
    if callable(aclose):
        with anyio.CancelScope(shield=True):
            await aclose()


@contextlib.contextmanager
def closing(iterator: object) -> Iterator[None]:
    """Call ``iterator.close()`` on the way out if it has one (generators do)."""
    try:
        yield
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()


class _Stopped(BaseException):
    """Raised in the job's thread when its caller went away."""


class _JobState:
    """The hand-shake between a job's thread and its caller, without a
    condition variable: each side sets its flag, then reads the other's (the
    GIL orders them), so either the caller sees ``started`` and waits on
    ``running``, or the thread sees ``stopped`` and never runs the job."""

    __slots__ = ("running", "started", "stopped")

    def __init__(self) -> None:
        self.running = threading.Lock()  # held by the thread while the job runs
        self.started = False
        self.stopped = False

    def checkpoint(self) -> None:
        if self.stopped:
            raise _Stopped

    def wait_until_ended(self) -> None:
        with self.running:
            pass


async def run_stoppable(job: Callable[[Checkpoint], T]) -> T:
    """Run ``job(checkpoint)`` in a worker thread (:func:`~granite_storage._jobs.job_pool`'s,
    in a copy of the caller's context) and return its result.

    However the caller is cancelled, the job raises at its next
    ``checkpoint()`` call (it must clean up in ``except``/``finally``), and
    this function returns only once the job has ended.
    """
    state = _JobState()

    def target() -> T:
        with state.running:
            state.started = True
            if state.stopped:  # cancelled before the thread picked it up
                raise _Stopped
            return job(state.checkpoint)

    in_context = partial(contextvars.copy_context().run, target)
    try:
        return await job_pool().submit(asyncio.get_running_loop(), in_context)
    except BaseException:
        state.stopped = True
        if state.started and state.running.locked():  # not ended: still copying
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(state.wait_until_ended)
        raise


#: Takes the next item in the job's thread, blocking; ``None`` at the end.
Pull = Callable[[], T | None]

_END: Any = object()
_ABORT: Any = object()


class _Feed(Generic[T]):
    """The bounded queue from the event loop to one job thread.

    Each side counts what it moved (the loop what it sent, the thread what
    it took), so neither counter is written by two threads; the loop waits
    for room only while ``depth`` items are in the queue, and the thread
    wakes it (without waiting itself) only when it does.
    """

    def __init__(self, depth: int, call_soon: Callable[[Callable[[], object]], object]) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._depth = depth
        self._call_soon = call_soon
        self._sent = 0  # written by the loop only
        self._taken = 0  # written by the thread only
        self._room: anyio.Event | None = None
        self.ended = anyio.Event()
        self.done = False  # written by the thread only, once the job returned or raised
        self.stopped = False

    # -- the event loop's side ---------------------------------------------

    def put(self, item: Any) -> None:
        self._queue.put(item)
        self._sent += 1

    async def asend(self, item: T) -> None:
        """Queue ``item``; wait while ``depth`` items wait already (or until
        the job ended: it takes nothing more).

        Either way the caller passes a checkpoint: a source that never
        suspends (an async generator of bytes in memory) would otherwise
        hold the event loop for as long as the job keeps up with it, and
        could not be cancelled.
        """
        self.put(item)
        waited = False
        while self._sent - self._taken >= self._depth and not self.done:
            room = self._room = anyio.Event()
            # Checked again once the event is visible: a take (or the job's
            # end) in between saw no event to set.
            if self._sent - self._taken < self._depth or self.done:
                break
            await room.wait()
            waited = True
        self._room = None
        if not waited:
            await anyio.lowlevel.checkpoint()

    def stop(self) -> None:
        """Make the job raise at its next pull or checkpoint."""
        self.stopped = True
        self._queue.put(_ABORT)

    # -- the job's side --------------------------------------------------------

    def pull(self) -> T | None:
        item = self._queue.get()
        self._taken += 1
        room = self._room
        if room is not None:
            self._call_soon(room.set)
        if item is _ABORT:
            raise _Stopped
        return None if item is _END else item

    def checkpoint(self) -> None:
        if self.stopped:
            raise _Stopped

    def job_ended(self) -> None:
        self.done = True
        self._call_soon(self.ended.set)
        room = self._room
        if room is not None:
            self._call_soon(room.set)


async def run_fed(
    job: Callable[[Pull[T], Checkpoint], R],
    items: AsyncIterator[T],
    *,
    first: Iterable[T] = (),
    depth: int = 4,
) -> R:
    """Run ``job(pull, checkpoint)`` in a thread of its own while the event
    loop feeds it ``first``, then ``items``: ``pull()`` returns them one by
    one (``None`` at the end), at most ``depth`` waiting.

    One hand-off per item, and none back: the loop produces the next item
    while the job consumes the last. If ``items`` raises or the caller is
    cancelled, the job raises at its next ``pull()`` or ``checkpoint()``
    (and must clean up in ``except``/``finally``); this function returns or
    raises only once the job has ended. If the job fails, the loop stops
    reading ``items`` and its error propagates as it is.
    """
    # asyncio's: granite_storage runs on asyncio (as aiofiles and aiobotocore do).
    feed: _Feed[T] = _Feed(depth, asyncio.get_running_loop().call_soon_threadsafe)
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, job(feed.pull, feed.checkpoint)))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))
        finally:
            feed.job_ended()

    for item in first:
        feed.put(item)
    threading.Thread(target=target, name="granite-writer", daemon=True).start()
    try:
        async for item in items:
            await feed.asend(item)
            if feed.done:
                break  # the job failed: reading on would be for nothing
        else:
            feed.put(_END)
        await feed.ended.wait()
    except BaseException:
        feed.stop()
        with anyio.CancelScope(shield=True):
            await feed.ended.wait()
        raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


class CpuSlots:
    """Let at most ``slots`` threads at once into CPU-heavy steps.

    Threads that copy files (writing, hashing) gain nothing from outnumbering
    the cores; they only make every other thread, the event loop's included,
    wait longer for one. Each copy takes a :meth:`gate` and passes it once per
    chunk, around its write and hash hand-over (not around reads, which may
    block on a slow source).
    """

    def __init__(self, slots: int, *, patience: float = 0.1, give_up_after: int = 3) -> None:
        self.slots = slots
        self.patience = patience
        self.give_up_after = give_up_after
        self.semaphore = threading.BoundedSemaphore(slots)

    def gate(self) -> _Gate:
        """A context manager for one copy's steps. A step that waited
        ``patience`` seconds for a slot goes on without one; a copy whose
        ``give_up_after`` steps in a row did so stops asking, so a holder
        stuck in slow I/O holds the others up briefly, not chunk after chunk."""
        return _Gate(self)

    def reset(self) -> None:
        """A fresh semaphore (in a forked child, whose copies are gone)."""
        self.semaphore = threading.BoundedSemaphore(self.slots)


class _Gate:
    __slots__ = ("_acquired", "_misses", "_semaphore", "_slots")

    def __init__(self, slots: CpuSlots) -> None:
        self._slots = slots
        self._semaphore = slots.semaphore
        self._misses = 0
        self._acquired = False

    def __enter__(self) -> None:
        if self._misses < self._slots.give_up_after:
            self._acquired = self._semaphore.acquire(timeout=self._slots.patience)
            self._misses = 0 if self._acquired else self._misses + 1

    def __exit__(self, *exc_info: object) -> None:
        if self._acquired:
            self._acquired = False
            self._semaphore.release()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: One slot per two cores: a file copy keeps one core writing and one hashing.
copy_slots = CpuSlots(max(1, _usable_cpus() // 2))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=copy_slots.reset)


def runs_a_loop() -> bool:
    """Whether this thread runs an event loop (blocking it would stall the loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def check_no_running_loop(sync_name: str, instead: str) -> None:
    """Raise :class:`SyncInEventLoopError` if this thread runs an event loop.

    :param sync_name: the blocking method called, e.g. ``"StorageManager.put_bytes"``.
    :param instead: what to do instead, e.g. ``"await manager.aput_bytes(...)"``.
    """
    if not runs_a_loop():
        return
    raise SyncInEventLoopError(
        f"{sync_name}() was called inside a running event loop, where it would block "
        f"the loop; {instead} instead, or call it from a worker thread "
        "(anyio.to_thread.run_sync)"
    )
