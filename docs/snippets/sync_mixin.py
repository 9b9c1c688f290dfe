"""StoredContentMixin's blocking methods (granite-storage 0.1.0's) with a sync Session."""

import tempfile
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# --8<-- [start:model]
from granite_storage.sync import (
    LocalStorageBackend,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
    drain_pending_deletions,
)


class Base(DeclarativeBase):
    pass


class Invoice(StoredContentMixin, Base):
    __tablename__ = "invoice"
    __stored_content_field_name__ = "pdf_ref"
    __stored_content_storage_key__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    pdf_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


def configure(root: Path) -> StorageManager:
    manager = StorageManager(  # the sync manager: the blocking methods run on its loop
        backends={"local": LocalStorageBackend(root / "storage")},
        policies={
            "invoices": StoragePolicy(
                "invoices", "local", max_size=10 << 20, key_prefix="invoices",
                delete_replaced=True,  # replaced PDFs are deleted after the commit
            )
        },
    )  # fmt: skip
    Invoice.configure_storage_manager(manager)
    return manager


# --8<-- [end:model]


def main(root: Path) -> None:
    engine = create_engine(f"sqlite:///{root / 'app.db'}")
    Base.metadata.create_all(engine)
    with configure(root) as manager:
        # --8<-- [start:session]
        with Session(engine) as session:
            invoice = Invoice(id=1)
            session.add(invoice)
            session.flush()  # the primary key names the object's location
            first = invoice.set_content(b"%PDF-1.7 v1", filename="invoice-1.pdf")
            session.commit()

            assert invoice.get_content() == b"%PDF-1.7 v1"
            with invoice.open_content() as file:  # a binary file; None without content
                assert file.read(8) == b"%PDF-1.7"

            result = invoice.replace_content(b"%PDF-1.7 v2", filename="invoice-1.pdf")
            assert result.previous_ref == first
            session.commit()  # first is deleted now: the policy opts in

            with (root / "upload.pdf").open("wb+") as upload:
                upload.write(b"%PDF-1.7 draft")
                upload.seek(0)
                draft = invoice.set_content_from_stream(upload, filename="draft.pdf")
            session.rollback()  # the draft's object is deleted, the ref is v2's again
            assert invoice.get_content() == b"%PDF-1.7 v2"

            drain_pending_deletions(session)  # tests and tasks: wait for those deletions
        # --8<-- [end:session]
        assert not manager.exists(first)
        assert not manager.exists(draft)
        assert manager.exists(result.new_ref)
    engine.dispose()
    print("sync mixin: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
