"""Long jobs in worker threads stop, and are waited for, however their caller is cancelled."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import pytest

from granite_storage import _concurrency as concurrency
from granite_storage._concurrency import Checkpoint, CpuSlots, run_stoppable


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
    assert job.ended == "_Stopped"
    assert job.steps < 100
    steps = job.steps
    await asyncio.sleep(0.05)
    assert job.steps == steps


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


async def test_a_job_cancelled_before_its_thread_starts_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Job()
    busy = threading.Event()
    executor = ThreadPoolExecutor(1)
    monkeypatch.setattr(concurrency, "_executor", executor)
    executor.submit(busy.wait)  # no thread left: the job waits for one
    task = asyncio.create_task(run_stoppable(job))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    busy.set()
    executor.shutdown(wait=False)
    await anyio.to_thread.run_sync(executor.shutdown)  # the queued job would run by now
    assert job.ended is None and not job.started.is_set()


async def test_jobs_run_in_the_callers_context_on_the_job_threads() -> None:
    where: contextvars.ContextVar[str] = contextvars.ContextVar("where")
    where.set("caller")

    def job(checkpoint: Checkpoint) -> tuple[str, str]:
        return where.get(), threading.current_thread().name

    value, thread = await run_stoppable(job)
    assert value == "caller"
    assert thread.startswith("granite-storage")


def test_a_forked_child_gets_a_pool_of_its_own() -> None:
    parent = concurrency.job_executor()
    parent.submit(int).result()  # the parent's pool has a thread
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads do not exist here
        try:
            child = concurrency.job_executor()
            ok = child is not parent and child.submit(lambda: 42).result(timeout=5) == 42
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
    os.close(read)
    assert concurrency.job_executor() is parent


def test_cpu_slots_let_in_at_most_their_number_of_threads() -> None:
    slots = CpuSlots(2, patience=10)
    inside, most = 0, 0
    lock = threading.Lock()

    def copy() -> None:
        nonlocal inside, most
        gate = slots.gate()
        for _ in range(20):
            with gate:
                with lock:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=copy) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_a_stuck_slot_holder_holds_the_others_up_only_briefly() -> None:
    slots = CpuSlots(1, patience=0.02, give_up_after=3)
    holding, release = threading.Event(), threading.Event()

    def stuck() -> None:
        with slots.gate():
            holding.set()
            release.wait()

    thread = threading.Thread(target=stuck)
    thread.start()
    holding.wait()
    try:
        gate = slots.gate()
        started = time.perf_counter()
        for _ in range(50):
            with gate:
                pass
        waited = time.perf_counter() - started
    finally:
        release.set()
        thread.join()
    # three waits of 20 ms, then no more asking: not 50 of them (1 s)
    assert 0.05 < waited < 0.5
