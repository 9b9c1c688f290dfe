"""Child-side helpers: managers of both versions, and the event-loop lateness ticker.

Everything imports granite_storage lazily: in a child started for 0.1.0 the
name ``granite_storage`` is the old package, reached through :func:`legacy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from granite_storage import StorageManager

__all__ = ["Ticker", "granite_local_manager", "legacy", "legacy_local_manager"]

STORAGE_KEY = "bench"


def granite_local_manager(
    root: str, *, fsync: bool, key_prefix: str = "bench", detect: bool = True
) -> StorageManager:
    """A manager with one policy, ``"bench"``, on a local backend at ``root``;
    ``detect`` is the policy's ``detect_content_type`` (on by default, as
    users get it)."""
    from granite_storage import StorageManager, StoragePolicy
    from granite_storage.backends.local import LocalStorageBackend

    return StorageManager(
        backends={"local": LocalStorageBackend(root, fsync=fsync)},
        policies={
            STORAGE_KEY: StoragePolicy(
                STORAGE_KEY, "local", key_prefix=key_prefix, detect_content_type=detect
            )
        },
    )


def legacy(module: str) -> ModuleType:
    """A module of granite-storage 0.1.0 (only in a child started with ``legacy=True``).

    :raises RuntimeError: if the loaded ``granite_storage`` is not 0.1.0.
    """
    package = importlib.import_module("granite_storage")
    if hasattr(package, "__version__"):  # 0.1.0 has none
        raise RuntimeError("this workload must run with granite-storage 0.1.0 (legacy=True)")
    return importlib.import_module(f"granite_storage.{module}")


def legacy_local_manager(root: str, *, key_prefix: str = "bench") -> Any:
    """A 0.1.0 manager with one policy, ``"bench"``, on its local backend at ``root``."""
    manager = legacy("manager")
    policies = legacy("policies")
    local = legacy("backends.local")
    return manager.StorageManager(
        backends={"local": local.LocalStorageBackend(root)},
        policies={STORAGE_KEY: policies.StoragePolicy(STORAGE_KEY, "local", None, key_prefix)},
    )


class Ticker:
    """A task that sleeps 1 ms in a loop and records how late it wakes up:
    the longest time anything held the event loop.

    ``async with Ticker() as ticker: ...`` then read :attr:`max_lateness`.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.max_lateness = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            lateness = time.perf_counter() - start - self.interval
            self.ticks += 1
            self.max_lateness = max(self.max_lateness, lateness)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # let it start
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
