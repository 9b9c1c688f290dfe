"""What every scenario group gets: the sizes, a scratch directory, granite-storage
0.1.0's location, and a way to turn measured runs into table figures."""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    MIB,
    ChildError,
    ChildResult,
    EmptyDir,
    Samples,
    read_into_page_cache,
    run_child,
)
from benchmarks._report import Figure
from benchmarks._services import Server, moto_server

__all__ = [
    "Context",
    "Job",
    "Outcome",
    "Sizes",
    "empty_dir",
    "memory_mib",
    "per_second",
    "read_into_page_cache",
    "throughput_mib_s",
]

LEGACY_LABEL = "granite-storage 0.1.0"


@dataclass(frozen=True)
class Sizes:
    """Every size a scenario uses; ``--quick`` picks small ones, flags override."""

    upload_mib: int = 512
    concurrent_mib: int = 256
    concurrent_uploads: int = 4
    small_count: int = 2000
    small_kib: int = 64
    small_concurrency: int = 32
    s3_mib: int = 256
    gc_objects: int = 20_000
    gc_references: int = 10_000
    s3_gc_objects: int = 3000
    s3_gc_orphans: int = 1500
    fastapi_mib: int = 200
    million_objects: int = 1_000_000
    million_references: int = 500_000
    #: Runs of the million-object collection (each rewrites the deleted half).
    million_runs: int = 1
    migrate_objects: int = 2000
    migrate_kib: int = 64
    migrate_big_mib: int = 512
    migrate_concurrency: int = 4
    detect_calls: int = 2000


QUICK_SIZES = Sizes(
    upload_mib=32,
    concurrent_mib=16,
    small_count=200,
    s3_mib=24,
    gc_objects=1000,
    gc_references=500,
    s3_gc_objects=120,
    s3_gc_orphans=60,
    fastapi_mib=16,
    million_objects=20_000,
    million_references=10_000,
    migrate_objects=100,
    migrate_big_mib=16,
    detect_calls=100,
)


@dataclass
class Outcome:
    """The runs of one workload, or why they failed."""

    samples: Samples | None
    error: str | None = None

    def figure(
        self,
        label: str,
        per_run: Callable[[ChildResult], float],
        *,
        worst: bool = False,
        short: str = "",
    ) -> Figure:
        """A table figure: the median over runs of ``per_run`` (the largest
        with ``worst=True``, used for memory)."""
        if self.samples is None:
            return Figure.missing(label, self.error or "failed", short=short)
        values = [per_run(result) for result in self.samples.results]
        value = max(values) if worst else statistics.median(values)
        return Figure(label, value, [round(v, 4) for v in values], short=short)


def throughput_mib_s(nbytes: int) -> Callable[[ChildResult], float]:
    return lambda result: nbytes / MIB / result.seconds


def per_second(count: int) -> Callable[[ChildResult], float]:
    return lambda result: count / result.seconds


def memory_mib(result: ChildResult) -> float:
    return result.rss_growth / MIB


def seconds(result: ChildResult) -> float:
    return result.seconds


def extra(name: str, scale: float = 1.0) -> Callable[[ChildResult], float]:
    return lambda result: result.extra[name] * scale


@dataclass(frozen=True)
class Job:
    """A workload to measure: ``"benchmarks.module:function"`` and its arguments."""

    target: str
    kwargs: Mapping[str, Any]
    legacy: bool = False


