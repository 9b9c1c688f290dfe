"""``python -m benchmarks``: run the scenarios, print one table, write JSON.

See ``python -m benchmarks --help``. ``--quick`` runs everything in small
sizes (a smoke test of the suite, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._context import QUICK_SIZES, Context, Sizes
from benchmarks._legacy import LEGACY_VERSION, LegacyUnavailableError, legacy_package_dir
from benchmarks._report import Figure, Row, format_table, write_json


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    runner: str  # "module:function" returning list[Row]
    #: granite_storage modules the scenario needs; missing ones make it "not available".
    needs: tuple[str, ...] = ()
    #: Only run when asked for by name or by this flag.
    opt_in: bool = False


SCENARIOS = [
    Scenario("stream", "local stream upload", "benchmarks.local_upload:run_stream"),
    Scenario("concurrent", "concurrent local uploads", "benchmarks.local_upload:run_concurrent"),
    Scenario("small", "many small local uploads", "benchmarks.small_files:run"),
    Scenario(
        "sync",
        "sync entry point vs the async core",
        "benchmarks.sync_facade:run",
        ("granite_storage.sync",),
    ),
    Scenario("s3", "S3 upload through moto", "benchmarks.s3_upload:run",
             ("granite_storage.backends.s3",)),
    Scenario("gc-local", "GC of local objects", "benchmarks.gc_local:run",
             ("granite_storage.gc",)),
    Scenario("ledger", "GC with the object ledger", "benchmarks.ledger:run",
             ("granite_storage.integrations.sqlalchemy",)),
    Scenario("gc-s3", "GC of S3 objects", "benchmarks.gc_s3:run",
             ("granite_storage.gc", "granite_storage.backends.s3")),
    Scenario("fastapi", "FastAPI streaming upload", "benchmarks.fastapi_upload:run",
             ("granite_storage.integrations.fastapi",)),
    Scenario("migrate", "migrate local disk to S3", "benchmarks.migrate_local_to_s3:run",
             ("granite_storage.migrate", "granite_storage.backends.s3")),
    Scenario("detect", "content-type detection", "benchmarks.detect:run",
             ("granite_storage._detect",)),
    Scenario("gc-million", "GC of a million local objects", "benchmarks.gc_local:run_million",
             ("granite_storage.gc",), opt_in=True),
]  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark granite_storage against plain-Python baselines and "
        f"granite-storage {LEGACY_VERSION}; print a table and write JSON.",
    )
    keys = [s.key for s in SCENARIOS]
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run (default: all but opt-in ones): {', '.join(keys)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a smoke test of the suite in about a minute",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per workload, each in a fresh process; the median is "
        "reported (default 3, with --quick 1)",
    )
    parser.add_argument(
        "--million",
        action="store_true",
        help="also run gc-million (creating the files takes minutes)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results/latest.json"),
        help="the JSON file to write (default bench-results/latest.json)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where to create scratch files (default: the system temp dir)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "granite-storage-bench",
        help=f"where granite-storage {LEGACY_VERSION} is downloaded to",
    )
    parser.add_argument(
        "--legacy-path",
        type=Path,
        default=None,
        help=f"a directory that holds granite-storage {LEGACY_VERSION}'s "
        "package (instead of downloading it)",
    )
    parser.add_argument(
        "--no-legacy", action="store_true", help=f"do not measure granite-storage {LEGACY_VERSION}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    sizes = parser.add_argument_group("sizes (defaults: the issue's sizes, or --quick's)")
    full, quick = Sizes(), QUICK_SIZES
    for field in dataclasses.fields(Sizes):
        name = field.name
        sizes.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            metavar="N",
            help=f"default {getattr(full, name):,} (--quick: {getattr(quick, name):,})",
        )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(keys)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {keys}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK_SIZES if args.quick else Sizes()
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)
        if getattr(args, f.name) is not None
    }  # fmt: skip
    return dataclasses.replace(base, **overrides)


def missing_module(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:
            found = False
        if not found:
            return name
    return None


def unavailable_row(scenario: Scenario, reason: str) -> Row:
    return Row(scenario.title, "-", "", True, Figure.missing("granite_storage", reason))


def run_scenario(scenario: Scenario, ctx: Context) -> list[Row]:
    missing = missing_module(scenario.needs)
    if missing is not None:
        ctx.log(f"{scenario.key}: not available ({missing} does not exist yet)")
        return [unavailable_row(scenario, f"not available: no {missing}")]
    module_name, _, function_name = scenario.runner.partition(":")
    runner: Callable[[Context], list[Row]] = getattr(
        importlib.import_module(module_name), function_name
    )
    started = time.perf_counter()
    ctx.log(f"{scenario.key}: {scenario.title}")
    try:
        rows = runner(ctx)
    except Exception as exc:
        traceback.print_exc()
        return [unavailable_row(scenario, f"failed: {type(exc).__name__}: {exc}"[:160])]
    ctx.log(f"{scenario.key}: done in {time.perf_counter() - started:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = resolve_sizes(args)
    wanted = args.scenarios or [
        s.key for s in SCENARIOS if not s.opt_in or (s.key == "gc-million" and args.million)
    ]
    legacy_path: Path | None = None
    legacy_error: str | None = "--no-legacy"
    if not args.no_legacy:
        try:
            legacy_path = legacy_package_dir(args.cache_dir, args.legacy_path)
            legacy_error = None
        except LegacyUnavailableError as exc:
            legacy_error = str(exc)
            print(f"granite-storage {LEGACY_VERSION} is not available: {exc}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"note: the load average is {load_before:.1f}: other processes share the CPUs, "
              "so figures will be noisy", file=sys.stderr)  # fmt: skip
    work_dir = Path(tempfile.mkdtemp(prefix="granite-bench-", dir=args.work_dir))
    ctx = Context(sizes, args.runs, work_dir, legacy_path, legacy_error, million=args.million,
                  log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    started = time.perf_counter()
    rows: list[Row] = []
    selected = [s for s in SCENARIOS if s.key in wanted]
    try:
        with ctx.resources:
            for index, scenario in enumerate(selected):
                rows += run_scenario(scenario, ctx)
                if not args.keep and index < len(selected) - 1:
                    ctx.clean()
        elapsed = time.perf_counter() - started
        print(format_table(rows))
        meta = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_seconds": round(elapsed, 1),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
            "runs": args.runs,
            "quick": args.quick,
            "sizes": dataclasses.asdict(sizes),
            "legacy": {"version": LEGACY_VERSION, "path": str(legacy_path) if legacy_path else None,
                       "error": legacy_error},
        }  # fmt: skip
        write_json(args.output, rows, meta)
        print(f"\n{len(rows)} rows in {elapsed:.0f} s; JSON written to {args.output}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
