"""The ``granite-storage gc`` command, run as ``python -m granite_storage`` in a subprocess
against examples/gc_factory.py (local disk + SQLite) on a temporary directory."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from granite_storage import StoredObjectRef
from granite_storage.cli import EXIT_USAGE, main, parse_duration
from tests.gc_support import CLI_ROOT_ENV, aset_mtime

pytest.importorskip("aiosqlite")

from examples.gc_factory import (
    DATABASE_ENV,
    ROOT_ENV,
    Base,
    Document,
    build_manager,
)

REPO = Path(__file__).resolve().parents[1]
FACTORY = "examples.gc_factory:storage"


class Site:
    """A seeded tmp dir: two referenced documents, two old orphans, one young orphan."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "storage"
        self.database_url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        self.referenced: list[StoredObjectRef] = []
        self.old_orphans: list[StoredObjectRef] = []
        self.young_orphan: StoredObjectRef | None = None

    async def aseed(self) -> None:
        engine = create_async_engine(self.database_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        manager = build_manager(self.root)
        Document.configure_storage_manager(manager)
        async with manager, AsyncSession(engine) as session:
            documents = [Document(title=f"doc {i}") for i in range(2)]
            session.add_all(documents)
            await session.flush()
            for document in documents:
                await document.aset_content(b"kept content", filename="kept.txt")
                assert document._file_ref is not None
                self.referenced.append(document._file_ref)
            await session.commit()
            for i in range(2):
                self.old_orphans.append(await self._aput_orphan(manager, f"orphan{i}"))
            self.young_orphan = await self._aput_orphan(manager, "young")
        await engine.dispose()
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        for ref in [*self.referenced, *self.old_orphans]:
            await aset_mtime(self.path(ref), two_hours_ago)

    @staticmethod
    async def _aput_orphan(manager: object, entity: str) -> StoredObjectRef:
        ref: StoredObjectRef = await manager.aput_bytes(  # type: ignore[attr-defined]
            storage_key="documents",
            model_name="document",
            entity_id=entity,
            field_name="file_ref",
            content=b"orphaned content",
        )
        return ref

    def path(self, ref: StoredObjectRef) -> Path:
        return self.root / ref.location

    async def aexisting(self) -> set[str]:
        refs = [*self.referenced, *self.old_orphans]
        if self.young_orphan is not None:
            refs.append(self.young_orphan)
        return {ref.location for ref in refs if await anyio.Path(self.path(ref)).exists()}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            ROOT_ENV: str(self.root),
            DATABASE_ENV: self.database_url,
            CLI_ROOT_ENV: str(self.root),
        }


@pytest.fixture
async def site(tmp_path: Path) -> Site:
    seeded = Site(tmp_path)
    await seeded.aseed()
    return seeded


async def run_cli(site: Site, *args: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "granite_storage", "gc", *args, "--app-dir", str(REPO)]
    result = await anyio.run_process(command, env=site.env(), cwd=site.root.parent, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_dry_run_exits_0_and_deletes_nothing(site: Site) -> None:
    code, out, err = await run_cli(site, FACTORY, "--storage-key", "documents")
    assert code == 0, err
    assert "dry run" in out
    assert "2 would be deleted" in out
    for ref in site.old_orphans:
        assert ref.location in out
    assert len(await site.aexisting()) == 5


async def test_delete_removes_old_orphans_only(site: Site) -> None:
    code, out, err = await run_cli(
        site, FACTORY, "--storage-key", "documents", "--delete", "--min-age", "1h", "--quiet"
    )
    assert code == 0, err
    assert err == ""  # --quiet: no progress lines
    assert "deleted            2" in out
    assert site.young_orphan is not None
    assert await site.aexisting() == {
        *(ref.location for ref in site.referenced),
        site.young_orphan.location,
    }


async def test_min_age_zero_and_json_report(site: Site) -> None:
    code, out, err = await run_cli(
        site, FACTORY, "--storage-key", "documents", "--delete", "--min-age", "0", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["deleted"] == 3
    assert report["referenced"] == 2
    assert report["min_age_seconds"] == 0
    assert await site.aexisting() == {ref.location for ref in site.referenced}


async def test_max_deletions_and_progress_lines(site: Site) -> None:
    code, out, err = await run_cli(
        site,
        FACTORY,
        "--storage-key",
        "documents",
        "--delete",
        "--max-deletions",
        "1",
        "--progress-interval",
        "0",
    )
    assert code == 0, err
    assert "stopped early" in out and "max_deletions=1" in out
    assert "gc documents: done:" in err
    assert len(await site.aexisting()) == 4


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module_here:storage", "cannot import module"),
        ("examples.gc_factory:no_such_factory", "has no attribute"),
    ],
)
async def test_a_bad_factory_path_exits_2(site: Site, factory: str, message: str) -> None:
    code, out, err = await run_cli(site, factory, "--storage-key", "documents", "--delete")
    assert code == EXIT_USAGE
    assert message in err
    assert out == ""
    assert len(await site.aexisting()) == 5


