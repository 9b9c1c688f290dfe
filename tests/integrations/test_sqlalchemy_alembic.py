"""examples/alembic: the migrations run (SQLite through a sync URL, PostgreSQL
through asyncpg and ``run_sync``), rows migrated from text load and read back
their text through the mixin, and the schema matches the models."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from granite_storage import StoragePolicy
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.integrations.sqlalchemy import drain_pending_deletions
from granite_storage.testing import manager_for

alembic_command = pytest.importorskip("alembic.command")
alembic_config = pytest.importorskip("alembic.config")

# Alembic's async env pattern (env.py) runs the migrations inside asyncio.run() in the
# worker thread the tests hand alembic to, and reads its script files there: blockbuster
# sees a loop blocked, though it is alembic's private loop, not the test's.
pytestmark = pytest.mark.allow_blocking

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alembic"
TEXTS = {1: "# Title ✓\n\nBody", 2: None, 3: 'it\'s "quoted" \\ and\nmultiline'}


def _load_models() -> ModuleType:
    name = "granite_storage_example_alembic_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _config(engine: AsyncEngine) -> Any:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite")  # the sync driver, as a CLI user would
    config = alembic_config.Config(str(EXAMPLE / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False))
    config.attributes["configure_logger"] = False
    return config


async def _alembic(name: str, *args: Any) -> None:
    # Alembic reads files and, for asyncpg, runs its own event loop: a worker thread.
    await anyio.to_thread.run_sync(getattr(alembic_command, name), *args)


async def test_migrations_and_rows_migrated_from_text(db_engine: AsyncEngine) -> None:
    models = _load_models()
    config = _config(db_engine)
    await _alembic("upgrade", config, "0002_document_file_ref")
    async with db_engine.begin() as conn:
        for key, value in TEXTS.items():
            await conn.execute(
                text("INSERT INTO section_item (id, content_markdown) VALUES (:id, :text)"),
                {"id": key, "text": value},
            )
    await _alembic("upgrade", config, "head")

    manager = manager_for(
        MemoryStorageBackend(),
        StoragePolicy("documents", "main", key_prefix="docs"),
        "sections",
    )
    for model in (models.Document, models.SectionItem):
        model.configure_storage_manager(manager)
    sessions = async_sessionmaker(db_engine, expire_on_commit=False)
    async with sessions() as session:
        items = {item.id: item for item in (await session.scalars(_select(models.SectionItem)))}
        for key, value in TEXTS.items():
            assert await items[key].aget_content_text() == value
        assert items[1].content_markdown.legacy_inline_text == TEXTS[1]
        assert items[2].content_markdown is None
        # The migrated field moves to storage on its next write.
        ref = await items[1].aset_content("# Stored")
        doc = models.Document(id=1, title="report")
        session.add(doc)
        await doc.aset_content(b"%PDF", filename="r.pdf")
        await session.commit()
    await drain_pending_deletions(session)
    async with sessions() as session:
        item = await session.get(models.SectionItem, 1)
        assert item is not None
        assert item.content_markdown == ref
        assert await item.aget_content_text() == "# Stored"
        doc = await session.get(models.Document, 1)
        assert doc is not None
        assert await doc.aget_content() == b"%PDF"

    # Downgrading would lose the stored object's content: refused.
    with pytest.raises(RuntimeError, match="1 section_item rows hold stored objects"):
        await _alembic("downgrade", config, "0002_document_file_ref")
    async with sessions() as session:
        item = await session.get(models.SectionItem, 1)
        assert item is not None
        item.clear_content_reference()
        await session.commit()
    await _alembic("downgrade", config, "0002_document_file_ref")
    async with db_engine.connect() as conn:
        rows: dict[int, str | None] = dict(
            (await conn.execute(text("SELECT id, content_markdown FROM section_item"))).all()
        )
    assert rows == {1: None, 2: None, 3: TEXTS[3]}
    await _alembic("upgrade", config, "head")


async def test_schema_matches_the_models(db_engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    models = _load_models()
    await _alembic("upgrade", _config(db_engine), "head")

    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        with warnings.catch_warnings():
            # SQLite: SQLAlchemy cannot reflect expression indexes (alembic then skips them).
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expr")
            diffs: list[Any] = compare_metadata(context, models.Base.metadata)
            return diffs

    async with db_engine.connect() as conn:
        diffs = await conn.run_sync(compare)
    assert diffs == []


def _select(model: Any) -> Any:
    from sqlalchemy import select

    return select(model).order_by(model.id)


# SQLite cannot reflect the example's expression index; alembic says so and moves on.
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
async def test_autogenerate_renders_ref_columns_portably(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    config = _config(sqlite_engine)
    config.set_main_option("version_locations", str(tmp_path))  # an empty history
    await _alembic("revision", config, "all tables", True)  # autogenerate=True
    (script,) = [path async for path in anyio.Path(tmp_path).glob("*.py")]
    source = await script.read_text()
    assert "from granite_storage import portable_storage_ref_type" in source
    assert "sa.Column('file_ref', portable_storage_ref_type(), nullable=True)" in source
    assert "StoredObjectRefType" not in source
