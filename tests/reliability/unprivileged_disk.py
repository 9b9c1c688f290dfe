"""The child process of the real-EACCES test: local-disk operations that file
permissions forbid, run without root's power to ignore them.

Tests run as root in CI, and root passes every permission check through the
``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH`` and ``CAP_FOWNER`` capabilities.
When run as root, this process first drops those three from its own
capability sets (``capset(2)``, before any thread exists, so every worker
thread inherits the drop); it stays uid 0, so it can still import the code
it runs. It then checks the drop took effect, and prints one JSON line per
scenario::

    python -m tests.reliability.unprivileged_disk '{"put-temp-denied": {"root": ...}, ...}'

Scenarios: ``put`` (store a small object through a manager; ``root`` and
``key_prefix``), ``read`` and ``delete`` (``root`` and ``location``). Each
line says which exception was raised (``null`` for none), its message, and
the ``errno`` of its ``__cause__``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from typing import Any

import anyio

from granite_storage import StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.testing import manager_for

_CAPABILITY_VERSION_3 = 0x20080522
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_permission_override() -> None:
    """Drop the capabilities that let root ignore file permissions, for good.

    :raises OSError: if ``capget``/``capset`` fail.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    mask = ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH) | (1 << _CAP_FOWNER))
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & mask & 0xFFFFFFFF)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def permissions_apply() -> bool:
    """Whether writing into a read-only directory is refused to this process."""
    with tempfile.TemporaryDirectory() as probe:
        os.chmod(probe, 0o555)
        try:
            with open(os.path.join(probe, "x"), "wb"):
                pass
        except PermissionError:
            return True
        finally:
            os.chmod(probe, 0o755)
    return False


async def run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    backend = LocalStorageBackend(spec["root"], fsync=True)
    policy = StoragePolicy("docs", "local", key_prefix=spec.get("key_prefix"))
    manager = manager_for(backend, policy, backend_key="local")
    try:
        if kind == "put":
            await manager.aput_bytes(
                storage_key="docs", model_name="m", entity_id=1, field_name="f", content=b"x" * 4096
            )
        else:
            ref = StoredObjectRef("docs", "local", spec["location"], 0, "")
            if kind == "read":
                await manager.aget(ref)
            else:
                await manager.adelete(ref)
    except Exception as exc:
        cause = exc.__cause__
        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "errno": cause.errno if isinstance(cause, OSError) else None,
        }
    return {"error": None, "message": "", "errno": None}


async def main(scenarios: dict[str, dict[str, Any]]) -> None:
    for name, spec in scenarios.items():
        result = await run(spec["kind"], spec)
        print(json.dumps({"scenario": name, **result}), flush=True)


if __name__ == "__main__":
    if os.geteuid() == 0:
        drop_permission_override()
    if not permissions_apply():
        print(json.dumps({"unsupported": "file permissions do not apply to this process"}))
        sys.exit(0)
    anyio.run(main, json.loads(sys.argv[1]))