async def test_failed_deletions_exit_1_with_the_report(site: Site) -> None:
    code, out, err = await run_cli(
        site, "tests.gc_support:failing_storage", "--storage-key", "documents", "--delete"
    )
    assert code == 1, err
    assert "failed             4" in out  # the source yields no refs: 4 old orphans
    assert "simulated: permission denied" in out
    assert len(await site.aexisting()) == 5


async def test_a_storage_error_exits_1(site: Site) -> None:
    code, out, err = await run_cli(site, FACTORY, "--storage-key", "nope", "--delete")
    assert code == 1
    assert "unknown storage key 'nope'" in err
    assert out == ""


async def test_a_failing_reference_source_exits_1_and_deletes_nothing(
    site: Site, tmp_path: Path
) -> None:
    site.database_url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"  # no tables
    code, out, err = await run_cli(site, FACTORY, "--storage-key", "documents", "--delete")
    assert code == 1
    assert "no such table" in err
    assert out == ""
    assert len(await site.aexisting()) == 5


# --------------------------------------------------------------------------- in process


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gc", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "2  usage" in out
    assert "--min-age" in out and "--max-deletions" in out


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("examples.gc_factory", "MODULE:FACTORY"),
        ("tests.gc_support:not_a_context_manager", "not an async context manager"),
        ("tests.gc_support:yields_only_the_manager", "must yield a tuple"),
        ("tests.gc_support:CLI_ROOT_ENV", "not a callable factory"),
    ],
)
def test_a_factory_off_the_protocol_exits_2(
    factory: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gc", factory, "--storage-key", "documents", "--app-dir", str(REPO)])
    assert info.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "args",
    [
        ["gc", FACTORY],  # no --storage-key
        ["gc", FACTORY, "--storage-key", "documents", "--min-age", "2x"],
        ["gc", FACTORY, "--storage-key", "documents", "--max-deletions", "-3"],
        ["collect"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("90", timedelta(seconds=90)),
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(minutes=90)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "-1h", "1.5h", "2x", "1 h", "h1"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


# -- with the object ledger: the factory yields (manager, LedgerGarbageCollector) -------

LEDGER_FACTORY = "tests.cli_ledger_factory:storage"


async def test_a_ledger_collection_reads_the_ledger_and_lists_nothing(site: Site) -> None:
    # The orphans were written without the ledger: it has no row for them, so its
    # listing-free collection has no candidate and deletes nothing.
    code, out, err = await run_cli(
        site, LEDGER_FACTORY, "--storage-key", "documents", "--delete", "--min-age", "1h",
        "--json", "--progress-interval", "0",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert (report["scanned"], report["deleted"], report["dry_run"]) == (0, 0, False)
    # The ready collector had no progress callback: the command's lines are printed.
    assert "gc documents: sweep: 0 refs read, 0 scanned" in err
    assert "gc documents: done:" in err
    assert await site.aexisting() == {
        ref.location for ref in [*site.referenced, *site.old_orphans, site.young_orphan] if ref
    }


async def test_the_ledger_audit_deletes_old_orphans_it_never_knew(site: Site) -> None:
    dry = await run_cli(site, LEDGER_FACTORY, "--storage-key", "documents", "--audit", "--json")
    assert dry[0] == 0, dry[2]
    assert (json.loads(dry[1])["eligible"], json.loads(dry[1])["deleted"]) == (2, 0)
    code, out, err = await run_cli(
        site, LEDGER_FACTORY, "--storage-key", "documents", "--audit", "--delete",
        "--min-age", "1h", "--json", "--progress-interval", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "gc documents: references:" in err
    assert "gc documents: done: 2 refs read, 5 scanned, 3 orphans, 2 deleted" in err
    report = json.loads(out)
    assert (report["scanned"], report["referenced"], report["deleted"]) == (5, 2, 2)
    assert site.young_orphan is not None
    assert await site.aexisting() == {ref.location for ref in [*site.referenced, site.young_orphan]}


@pytest.mark.parametrize(
    ("factory", "extra", "message"),
    [
        (FACTORY, [], "--audit is the object ledger's audit"),
        (LEDGER_FACTORY, ["--backend-key", "local"], "drop --backend-key"),
        ("tests.cli_ledger_factory:foreign", [], "another manager"),
    ],
)
async def test_ledger_usage_errors_exit_2(
    site: Site, factory: str, extra: list[str], message: str
) -> None:
    args = [factory, "--storage-key", "documents", *extra]
    if "foreign" not in factory:
        args.append("--audit")
    code, _, err = await run_cli(site, *args)
    assert code == EXIT_USAGE
    assert message in err
