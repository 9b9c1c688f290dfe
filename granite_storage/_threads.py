"""Long blocking jobs in a worker thread that stop when their caller is cancelled.

``anyio.to_thread.run_sync`` lets a job see an anyio cancellation through
``anyio.from_thread.check_cancelled()``. A native asyncio cancellation
(``task.cancel()``, ``asyncio.timeout``) is different: the awaiting task
moves on at once and the thread runs on, abandoned, to its end. For a job
that writes a file for seconds, that would leave a file behind after the
caller was told the upload was cancelled. :func:`run_stoppable` closes the
gap: the job calls its ``checkpoint`` between steps, and a cancelled caller
waits (shielded) until the job has stopped and cleaned up. The price: a job
blocked in a call that does not return (a read of a pipe nobody writes to)
holds its cancelled caller until the call returns, as anyio does for any
worker thread it was not told to abandon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

__all__ = ["Checkpoint", "run_stoppable"]

T = TypeVar("T")

#: Called by a job between steps; raises if its caller was cancelled.
Checkpoint = Callable[[], None]


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
        anyio.from_thread.check_cancelled()

    def wait_until_ended(self) -> None:
        with self.running:
            pass


async def run_stoppable(job: Callable[[Checkpoint], T]) -> T:
    """Run ``job(checkpoint)`` in a worker thread and return its result.

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

    try:
        return await anyio.to_thread.run_sync(target)
    except BaseException:
        state.stopped = True
        if state.started and state.running.locked():  # not ended: still copying
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(state.wait_until_ended)
        raise
