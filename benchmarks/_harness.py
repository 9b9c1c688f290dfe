"""Timing and peak-memory measurement of workloads, each run in a fresh child process.

A *workload* is a function ``workload(timer, **kwargs)`` (sync or async) in a
``benchmarks`` module. It prepares what it needs, wraps the part to measure in
``with timer:``, cleans up, and may return extra figures as a dict of floats.
:func:`run_child` runs it once in a new interpreter started with
``python -m benchmarks._child``; :meth:`benchmarks._context.Context.compare`
repeats that for several workloads, interleaved, into :class:`Samples`.

Memory is the growth of the child's peak RSS over the measured region: the
kernel's peak counter (``VmHWM``) is reset just before the region by writing
``5`` to ``/proc/self/clear_refs``, so what the setup allocated and freed does
not count. Where that is impossible, ``ru_maxrss`` gives an approximation.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "MIB",
    "ChildError",
    "ChildResult",
    "EmptyDir",
    "Samples",
    "Timer",
    "cpu_seconds",
    "flush_dirty_pages",
    "peak_rss",
    "read_into_page_cache",
    "reset_peak_rss",
    "rss",
    "run_child",
]

MIB = 1024 * 1024
#: The prefix of the one stdout line a child uses to report its result.
RESULT_MARKER = "@@granite-bench-result@@"
#: The directory that holds the ``benchmarks`` package (the project root).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# -- memory of a process (this one or another, by pid) -----------------------


def _status_kib(field_name: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss(pid: int | str = "self") -> int:
    """The resident set size of process ``pid`` in bytes (0 if unknown)."""
    kib = _status_kib("VmRSS", pid)
    return (kib or 0) * 1024


def peak_rss(pid: int | str = "self") -> int:
    """The peak resident set size of process ``pid`` in bytes since its
    start or the last :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM", pid)
    if kib is not None:
        return kib * 1024
    if pid == "self":  # no /proc: ru_maxrss is in KiB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of process ``pid`` (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset the kernel's peak-RSS counter of ``pid`` to its current RSS.

    Returns whether that worked (Linux 4.0+, and permission on ``pid``).
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# -- the state of the machine before a run ----------------------------------------


def flush_dirty_pages() -> None:
    """Write dirty pages out so one run's writeback does not slow the next."""
    if hasattr(os, "sync"):
        os.sync()


def read_into_page_cache(*paths: str | Path) -> None:
    """Read ``paths`` through, so the next run finds them in the page cache.

    Without it a run may read its source from disk: on VMs that reclaim idle
    page cache (DAMON), the same plain read+hash+write loop over a 512 MiB file
    took 0.22 s or 1.71 s, and the slow run showed 123,905
    ``workingset_refault_file`` pages (484 MiB of the source read again).
    """
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while file.read(MIB):
                pass