@dataclass
class Context:
    """Shared by the scenario groups of one benchmark run."""

    sizes: Sizes
    runs: int
    work_dir: Path
    legacy_path: Path | None
    #: Why 0.1.0 is missing, when :attr:`legacy_path` is None.
    legacy_error: str | None = None
    million: bool = False
    log: Callable[[str], None] = print
    #: Closes the shared servers at the end of the benchmark run.
    resources: ExitStack = field(default_factory=ExitStack)
    _moto: Server | None = None

    def moto(self) -> Server:
        """moto's S3 server, shared by the S3 scenarios, started on first use
        (with test credentials in the environment until :attr:`resources` closes)."""
        if self._moto is None:
            self.log("  starting moto_server ...")
            self._moto = self.resources.enter_context(moto_server(self.work_dir))
        return self._moto

    def clean(self) -> None:
        """Remove the scenarios' scratch directories (the servers' logs stay)."""
        for child in self.work_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def scratch(self, name: str) -> Path:
        """A fresh, empty directory under the work directory."""
        path = self.work_dir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def run(
        self,
        target: str,
        kwargs: Mapping[str, Any],
        *,
        legacy: bool = False,
        before_each: Callable[[], None] | None = None,
        runs: int | None = None,
        timeout: float = 900.0,
    ) -> Outcome:
        """Measure one workload; see :meth:`compare`."""
        job = Job(target, kwargs, legacy=legacy)
        return self.compare({"": job}, before_each=before_each, runs=runs, timeout=timeout)[""]

    def compare(
        self,
        jobs: Mapping[str, Job],
        *,
        before_each: Callable[[], None] | None = None,
        runs: int | None = None,
        warmup: bool = False,
        timeout: float = 900.0,
    ) -> dict[str, Outcome]:
        """Measure several workloads, :attr:`runs` times each, interleaved
        and rotated (A, B, C, B, C, A, C, A, B, ...) so that slow spells of a
        shared machine, and whatever the run before leaves behind, hit them
        alike. Every run is a fresh child process.

        A job with ``legacy=True`` runs with granite-storage 0.1.0, or is
        reported as not available. A failing job is not run again.

        With ``warmup``, one more round runs first and is not counted: on the
        VM this suite was built on, the first 512 MiB upload after the scenario
        wrote its source ran at 188-278 MiB/s in six of six bench runs, and
        the later ones at up to 1,284 MiB/s.
        """
        results: dict[str, list[ChildResult]] = {name: [] for name in jobs}
        errors: dict[str, str] = {}
        for name, job in jobs.items():
            if job.legacy and self.legacy_path is None:
                errors[name] = "not available"  # the reason is in the log and the JSON
            else:
                self.log(f"  {job.target}{' [0.1.0]' if job.legacy else ''}")
        rounds = (runs or self.runs) + (1 if warmup else 0)
        order = list(jobs.items())
        for round_index in range(rounds):
            counted = not (warmup and round_index == 0)
            turn = round_index % len(order)
            for name, job in order[turn:] + order[:turn]:
                if name in errors:
                    continue
                reset = before_each if isinstance(before_each, EmptyDir) else None
                if before_each is not None and reset is None:
                    before_each()
                try:
                    result = run_child(
                        job.target,
                        job.kwargs,
                        legacy_path=self.legacy_path if job.legacy else None,
                        reset=reset,
                        timeout=timeout,
                    )
                except ChildError as exc:
                    self.log(f"    {job.target} FAILED: {exc}")
                    errors[name] = f"failed: {str(exc).splitlines()[-1][:120]}"
                    continue
                if counted:
                    results[name].append(result)
        return {
            name: Outcome(None, errors[name]) if name in errors else Outcome(Samples(results[name]))
            for name in jobs
        }

    @staticmethod
    def legacy_figure(
        outcome: Outcome, per_run: Callable[[ChildResult], float], *, worst: bool = False
    ) -> Figure:
        """0.1.0's figure from ``outcome``, labelled as such."""
        return outcome.figure(LEGACY_LABEL, per_run, worst=worst, short="0.1.0")


def empty_dir(path: Path, *, warm: tuple[Path, ...] = (), writes: int = 0) -> EmptyDir:
    """A ``before_each`` hook: empty ``path``, flush dirty pages, read the
    files in ``warm`` (the runs' sources) into the page cache, and recycle
    free memory for the ``writes`` bytes the workload will write (see
    :func:`~benchmarks._harness.recycle_free_pages`). The measurement child
    runs it itself, just before its workload (see :class:`EmptyDir`)."""
    return EmptyDir(str(path), tuple(str(p) for p in warm), writes)
