"""Entry point of a measurement child: ``python -m benchmarks._child`` with a
JSON request on stdin (see :func:`benchmarks._harness.run_child`).

With ``legacy_path`` the directory of granite-storage 0.1.0 goes first on
``sys.path`` before anything imports ``granite_storage``, and the child checks
that the package it got is really that one.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from typing import Any

from benchmarks._harness import RESULT_MARKER, EmptyDir, Timer


def _load_legacy(path: str) -> None:
    sys.path.insert(0, path)
    import granite_storage

    location = os.path.realpath(granite_storage.__file__ or "")
    if not location.startswith(os.path.realpath(path) + os.sep):
        raise RuntimeError(f"expected granite-storage 0.1.0 from {path}, but imported {location}")


def main() -> None:
    request = json.loads(sys.stdin.read())
    if request.get("legacy_path"):
        _load_legacy(request["legacy_path"])
    module_name, _, function_name = request["target"].partition(":")
    workload = getattr(importlib.import_module(module_name), function_name)
    reset = request.get("reset")
    timer = Timer(EmptyDir(**{**reset, "warm": tuple(reset["warm"])}) if reset else None)
    kwargs: dict[str, Any] = request["kwargs"]
    if inspect.iscoroutinefunction(workload):
        extra = asyncio.run(workload(timer, **kwargs))
    else:
        extra = workload(timer, **kwargs)
    if timer.seconds is None or timer.cpu_seconds is None or timer.rss_growth is None:
        raise RuntimeError(f"{request['target']} never entered its timer")
    result = {
        "seconds": timer.seconds,
        "rss_growth": timer.rss_growth,
        "exact_memory": timer.exact_memory,
        "extra": {**(extra or {}), "cpu_seconds": timer.cpu_seconds},
    }
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
