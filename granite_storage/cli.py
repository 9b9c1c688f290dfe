"""The ``granite-storage`` command (also ``python -m granite_storage``).

``granite-storage gc MODULE:FACTORY --storage-key KEY [--delete] [--min-age 2h]
[--max-deletions N] [--quiet] [--json]`` collects the orphaned objects of one
policy. It is a dry run unless ``--delete`` is given.

``granite-storage migrate MODULE:FACTORY --storage-key KEY --to BACKEND_KEY
[--dry-run] [--concurrency N] [--quiet] [--json]`` copies one policy's
objects to another backend and rewrites their refs
(:func:`granite_storage.migrate.amigrate`). Its factory yields a third item,
the ``rewrite`` callable (``ref_rewriter(engine, Base.metadata)`` of the
SQLAlchemy integration): ``(manager, iter_references, rewrite)``.

The factory
-----------
``MODULE:FACTORY`` names a zero-argument callable, importable from the current
directory (or ``--app-dir``), that returns an **async context manager
yielding** ``(manager, iter_references)``: the ``StorageManager`` to collect
and the reference source of ``StorageGarbageCollector``. Whatever the factory
opens (engines, sessions, S3 clients) it closes on exit::

    @contextlib.asynccontextmanager
    async def storage():
        engine = create_async_engine(os.environ["DATABASE_URL"])
        async with StorageManager(backends=..., policies=...) as manager:
            async with AsyncSession(engine) as session:
                yield manager, lambda: iter_metadata_storage_refs(session, Base.metadata)
        await engine.dispose()

With the object ledger, the factory yields ``(manager, collector)`` instead:
a ``LedgerGarbageCollector`` built as the application builds it. ``gc`` then
runs its listing-free collection, and ``gc --audit`` its listing audit
(``aaudit``); ``--min-age`` and ``--max-deletions`` override the collector's
own for the run. A ready collector without a ``progress`` callback of its
own gets the command's progress lines.

Durations (``--min-age``) are an integer with a unit, ``30s``, ``15m``,
``2h``, ``1d``, ``1w``, or several of them (``1h30m``), or a bare number of
seconds (``0``, ``90``).

While it runs, a progress line goes to stderr at most once a second (unless
``--quiet``); the report goes to stdout at the end (as JSON with ``--json``).

Exit codes
----------
* 0: the run finished and nothing failed;
* 1: errors: a deletion (or the leftover cleanup) or a copy failed, or the run raised
  (a ``StorageError`` such as ``UnsafeCollectionError`` or an unknown
  storage key, a database error in the reference source, ...);
* 2: usage: bad arguments, or a factory that cannot be imported or does not
  follow the protocol above.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import IO, Any, Protocol, runtime_checkable

import anyio

from granite_storage.errors import FactoryError, StorageError
from granite_storage.gc import (
    GarbageCollectionProgress,
    GarbageCollectionReport,
    StorageGarbageCollector,
)
from granite_storage.gc._collector import BaseCollector
from granite_storage.manager import StorageManager
from granite_storage.migrate import MigrationProgress, MigrationReport, amigrate

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "FactoryError", "main", "parse_duration"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+)([smhdw])")

_EPILOG = """\
FACTORY protocol: a zero-argument callable returning an async context manager
that yields (manager, iter_references), for example
    @contextlib.asynccontextmanager
    async def storage():
        async with StorageManager(...) as manager, AsyncSession(engine) as session:
            yield manager, lambda: iter_metadata_storage_refs(session, Base.metadata)

exit codes:
  0  the run finished and nothing failed
  1  errors: a deletion or the leftover cleanup failed, or the run raised
     (a StorageError such as UnsafeCollectionError, a database error, ...)
  2  usage: bad arguments, or a factory that cannot be imported or does not
     follow the protocol
