"""Long jobs in worker threads stop, and are waited for, however their caller is cancelled."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import anyio.to_thread
import pytest

from granite_storage._threads import Checkpoint, run_stoppable


class Job:
    """Steps of 10 ms until stopped; records how it ended."""

    def __init__(self) -> None:
        self.steps = 0
        self.started = threading.Event()
        self.ended: str | None = None

    def __call__(self, checkpoint: Checkpoint) -> int:
        self.started.set()
        try:
            while self.steps < 1000:
                time.sleep(0.01)
                self.steps += 1
                checkpoint()
        except BaseException as exc:
            self.ended = type(exc).__name__
            raise
        self.ended = "done"
        return self.steps


async def test_the_result_comes_back() -> None:
    assert await run_stoppable(lambda checkpoint: 42) == 42


async def test_an_anyio_cancellation_stops_the_job_at_its_next_checkpoint() -> None:
    job = Job()
    with anyio.move_on_after(0.1):
        await run_stoppable(job)
    assert job.ended == "CancelledError"
    assert job.steps < 100


@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout"])
async def test_a_native_asyncio_cancellation_waits_until_the_job_has_stopped(how: str) -> None:
    job = Job()
    if how == "task.cancel":
        task = asyncio.create_task(run_stoppable(job))
        await anyio.to_thread.run_sync(job.started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await run_stoppable(job)
    # Not abandoned: the job has already seen the cancellation and cleaned up.
    assert job.ended == "_Stopped"
    steps = job.steps
    await asyncio.sleep(0.05)
    assert job.steps == steps


async def test_a_job_cancelled_before_its_thread_starts_never_runs() -> None:
    job = Job()
    limiter = anyio.to_thread.current_default_thread_limiter()  # this test's loop only
    limiter.total_tokens = 1
    async with limiter:  # no thread token left: the job waits for one
        task = asyncio.create_task(run_stoppable(job))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert job.ended is None and not job.started.is_set()
