"""Local disk faults: ENOSPC and EACCES give a clear ``BackendError``, no
partial file and no temporary file.

Three ways to make the disk fail, from the most controlled to the most real:

* **injected** (always runs): the ``OSError`` is raised at one precise step
  of the local backend (creating the temporary file, a write, fsync,
  creating the object's directory, the final rename, opening for read,
  unlinking), by replacing ``open``, ``_write_all`` or the ``os`` functions
  *as seen by* ``granite_storage.backends.local`` (a stand-in ``os`` module,
  so nothing else in the process is affected);
* **a tiny filesystem** (a 1 MiB tmpfs; needs root and a kernel that lets
  this process mount, which this sandbox and CI do): the kernel's own ENOSPC
  when the disk is full. Skipped where mounting is refused, with the reason;
* **real permissions** (a child process that dropped root's
  ``CAP_DAC_OVERRIDE``, see :mod:`tests.reliability.unprivileged_disk`): the
  kernel's own EACCES on read-only directories and unreadable files, since
  tests run as root and chmod alone does not stop root.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import pytest

from granite_storage import StorageManager, StoredObjectRef
from granite_storage.backends import local as local_module
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.errors import BackendError
from granite_storage.testing import manager_for
from tests.reliability.conftest import Figures
from tests.reliability.scale import SCALE

pytestmark = pytest.mark.timeout(SCALE.timeout)

REPO_ROOT = Path(__file__).resolve().parents[2]
KiB, MiB = 1024, 1024 * 1024
ERRNOS = [errno.ENOSPC, errno.EACCES]


def manager_on(root: Path, *, fsync: bool = True) -> StorageManager:
    backend = LocalStorageBackend(root, fsync=fsync)
    return manager_for(backend, "docs", backend_key="local", chunk_size=256 * KiB)


async def put(manager: StorageManager, data: bytes) -> StoredObjectRef:
    return await manager.aput_stream(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", stream=data
    )


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` (temporary files included), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def afiles_under(root: Path) -> list[str]:
    return await anyio.to_thread.run_sync(files_under, root)


def assert_clear_error(error: BaseException, code: int) -> None:
    assert isinstance(error, BackendError)
    assert error.status_code == 500
    assert os.strerror(code) in str(error)
    assert isinstance(error.__cause__, OSError)
    assert error.__cause__.errno == code


# --------------------------------------------------------------------------- injected


class FailingOs(ModuleType):
    """``os`` as the local backend sees it, with ``name`` raising ``error``
    for paths under ``root`` (every call when the function takes no path)."""

    def __init__(self, name: str, code: int, root: Path) -> None:
        super().__init__("os")
        self._name, self._code, self._root = name, code, str(root)
        self.failures = 0

    def __getattr__(self, attr: str) -> Any:
        real = getattr(os, attr)
        if attr != self._name:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            paths = [a for a in args if isinstance(a, str)]
            if not paths or any(p.startswith(self._root) for p in paths):
                self.failures += 1
                raise OSError(self._code, os.strerror(self._code), paths[0] if paths else None)
            return real(*args, **kwargs)

        return failing


def failing_open(mode: str, code: int, counter: list[int]) -> Callable[..., Any]:
    def fake(file: Any, file_mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if file_mode == mode:
            counter.append(1)
            raise OSError(code, os.strerror(code), file)
        return builtins.open(file, file_mode, *args, **kwargs)

    return fake


def failing_write(code: int, on_call: int, counter: list[int]) -> Callable[[Any, bytes], None]:
    real = local_module._write_all

    def fake(file: Any, chunk: bytes) -> None:
        counter.append(1)
        if len(counter) == on_call:
            raise OSError(code, os.strerror(code))
        real(file, chunk)

    return fake


WRITE_STEPS = ["create-temp", "first-write", "later-write", "fsync", "make-directory", "rename"]


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("step", WRITE_STEPS)
async def test_injected_write_fault_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, code: int, figures: Figures
) -> None:
    root = tmp_path / "storage"
    manager = manager_on(root)
    # The backend makes its root on first use; make it now, so that the fault
    # hits the step under test and not that set-up.
    assert not await manager.aexists(StoredObjectRef("docs", "local", "docs/warm-up", 0, ""))
    data = os.urandom(MiB)  # four chunks of 256 KiB
    counter: list[int] = []
    fake_os: FailingOs | None = None
    if step == "create-temp":
        monkeypatch.setattr(local_module, "open", failing_open("xb", code, counter), raising=False)
    elif step in ("first-write", "later-write"):
        on_call = 1 if step == "first-write" else 3
        monkeypatch.setattr(local_module, "_write_all", failing_write(code, on_call, counter))
    else:
        name = {"fsync": "fsync", "make-directory": "mkdir", "rename": "replace"}[step]
        fake_os = FailingOs(name, code, root)
        monkeypatch.setattr(local_module, "os", fake_os)

    with pytest.raises(BackendError) as caught:
        await put(manager, data)
    assert_clear_error(caught.value, code)
    assert (fake_os.failures if fake_os is not None else len(counter)) >= 1  # the step was hit
    figures.uploads, figures.faults = 2, 1  # this one and the one after recovery
    leftovers = await afiles_under(root)
    figures.leftovers = len(leftovers)
    assert leftovers == []  # no partial object, no temporary file

    monkeypatch.undo()  # the disk recovers: the backend is not wedged
    ref = await put(manager, data)
    assert await manager.aget(ref, verify=True) == data
    assert await afiles_under(root) == [ref.location]


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
async def test_injected_read_and_delete_faults_are_backend_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, figures: Figures
) -> None:
    root = tmp_path / "storage"
    manager = manager_on(root)
    data = os.urandom(100 * KiB)
    ref = await put(manager, data)

    monkeypatch.setattr(local_module, "open", failing_open("rb", code, []), raising=False)
    with pytest.raises(BackendError) as caught:
        await manager.aget(ref)
    assert_clear_error(caught.value, code)  # not ObjectNotFoundError: the object is there
    monkeypatch.undo()

    monkeypatch.setattr(local_module, "os", FailingOs("unlink", code, root))
    with pytest.raises(BackendError) as caught:
        await manager.adelete(ref)
    assert_clear_error(caught.value, code)
    monkeypatch.undo()
    figures.uploads, figures.faults = 1, 2
    assert await manager.aget(ref, verify=True) == data  # still whole


# --------------------------------------------------------------------------- a tiny filesystem


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A freshly mounted 1 MiB tmpfs; skipped where this process cannot mount."""
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount(8) on PATH: the kernel ENOSPC test needs it")
    point = Path(tempfile.mkdtemp(prefix="granite-tiny-disk-"))
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): ENOSPC is injected only")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        shutil.rmtree(point, ignore_errors=True)


