"""An Alembic operation adding a ref column with portable_storage_ref_type()."""

import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from granite_storage import portable_storage_ref_type


def upgrade(op: Operations) -> None:
    # --8<-- [start:upgrade]
    # In a migration file: `from alembic import op`, and in upgrade():
    op.add_column("document", sa.Column("file_ref", portable_storage_ref_type(), nullable=True))
    # --8<-- [end:upgrade]


def main(tmp: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp / 'app.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE document (id INTEGER PRIMARY KEY)"))
        upgrade(Operations(MigrationContext.configure(conn)))
        columns = {column["name"]: column for column in sa.inspect(conn).get_columns("document")}
    assert "file_ref" in columns
    assert isinstance(columns["file_ref"]["type"], sa.JSON)
    engine.dispose()
    print("alembic column: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