"""


def parse_duration(text: str) -> timedelta:
    """``"30s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1w"``, ``"1h30m"`` or bare seconds (``"0"``).

    :raises argparse.ArgumentTypeError: for anything else.
    """
    value = text.strip().lower()
    if value.isdigit():
        return timedelta(seconds=int(value))
    if value and _DURATION_PART.sub("", value) == "":
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
        return timedelta(seconds=seconds)
    raise argparse.ArgumentTypeError(
        f"invalid duration {text!r}: use a number with a unit, like 30s, 15m, 2h, 1d or 1h30m, "
        "or a number of seconds such as 0"
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``granite-storage`` command."""
    parser = argparse.ArgumentParser(
        prog="granite-storage",
        description="Maintenance commands for granite_storage.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gc = commands.add_parser(
        "gc",
        help="delete stored objects that no reference points at (dry run by default)",
        description=(
            "Collect the orphaned objects of one storage policy: list the objects under the "
            "policy's key prefix, read every reference from the factory's source, and delete "
            "the objects that no reference points at and that are older than --min-age. "
            "Nothing is deleted without --delete."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument(
        "factory",
        metavar="MODULE:FACTORY",
        help="import path of the factory, e.g. myapp.storage:gc_factory",
    )
    gc.add_argument("--storage-key", required=True, help="the policy to collect")
    gc.add_argument(
        "--delete",
        action="store_true",
        help="really delete the orphans (without it, only report what would be deleted)",
    )
    gc.add_argument(
        "--min-age",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="grace period: keep orphans younger than this (default 1h; e.g. 30s, 15m, 2h, 1d, 0)",
    )
    gc.add_argument(
        "--max-deletions",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="stop after deleting N objects (the report says the run stopped early)",
    )
    gc.add_argument(
        "--backend-key",
        default=None,
        metavar="KEY",
        help="collect the policy's prefix on this backend instead of the policy's own "
        "(a backend the policy's objects are moving from or to)",
    )
    gc.add_argument(
        "--delete-source",
        action="store_true",
        help="the last step of a move: on --backend-key, a backend the policy moved away "
        "from, objects whose refs now name another backend (rewritten by `migrate` once "
        "their copy was verified) count as orphans; still a dry run without --delete",
    )
    gc.add_argument(
        "--audit",
        action="store_true",
        help="with the object ledger (a factory yielding (manager, LedgerGarbageCollector)): "
        "run its listing audit, which also finds objects the ledger never knew; still a dry "
        "run without --delete",
    )
    gc.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument(
        "--progress-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="at most one progress line per this many seconds (default 1)",
    )
    gc.add_argument(
        "--app-dir",
        default=".",
        help="directory to import the factory's module from (default: the current directory)",
    )
    gc.set_defaults(command_parser=gc)  # usage errors found later print this command's usage
    migrate = commands.add_parser(
        "migrate",
        help="copy a policy's objects to another backend and rewrite their refs",
        description=(
            "Copy every object the policy's refs point to onto the backend registered as --to, "
            "verify each copy's sha256 against its ref, and make the refs name that backend, "
            "in small transactions. Resumable: a rerun skips what is done. Never deletes the "
            "source (once the policy is switched, `gc --backend-key OLD --delete-source` "
            "does, with the collector's safety rules). The factory yields (manager, "
            "iter_references, rewrite)."
        ),
    )
    migrate.add_argument("factory", metavar="MODULE:FACTORY", help="import path of the factory")
    migrate.add_argument("--storage-key", required=True, help="the policy to move")
    migrate.add_argument("--to", required=True, metavar="BACKEND_KEY", help="the target backend")
    migrate.add_argument("--dry-run", action="store_true", help="report what would be copied")
    migrate.add_argument(
        "--concurrency", type=_non_negative_int, default=4, metavar="N", help="copies at once"
    )
    migrate.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    migrate.add_argument("--json", action="store_true", help="print the report as JSON")
    migrate.add_argument("--progress-interval", type=float, default=1.0, metavar="SECONDS")
    migrate.add_argument("--app-dir", default=".", help="directory to import the factory from")
    migrate.set_defaults(command_parser=migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"granite-storage {args.command}"
    try:
        factory = load_factory(args.factory, app_dir=args.app_dir)
        report = anyio.run(_arun, args, factory)
    except FactoryError as exc:
        args.command_parser.error(str(exc))  # exits with EXIT_USAGE
    except StorageError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"{name}: error: the run failed (traceback above)", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return EXIT_OK if report.ok else EXIT_ERROR


def load_factory(spec: str, *, app_dir: str = ".") -> Callable[[], Any]:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted) and return the callable.

    :raises FactoryError: if the path is malformed, the module does not exist,
        the attribute is missing or is not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"factory {spec!r} must look like MODULE:FACTORY, e.g. myapp.gc:storage")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise FactoryError(
                f"cannot import module {module_name!r} of factory {spec!r} from {directory} or "
                "sys.path; check the spelling, or pass --app-dir"
            ) from exc
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FactoryError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise FactoryError(f"{spec!r} is a {type(target).__name__}, not a callable factory")
    return target  # type: ignore[no-any-return]


async def _arun(
    args: argparse.Namespace, factory: Callable[[], Any]
) -> GarbageCollectionReport | MigrationReport:
    if args.command == "migrate":
        return await _arun_migrate(args, factory)
    return await _arun_gc(args, factory)


def _open_factory(args: argparse.Namespace, factory: Callable[[], Any]) -> Any:
    context = factory()
    if not (hasattr(context, "__aenter__") and hasattr(context, "__aexit__")):
        if hasattr(context, "close"):
            with contextlib.suppress(Exception):
                context.close()  # a coroutine: do not leave it un-awaited
        raise FactoryError(
            f"{args.factory} returned a {type(context).__name__}, not an async context manager; "
            "decorate it with @contextlib.asynccontextmanager and yield (manager, iter_references)"
        )
    return context


async def _arun_migrate(args: argparse.Namespace, factory: Callable[[], Any]) -> MigrationReport:
    async with _open_factory(args, factory) as value:
        if not (isinstance(value, tuple) and len(value) == 3 and callable(value[2])):
            raise FactoryError(
                f"{args.factory} yielded {type(value).__name__} {value!r:.100}; for migrate it "
                "must yield (manager, iter_references, rewrite), rewrite being for example "
                "ref_rewriter(engine, Base.metadata) of granite_storage.integrations.sqlalchemy"
            )
        manager, iter_references = _unpack(args.factory, value[:2])
        printer = None if args.quiet else _ProgressPrinter(sys.stderr, args.progress_interval)
        return await amigrate(
            manager,
            iter_references,
            value[2],
            storage_key=args.storage_key,
            to=args.to,
            dry_run=args.dry_run,
            concurrency=max(1, args.concurrency),
            progress=printer,
        )


async def _arun_gc(args: argparse.Namespace, factory: Callable[[], Any]) -> GarbageCollectionReport:
    async with _open_factory(args, factory) as value:
        if isinstance(value, tuple) and len(value) == 3:
            value = value[:2]  # migrate's factory: the rewrite is not needed here
        collector = _collector(args, value)
        if args.audit:
            if not isinstance(collector, _Auditor):
                raise FactoryError(
                    f"--audit is the object ledger's audit: {args.factory} must yield "
                    "(manager, LedgerGarbageCollector(manager, ledger, engine, "
                    "reference_metadata=Base.metadata)); without the ledger, gc lists the "
                    "backend already"
                )
            if args.backend_key is not None or args.delete_source:
                raise FactoryError("--audit collects the policy's own backend: drop --backend-key")
            return await collector.aaudit(
                storage_key=args.storage_key,
                dry_run=not args.delete,
                min_age=args.min_age,
                max_deletions=args.max_deletions,
            )
        return await collector.acollect(
            storage_key=args.storage_key,
            dry_run=not args.delete,
            min_age=args.min_age,
            max_deletions=args.max_deletions,
            backend_key=args.backend_key,
            delete_source=args.delete_source,
        )


@runtime_checkable
class _Auditor(Protocol):
    """A collector with the object ledger's listing audit (``LedgerGarbageCollector``)."""

    async def aaudit(
        self,
        *,
        storage_key: str,
        dry_run: bool = ...,
        min_age: timedelta | None = ...,
        max_deletions: int | None = ...,
    ) -> GarbageCollectionReport: ...


#: The command's collections report progress at least every this many refs or objects.
_PROGRESS_EVERY = 1000


def _collector(args: argparse.Namespace, value: object) -> BaseCollector:
    """The factory's collector, or a ``StorageGarbageCollector`` over its
    references, printing the command's progress lines (unless ``--quiet``, or
    a ready collector has a ``progress`` callback of its own)."""
    printer = None if args.quiet else _ProgressPrinter(sys.stderr, args.progress_interval)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], BaseCollector):
        if not isinstance(value[0], StorageManager) or value[1].manager is not value[0]:
            raise FactoryError(
                f"{args.factory} yielded a collector of another manager than the one it "
                "yielded with it; yield (manager, collector) built on that manager"
            )
        collector = value[1]
        if collector.progress is None and printer is not None:
            collector.progress, collector.progress_every = printer, _PROGRESS_EVERY
        return collector
    manager, iter_references = _unpack(args.factory, value)
    return StorageGarbageCollector(
        manager, iter_references, progress=printer, progress_every=_PROGRESS_EVERY
    )


def _unpack(spec: str, value: object) -> tuple[StorageManager, Any]:
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], StorageManager)
        and callable(value[1])
    ):
        return value[0], value[1]
    raise FactoryError(
        f"{spec} yielded {type(value).__name__} {value!r:.100}; it must yield a tuple "
        "(manager, iter_references): a StorageManager and a zero-argument callable returning "
        "the references (or, with the object ledger, (manager, LedgerGarbageCollector))"
    )


class _ProgressPrinter:
    """Writes a progress line to ``stream`` at most once per ``interval`` seconds."""

    def __init__(self, stream: IO[str], interval: float) -> None:
        self.stream = stream
        self.interval = interval
        self.last = time.monotonic()

    def __call__(self, progress: GarbageCollectionProgress | MigrationProgress) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        print(str(progress), file=self.stream, flush=True)
