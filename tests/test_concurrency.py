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

from granite_storage import _jobs as jobs
from granite_storage._concurrency import Checkpoint, CpuSlots, run_stoppable
from granite_storage._jobs import JobPool


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
    pool = JobPool(1)
    monkeypatch.setattr(jobs, "_pool", pool)
    blocker = pool.submit(asyncio.get_running_loop(), busy.wait)  # no thread left
    task = asyncio.create_task(run_stoppable(job))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    busy.set()
    await blocker
    # The queued job came next on the one thread, saw its caller gone and ended.
    await pool.submit(asyncio.get_running_loop(), lambda: None)
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
    async def answer(pool: JobPool) -> int:
        return await pool.submit(asyncio.get_running_loop(), lambda: 42)

    parent = jobs.job_pool()
    assert asyncio.run(answer(parent)) == 42  # the parent's pool has a thread
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads do not exist here
        try:
            child = jobs.job_pool()
            ok = child is not parent and asyncio.run(asyncio.wait_for(answer(child), 5)) == 42
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
    os.close(read)
    assert jobs.job_pool() is parent


async def test_the_pool_hands_back_results_and_errors() -> None:
    pool = JobPool(2)
    loop = asyncio.get_running_loop()
    assert await pool.submit(loop, threading.current_thread) is not threading.current_thread()
    with pytest.raises(ZeroDivisionError):
        await pool.submit(loop, lambda: 1 / 0)

    def stop() -> None:
        raise StopIteration  # an asyncio future refuses it as it is

    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(pool.submit(loop, stop), 5)


async def test_the_pool_reuses_idle_threads_and_starts_at_most_its_limit() -> None:
    pool = JobPool(3, name="test-pool")
    loop = asyncio.get_running_loop()
    for _ in range(5):  # one after another: the first thread does them all
        await pool.submit(loop, int)
    assert pool._threads == 1
    gate = threading.Barrier(3, timeout=5)  # three jobs that only end together
    names = await asyncio.gather(
        *(pool.submit(loop, lambda: (gate.wait(), threading.current_thread().name)[1])
          for _ in range(3))
    )  # fmt: skip
    assert sorted(names) == ["test-pool-0", "test-pool-1", "test-pool-2"]
    busy = threading.Event()
    blocked = [pool.submit(loop, busy.wait) for _ in range(3)]
    late = pool.submit(loop, lambda: "ran")  # waits for a thread: no fourth one
    await asyncio.sleep(0.05)
    assert pool._threads == 3 and not late.done()
    busy.set()
    await asyncio.gather(*blocked)
    assert await late == "ran"
    with pytest.raises(ValueError, match="at least one thread"):
        JobPool(0)


async def test_a_cancelled_future_and_a_closed_loop_leave_the_threads_working() -> None:
    pool = JobPool(1)
    release = threading.Event()
    loop = asyncio.get_running_loop()
    cancelled = pool.submit(loop, release.wait)
    cancelled.cancel()
    release.set()

    other = asyncio.new_event_loop()
    gone = threading.Event()
    pool.submit(other, gone.wait)  # its loop closes before the job ends
    other.close()
    gone.set()
    assert await asyncio.wait_for(pool.submit(loop, lambda: "still here"), 5) == "still here"


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


def test_event_loops_in_two_threads_share_the_pool() -> None:
    # Results reach each loop's futures while the other loop settles its own.
    pool = JobPool(4)

    async def many() -> list[int]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            asyncio.gather(*(pool.submit(loop, lambda n=n: n) for n in range(3000))), 30
        )

    with ThreadPoolExecutor(2) as threads:
        runs = [threads.submit(asyncio.run, many()) for _ in range(2)]
        assert [run.result() for run in runs] == [list(range(3000))] * 2
