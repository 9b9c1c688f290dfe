"""A spy on a backend instance: every primitive call, and every low-level
helper that touches the disk or opens the S3 client, is recorded before it runs.

The spy replaces the methods on the instance, so the backend's own public
methods (and their overrides) run unchanged and reach the recorded
primitives through ``self``. ``calls`` empty after an operation means that
operation did no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from granite_storage.contracts import StorageBackend

__all__ = ["RECORDED", "Call", "spy_on", "touched_locations"]

#: The primitives of the backend protocol, and the helpers every I/O of the
#: local backend (worker-thread functions) and of the S3 backend (its client) goes through.
RECORDED = (
    "aput_stream",
    "_aput",
    "_aopen",
    "_adelete",
    "_aexists",
    "aiter_objects",
    "_aiter_objects",
    "adelete_many",
    "_adelete_batch",
    "acleanup_leftovers",
    "_acleanup_leftovers",
    "apresigned_download_url",
    "_apresign_download",
    "apresigned_upload",
    "_apresign_upload",
    # LocalStorageBackend
    "_root",
    "_open_temp",
    "_commit",
    "_open_for_read",
    "_delete",
    "_exists",
    "_scan",
    "_cleanup_temp",
    # S3StorageBackend
    "aget_client",
)


#: Where each recorded method takes the location it acts on.
_LOCATION_ARGUMENT: dict[str, int | str] = {
    "aput_stream": "key",
    "_aput": 0,
    "_aopen": 0,
    "_adelete": 0,
    "_aexists": 0,
    "_open_for_read": 0,
    "_delete": 0,
    "_exists": 0,
    "_commit": 2,
}


@dataclass(frozen=True)
class Call:
    """One recorded call (the chunks of ``aput_stream`` are left out)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def location(self) -> Any:
        """The location this call acts on, if it takes one."""
        where = _LOCATION_ARGUMENT.get(self.name)
        if isinstance(where, str):
            return self.kwargs.get(where)
        if isinstance(where, int) and len(self.args) > where:
            return self.args[where]
        return None


def touched_locations(calls: Iterable[Call]) -> set[Any]:
    """Every location the recorded calls acted on."""
    return {call.location for call in calls if call.location is not None}


def spy_on(backend: StorageBackend) -> list[Call]:
    """Record every call of a :data:`RECORDED` method that ``backend`` has,
    before it runs; return the (live) list of calls."""
    calls: list[Call] = []
    for name in RECORDED:
        method = getattr(backend, name, None)
        if method is not None:
            setattr(backend, name, _recording(name, method, calls))
    return calls


def _recording(name: str, method: Callable[..., Any], calls: list[Call]) -> Callable[..., Any]:
    @functools.wraps(method)
    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(Call(name, args, {k: v for k, v in kwargs.items() if k != "chunks"}))
        return method(*args, **kwargs)

    return record
