"""Sync and async engines and sessions, bridged once.

Everything in the integration that touches the database is written against a
sync ``Connection`` or ``Session`` and run through one of these: on the async
side inside ``run_sync`` (SQLAlchemy's greenlet bridge, on the event loop), on
the sync side in a worker thread, so a sync engine never blocks the loop.

A sync ``Session`` belongs to the thread that uses it (a ``sqlite://`` database
exists in one connection of one thread). When the mixin's blocking methods run
a coroutine for it, the calling thread waits in :func:`run_lending_this_thread`
and runs the ``Session``'s work itself, handed back by :func:`arun_in_session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, TypeAlias, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, Select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_object_session
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.exc import DetachedInstanceError

from granite_storage._concurrency import aiter_in_thread
from granite_storage.errors import ConfigurationError

T = TypeVar("T")

#: What the ref iterators read from.
Executor: TypeAlias = AsyncSession | AsyncConnection | AsyncEngine | Session | Connection | Engine


async def arun_on_connection(bind: Engine | AsyncEngine, work: Callable[[Connection], T]) -> T:
    """Run ``work(connection)`` on a new connection of ``bind``: through
    ``run_sync`` on an async engine, in a worker thread on a sync one."""
    if isinstance(bind, AsyncEngine):
        engine = bind
    elif bind.dialect.is_async:
        engine = AsyncEngine(bind)
    else:
        return await anyio.to_thread.run_sync(_run_on_sync_engine, bind, work)
    async with engine.connect() as conn:
        return await conn.run_sync(work)


def _run_on_sync_engine(bind: Engine, work: Callable[[Connection], T]) -> T:
    with bind.connect() as conn:
        return work(conn)


async def arun_in_session(instance: object, work: Callable[[Session], T]) -> T:
    """Run ``work(session)`` in the session ``instance`` belongs to: through
    ``AsyncSession.run_sync``; for a sync ``Session``, in the thread waiting in
    :func:`run_lending_this_thread` if there is one, else in a worker thread.

    :raises DetachedInstanceError: if ``instance`` belongs to no session.
    """
    async_session = async_object_session(instance)
    if async_session is not None:
        return await async_session.run_sync(work)
    session = object_session(instance)
    if session is None:
        raise DetachedInstanceError(
            f"{type(instance).__name__} belongs to no session, so nothing can be loaded for it"
        )
    caller = _caller.get()
    if caller is not None and caller.waiting:
        return await caller.arun(work, session)
    return await anyio.to_thread.run_sync(work, session)


class _CallerThread:
    """A thread blocked on a coroutine, running the sync work it hands back."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        #: False once the coroutine is done (a task it left behind gets a worker thread).
        self.waiting = True

    def serve(self, future: Future[T]) -> T:
        """Run the jobs handed back until ``future`` is done; its result."""

        def stop(_: object) -> None:
            self.waiting = False
            self._jobs.put(None)

        future.add_done_callback(stop)
        while (job := self._jobs.get()) is not None:
            job()
        return future.result()

    async def arun(self, work: Callable[[Session], T], session: Session) -> T:
        """``work(session)``, run by the waiting thread."""
        outcome: Future[T] = Future()

        def job() -> None:
            if not outcome.set_running_or_notify_cancel():
                return  # the coroutine was cancelled before the thread got to it
            try:
                outcome.set_result(work(session))
            except BaseException as exc:
                outcome.set_exception(exc)

        self._jobs.put(job)
        return await asyncio.wrap_future(outcome)


#: The thread waiting in run_lending_this_thread for the current coroutine.
_caller: ContextVar[_CallerThread | None] = ContextVar("granite_storage_caller", default=None)


def run_lending_this_thread(
    submit: Callable[[Callable[[], Coroutine[Any, Any, T]]], Future[T]],
    call: Callable[[], Coroutine[Any, Any, T]],
) -> T:
    """Start ``await call()`` with ``submit`` (on another thread's event loop)
    and wait for its result, running in this thread the work it does in a sync
    ``Session`` (:func:`arun_in_session`), which belongs to this thread."""
    caller = _CallerThread()

    async def lent() -> T:
        _caller.set(caller)  # in this task's own context
        return await call()

    return caller.serve(submit(lent))


async def aiter_batches(
    source: Executor, statement: Select[Any], batch_size: int
) -> AsyncIterator[Sequence[Any]]:
    """The first column of ``statement``'s rows, in lists of at most ``batch_size``
    (``yield_per``: a server-side cursor where the driver has one).

    An engine gives the iteration a connection of its own; a sync source is
    read in a worker thread, batch by batch.

    :raises ConfigurationError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    statement = statement.execution_options(yield_per=batch_size)
    if isinstance(source, AsyncEngine):
        async with source.connect() as conn:
            async for batch in aiter_batches(conn, statement, batch_size):
                yield batch
        return
    if isinstance(source, AsyncSession | AsyncConnection):
        result = (
            await source.stream_scalars(statement)
            if isinstance(source, AsyncSession)
            else (await source.stream(statement)).scalars()
        )
        try:
            async for partition in result.partitions(batch_size):
                yield partition
        finally:
            with anyio.CancelScope(shield=True):
                await result.close()
        return
    closers = contextlib.ExitStack()  # closed in a worker thread
    try:
        executor: Session | Connection = (
            closers.enter_context(await anyio.to_thread.run_sync(source.connect))
            if isinstance(source, Engine)
            else source
        )
        rows = await anyio.to_thread.run_sync(executor.execute, statement)
        closers.callback(rows.close)
        async for batch in aiter_in_thread(rows.scalars().partitions(batch_size)):
            yield batch
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(closers.close)