@dataclass(frozen=True)
class EmptyDir:
    """Empty ``path``, flush dirty pages and read ``warm`` into the page cache.

    Top-level dot-directories (a workload's temp directory, made at its
    set-up) are made again, empty: kept as they were, they grew by every
    file ever created in them (an ext4 directory never shrinks), and file
    creation in them slowed run after run, more for granite_storage's, which
    three of the small-files workloads share, than for the raw baselines'.

    Given as ``before_each``, the measurement child's :class:`Timer` runs it
    as the workload enters its measured region, after any set-up (a warm-up
    upload is deleted too), so every workload starts writing the same short
    time after the previous run's files were deleted. That
    time matters on VMs that hand freed memory back to the host: on the
    2-core VM this suite was built on, writing 512 MiB to a new file within
    0.5 s of deleting the last one ran at 3,540-4,240 MiB/s in 8 of 10 writes,
    and 2 s or more after it at 886-1,241 MiB/s in 15 of 15. A
    child that imports more (granite_storage, SQLAlchemy) started later after
    a reset done by the parent, and so wrote slower than the plain baseline.
    """

    path: str
    warm: tuple[str, ...] = ()
    #: Bytes the workload writes: a quarter more free memory is recycled
    #: last (see :func:`recycle_free_pages`).
    writes: int = 0

    def __call__(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                    if entry.name.startswith("."):  # the workload's temp dir: made again, empty
                        os.mkdir(entry.path)
                else:
                    os.unlink(entry.path)
        flush_dirty_pages()
        read_into_page_cache(*self.warm)
        recycle_free_pages(self.path, self.writes)


def recycle_free_pages(directory: str | Path, writes: int) -> None:
    """Write a quarter more than ``writes`` bytes to a scratch file in
    ``directory`` and delete it, so that the writes which follow find that
    much free memory the host backs.

    Some VMs report free guest memory to the host (virtio-balloon free page
    reporting) and reclaim idle page cache; the guest then pays for every
    page it touches again. On the 2-core VM this suite was built on, writing
    512 MiB (read+sha256+write, in-process) ran at 709-941 MiB/s with 0.2-0.4 s
    of system CPU right after another 512 MiB file was deleted, and at
    206-370 MiB/s with 0.95-2.14 s when 2-3 s had passed. Which child found
    warm memory decided large-upload rows (a sync-file upload at 314 MiB/s
    with 2.2 s of CPU, and 1,297 MiB/s with 0.8 s, in one run). Recycled just
    before the timer starts, every run writes into warm memory. The file is
    never flushed: deleting it drops its dirty pages, so no disk I/O follows.
    """
    if writes <= 0:
        return
    block = bytes(MIB)
    path = os.path.join(directory, ".recycle-free-pages")
    with open(path, "wb", buffering=0) as file:
        for _ in range(writes * 5 // 4 // MIB + 1):
            file.write(block)
    os.unlink(path)


# -- the child side ------------------------------------------------------------


class Timer:
    """The one measured region of a workload: ``with timer: ...``.

    On entry it runs ``reset`` (see :class:`EmptyDir`), collects garbage,
    resets the peak-RSS counter and starts the clocks; on exit it records
    :attr:`seconds`, :attr:`cpu_seconds` (the process's user+system CPU, all
    threads) and :attr:`rss_growth` (bytes the peak RSS rose above the RSS at
    entry). Neither clock counts the reset.

    :raises RuntimeError: if a workload enters it twice.
    """

    def __init__(self, reset: Callable[[], None] | None = None) -> None:
        self._reset = reset
        self.seconds: float | None = None
        self.cpu_seconds: float | None = None
        self.rss_growth: int | None = None
        #: False when the peak counter could not be reset: the growth is then
        #: measured against the process's earlier peak and may be too low.
        self.exact_memory = True
        self._entered = False
        self._start = 0.0
        self._cpu_start = 0.0
        self._baseline = 0

    def __enter__(self) -> Timer:
        if self._entered:
            raise RuntimeError("a workload measures exactly one region; the timer was reused")
        self._entered = True
        if self._reset is not None:
            self._reset()
        gc.collect()
        self.exact_memory = reset_peak_rss()
        self._baseline = rss() if self.exact_memory else max(rss(), peak_rss())
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start
        self.rss_growth = max(0, peak_rss() - self._baseline)


# -- the parent side -----------------------------------------------------------


class ChildError(RuntimeError):
    """A child process failed; the message holds the end of its stderr."""


@dataclass(frozen=True)
class ChildResult:
    """What one run of a workload measured."""

    seconds: float
    rss_growth: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Samples:
    """The results of several runs of one workload."""

    results: list[ChildResult]

    @property
    def seconds(self) -> float:
        """The median duration of the measured region."""
        return statistics.median(r.seconds for r in self.results)

    @property
    def rss_growth(self) -> int:
        """The largest peak-RSS growth of all runs (memory is judged by the worst run)."""
        return max(r.rss_growth for r in self.results)

    def extra(self, name: str) -> float:
        """The median of an extra figure the workload returned.

        :raises KeyError: if a run did not return ``name``.
        """
        return statistics.median(r.extra[name] for r in self.results)


def run_child(
    target: str,
    kwargs: Mapping[str, Any],
    *,
    legacy_path: Path | None = None,
    reset: EmptyDir | None = None,
    timeout: float = 900.0,
) -> ChildResult:
    """Run ``target`` (``"benchmarks.module:function"``) once in a new interpreter.

    :param legacy_path: a directory holding granite-storage 0.1.0's
        ``granite_storage`` package, put first on the child's ``sys.path``.
    :param reset: run in the child after its imports, before ``target``.
    :raises ChildError: if the child fails, times out or reports nothing.
    """
    request = {
        "target": target,
        "kwargs": dict(kwargs),
        "legacy_path": str(legacy_path) if legacy_path else None,
        "reset": dataclasses.asdict(reset) if reset else None,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks._child"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{target} did not finish within {timeout:.0f} s") from exc
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            data = json.loads(line[len(RESULT_MARKER) :])
            return ChildResult(
                seconds=float(data["seconds"]),
                rss_growth=int(data["rss_growth"]),
                extra={k: float(v) for k, v in (data.get("extra") or {}).items()},
            )
    tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
    raise ChildError(f"{target} failed (exit code {completed.returncode}):\n{tail}")
