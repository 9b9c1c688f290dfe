"""0.1.0's inline-text refs at every entry point, on one path each way.

Reading: the manager resolves such a ref to its text in memory, so
``aopen``, ``aget``, ``aexists``, ``adelete`` and the FastAPI download treat
it as any object and never reach a backend. Owning: ``ref.has_object`` is
false, so the transaction cleanup (commit and rollback) and the object ledger
never delete, sweep, protect or release anything for it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.sqlalchemy import drain_pending_deletions
from granite_storage.testing import manager_for
from tests.integrations.conftest import Env, SectionItem
from tests.integrations.ledger_support import TABLE, CountingBackend, Doc, LedgerEnv, amake_env

TEXT = "# Title\n\nBody ✓"
DATA = TEXT.encode()


def inline_ref(storage_key: str = "docs") -> StoredObjectRef:
    """A row of 0.1.0's text-to-ref migration, as a column loads it."""
    return StoredObjectRef.from_dict({"storage_key": storage_key, "legacy_inline_text": TEXT})


def test_an_inline_ref_has_no_object_and_the_size_of_its_text() -> None:
    ref = inline_ref()
    assert (ref.location, ref.has_object, ref.size) == ("", False, len(DATA))
    again = StoredObjectRef.from_dict(ref.to_dict())  # written back and read again
    assert again == ref and again.legacy_inline_text == TEXT and not again.has_object
    assert StoredObjectRef("docs", "memory", "docs/a", 1, "sha256:x").has_object
    neither = StoredObjectRef.from_dict({"storage_key": "docs"})  # no location, no text
    assert (neither.has_object, neither.legacy_inline_text, neither.size) == (False, None, 0)


# --------------------------------------------------------------------------- the manager


async def _read(manager: StorageManager, ref: StoredObjectRef, **kwargs: Any) -> bytes:
    async with manager.aopen(ref, **kwargs) as reader:
        return await reader.read()


ENTRY_POINTS: dict[str, tuple[Callable[[StorageManager, StoredObjectRef], Awaitable[Any]], Any]] = {
    "aget": (lambda m, r: m.aget(r), DATA),
    "aget(verify)": (lambda m, r: m.aget(r, verify=True), DATA),
    "aopen": (lambda m, r: _read(m, r), DATA),
    "aopen(range)": (lambda m, r: _read(m, r, start=2, end=7), DATA[2:7]),
    "aopen(past the end)": (lambda m, r: _read(m, r, start=len(DATA) + 1), b""),
    "aexists": (lambda m, r: m.aexists(r), True),
    "adelete": (lambda m, r: m.adelete(r), None),
}


@pytest.mark.parametrize("name", ENTRY_POINTS)
async def test_the_manager_answers_for_an_inline_ref_without_backend_io(name: str) -> None:
    call, expected = ENTRY_POINTS[name]
    backend = CountingBackend(MemoryStorageBackend())
    manager = manager_for(backend, "docs")
    assert await call(manager, inline_ref()) == expected
    assert await call(manager, inline_ref()) == expected  # adelete deleted nothing
    assert backend.calls == Counter()


async def test_an_inline_ref_refuses_a_bad_range_as_a_stored_object_does() -> None:
    manager = manager_for(MemoryStorageBackend(), "docs")
    stored = await manager.aput_bytes(
        storage_key="docs", model_name="m", entity_id=1, field_name="f", content=DATA
    )
    for ref in (stored, inline_ref()):
        assert await _read(manager, ref, start=2, end=7) == DATA[2:7]
        for start, end in ((-1, None), (5, 4)):
            with pytest.raises(ValueError, match="invalid byte range"):
                manager.aopen(ref, start=start, end=end)


# --------------------------------------------------------------------------- transactions


@pytest.fixture
async def sections(env: Env) -> AsyncIterator[CountingBackend]:
    """``SectionItem`` on a counting backend whose policy deletes replaced objects."""
    backend = CountingBackend(env.backend)
    manager = manager_for(
        backend,
        StoragePolicy("sections", "memory", key_prefix="sections", delete_replaced=True),
        backend_key="memory",
    )
    SectionItem.configure_storage_manager(manager)
    yield backend
    SectionItem.configure_storage_manager(env.manager)


async def test_commit_and_rollback_cleanup_delete_nothing_for_an_inline_ref(
    env: Env, sections: CountingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="granite_storage")
    async with env.sessions() as session:
        session.add_all([SectionItem(id=1, content_markdown=inline_ref("sections"))])
        session.add_all([SectionItem(id=2, content_markdown=inline_ref("sections"))])
        await session.commit()
        committed = await session.get_one(SectionItem, 1)
        result = await committed.areplace_content("# New")  # the policy deletes replaced
        assert result.previous_ref == inline_ref("sections")
        rolled_back = await session.get_one(SectionItem, 2)
        await session.commit()
        doomed = (await rolled_back.areplace_content("# Gone")).new_ref
        await session.flush()
        await session.rollback()
        await drain_pending_deletions(session)
        assert sections.deleted == [doomed.location]  # the rolled-back upload, nothing more
        assert await rolled_back.aget_content_text() == TEXT
        assert rolled_back.clear_content_reference() == inline_ref("sections")
        await session.commit()
        await drain_pending_deletions(session)
    assert sections.deleted == [doomed.location]
    assert await env.alocations() == {result.new_ref.location}
    assert not [r for r in caplog.records if repr("") in r.getMessage()], "a cleanup saw ''"


# --------------------------------------------------------------------------- the ledger


@pytest.fixture
async def lenv(db_engine: AsyncEngine) -> AsyncIterator[LedgerEnv]:
    env = await amake_env(db_engine, CountingBackend(MemoryStorageBackend()))
    env.configure(ledger=env.ledger, delete_replaced=True)
    yield env
    await env.adrain()


async def test_the_ledger_records_sweeps_and_releases_nothing_for_an_inline_ref(
    lenv: LedgerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="granite_storage")
    ledger_parameters: list[Any] = []  # of every statement on the ledger's table

    @event.listens_for(lenv.engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if TABLE.name in statement:
            ledger_parameters.extend(_flatten(parameters))

    backend = lenv.backend
    assert isinstance(backend, CountingBackend)
    async with lenv.session() as session:
        kept, replaced, deleted = Doc(file_ref=inline_ref()), Doc(), Doc(file_ref=inline_ref())
        session.add_all([kept, replaced, deleted])
        await session.flush()
        replaced.file_ref = inline_ref()  # written by an UPDATE: the flush sees it as added
        await session.commit()
        assert await lenv.arows() == {}
        new = await replaced.aset_content(b"v2")  # releases the inline ref: nothing to sweep
        assert kept.clear_content_reference() == inline_ref()
        await session.delete(deleted)
        await session.commit()
        await drain_pending_deletions(session)
    assert await lenv.arows() == {new.location: "live"}
    assert backend.deleted == [] and backend.calls["delete"] == 0
    assert await lenv.alocations() == {new.location}
    assert not [r for r in caplog.records if repr("") in r.getMessage()], "the ledger saw ''"
    assert new.location in ledger_parameters and "" not in ledger_parameters
    event.remove(lenv.engine.sync_engine, "before_cursor_execute", record)


def _flatten(parameters: Any) -> list[Any]:
    if isinstance(parameters, dict):
        return list(parameters.values())
    if isinstance(parameters, list | tuple):
        return [v for p in parameters for v in _flatten(p)]
    return [parameters]