def used_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


async def test_a_full_disk_is_a_clear_error_and_frees_what_it_took(
    tiny_disk: Path, figures: Figures
) -> None:
    manager = manager_on(tiny_disk)
    first = os.urandom(700 * KiB)
    kept = await put(manager, first)
    used_before = await anyio.to_thread.run_sync(used_bytes, tiny_disk)

    with pytest.raises(BackendError) as caught:
        await put(manager, os.urandom(600 * KiB))  # does not fit next to the first
    assert_clear_error(caught.value, errno.ENOSPC)
    figures.uploads, figures.faults = 2, 1

    assert await afiles_under(tiny_disk) == [kept.location]  # no partial file, no temp file
    assert await anyio.to_thread.run_sync(used_bytes, tiny_disk) == used_before
    assert await manager.aget(kept, verify=True) == first
    small = await put(manager, b"still works")  # room is left: the disk was not wedged
    assert await manager.aget(small) == b"still works"


# --------------------------------------------------------------------------- real permissions


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside pytest's private tmp tree, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="granite-eacces-"))
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            if sub.is_dir():
                sub.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


def prepare_storage(root: Path, *, key_prefix: str = "docs") -> None:
    (root / key_prefix).mkdir(parents=True)


def test_real_permission_errors_are_clear_and_leave_nothing(
    shared_dir: Path, figures: Figures
) -> None:
    roots = {name: shared_dir / name for name in ("temp", "target", "read", "delete")}
    for root in roots.values():
        prepare_storage(root)
    # The target's directory exists and is read-only: no temporary file can be made in it.
    (roots["temp"] / "docs/m/1/f").mkdir(parents=True)
    (roots["temp"] / "docs/m/1/f").chmod(0o555)
    (roots["target"] / "docs").chmod(0o555)  # docs/m/1/f/ cannot be made
    location = "docs/m/1/f/object.bin"
    for name in ("read", "delete"):
        (roots[name] / location).parent.mkdir(parents=True)
        (roots[name] / location).write_bytes(b"payload")
    (roots["read"] / location).chmod(0o000)
    (roots["delete"] / location).parent.chmod(0o555)

    scenarios = {
        "put-temp-denied": {"kind": "put", "root": str(roots["temp"]), "key_prefix": "docs"},
        "put-target-denied": {"kind": "put", "root": str(roots["target"]), "key_prefix": "docs"},
        "read-denied": {"kind": "read", "root": str(roots["read"]), "location": location},
        "delete-denied": {"kind": "delete", "root": str(roots["delete"]), "location": location},
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability.unprivileged_disk", json.dumps(scenarios)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    if lines and "unsupported" in lines[0]:
        pytest.skip(f"cannot drop root's permission override here: {lines[0]['unsupported']}")
    results = {line.pop("scenario"): line for line in lines}
    figures.uploads, figures.faults = 2, len(results)

    denied = os.strerror(errno.EACCES)
    for name in scenarios:
        assert results[name]["error"] == "BackendError", (name, results[name])
        assert results[name]["errno"] == errno.EACCES, (name, results[name])
        assert denied in results[name]["message"], (name, results[name])
    leftovers = files_under(roots["temp"]) + files_under(roots["target"])
    figures.leftovers = len(leftovers)
    assert leftovers == []  # neither a partial object nor a temporary file
    assert files_under(roots["delete"]) == [location]  # the refused delete kept it
    assert hashlib.sha256((roots["delete"] / location).read_bytes()).hexdigest() == (
        hashlib.sha256(b"payload").hexdigest()
    )
