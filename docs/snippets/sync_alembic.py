"""An Alembic data migration that moves a text column into stored objects, with the
sync manager (Alembic runs migrations synchronously)."""

import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from alembic.migration import MigrationContext
from alembic.operations import Operations

from granite_storage.sync import (
    LocalStorageBackend,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
    StoredObjectRefType,
    portable_storage_ref_type,
)

STORAGE_ROOT = Path("var/storage")  # in an application: from its settings


# --8<-- [start:migration]
def storage_manager() -> StorageManager:
    return StorageManager(
        backends={"local": LocalStorageBackend(STORAGE_ROOT)},
        policies={"notes": StoragePolicy("notes", "local", key_prefix="notes")},
    )


note = sa.table(
    "note",
    sa.column("id", sa.Integer),
    sa.column("body", sa.Text),
    sa.column("body_ref", StoredObjectRefType()),
)


def upgrade() -> None:
    op.add_column("note", sa.Column("body_ref", portable_storage_ref_type(), nullable=True))
    bind = op.get_bind()
    with storage_manager() as manager:
        rows = bind.execute(sa.select(note.c.id, note.c.body).where(note.c.body.is_not(None)))
        for note_id, body in rows.all():  # a large table: batches of ids instead
            ref = manager.put_bytes(
                storage_key="notes", model_name="note", entity_id=note_id, field_name="body",
                content=body.encode(), content_type="text/plain; charset=utf-8",
            )  # fmt: skip
            bind.execute(note.update().where(note.c.id == note_id).values(body_ref=ref))
    # If the migration fails from here on, the transaction rolls back and the objects
    # already written are orphans: the garbage collector removes them later.
    with op.batch_alter_table("note") as batch:
        batch.drop_column("body")


# --8<-- [end:migration]


def main(root: Path) -> None:
    global STORAGE_ROOT
    STORAGE_ROOT = root / "storage"
    engine = sa.create_engine(f"sqlite:///{root / 'app.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)"))
        conn.execute(sa.text("INSERT INTO note VALUES (1, 'first'), (2, NULL), (3, 'third')"))
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        upgrade()
    with engine.connect() as conn:
        refs = dict(conn.execute(sa.select(note.c.id, note.c.body_ref)).all())
        assert "body" not in {c["name"] for c in sa.inspect(conn).get_columns("note")}
    assert refs[2] is None
    with storage_manager() as manager:
        first, third = refs[1], refs[3]
        assert isinstance(first, StoredObjectRef)
        assert isinstance(third, StoredObjectRef)
        assert (manager.get(first), manager.get(third)) == (b"first", b"third")
    engine.dispose()
    print("sync alembic: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
