"""What every scenario group gets: the sizes, a scratch directory, granite-storage
0.1.0's location, and a way to turn measured runs into table figures."""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._harness import MIB, ChildError, ChildResult, Samples, run_child
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
        timeout: float = 900.0,
    ) -> dict[str, Outcome]:
        """Measure several workloads, :attr:`runs` times each, interleaved
        (A, B, C, A, B, C, ...) so that slow spells of a shared machine hit
        them alike. Every run is a fresh child process.

        A job with ``legacy=True`` runs with granite-storage 0.1.0, or is
        reported as not available. A failing job is not run again.
        """
        results: dict[str, list[ChildResult]] = {name: [] for name in jobs}
        errors: dict[str, str] = {}
        for name, job in jobs.items():
            if job.legacy and self.legacy_path is None:
                errors[name] = "not available"  # the reason is in the log and the JSON
            else:
                self.log(f"  {job.target}{' [0.1.0]' if job.legacy else ''}")
        for _ in range(runs or self.runs):
            for name, job in jobs.items():
                if name in errors:
                    continue
                if before_each is not None:
                    before_each()
                try:
                    results[name].append(
                        run_child(
                            job.target,
                            job.kwargs,
                            legacy_path=self.legacy_path if job.legacy else None,
                            timeout=timeout,
                        )
                    )
                except ChildError as exc:
                    self.log(f"    {job.target} FAILED: {exc}")
                    errors[name] = f"failed: {str(exc).splitlines()[-1][:120]}"
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


def flush_dirty_pages() -> None:
    """Write dirty pages out so one run's writeback does not slow the next."""
    if hasattr(os, "sync"):
        os.sync()


def read_into_page_cache(*paths: Path) -> None:
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


def empty_dir(path: Path, *, warm: tuple[Path, ...] = ()) -> Callable[[], None]:
    """A ``before_each`` hook: empty ``path``, flush dirty pages, and read the
    files in ``warm`` (the runs' sources) into the page cache."""

    def reset() -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        flush_dirty_pages()
        read_into_page_cache(*warm)

    return reset
