"""The sync entry point in a script: store, read, stream, collect, with no event loop."""

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# --8<-- [start:manager]
from granite_storage.sync import (
    LocalStorageBackend,
    StorageGarbageCollector,
    StorageManager,
    StoragePolicy,
    StoredObjectRef,
    StoredObjectRefType,
    SyncInEventLoopError,
    iter_model_storage_refs,
)


def make_manager(root: str) -> StorageManager:
    return StorageManager(
        backends={"local": LocalStorageBackend(root)},
        policies={"docs": StoragePolicy("docs", "local", max_size=10 << 20, key_prefix="docs")},
    )


# --8<-- [end:manager]


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "document"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


def main(root: Path) -> None:
    # --8<-- [start:calls]
    with make_manager(str(root / "storage")) as manager:  # closed (loop and all) at the end
        ref = manager.put_bytes(
            storage_key="docs",
            model_name="document",
            entity_id=1,
            field_name="file",
            content=b"%PDF-1.7 hello",
            original_filename="report.pdf",
        )
        assert manager.get(ref, verify=True) == b"%PDF-1.7 hello"
        with manager.open(ref) as file:  # a binary file: read(n), readline, iteration
            assert file.read(8) == b"%PDF-1.7"

        source = root / "video.bin"
        source.write_bytes(b"\0" * (3 << 20))
        with source.open("rb") as file:  # read in chunks: memory stays bounded
            big = manager.put_stream(
                storage_key="docs", model_name="document", entity_id=2, field_name="file",
                stream=file, original_filename="video.bin",
            )  # fmt: skip
        print(big.size, big.content_type)  # 3145728 application/octet-stream
        # --8<-- [end:calls]

        # --8<-- [start:gc]
        engine = create_engine(f"sqlite:///{root / 'app.db'}")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Document(id=1, file_ref=ref))  # `big` has no row: an orphan
            session.commit()
            collector = StorageGarbageCollector(
                manager,
                iter_references=lambda: iter_model_storage_refs(session, Document, "file_ref"),
                min_age=timedelta(0),  # nothing else is uploading in this script
            )
            report = collector.collect(storage_key="docs", dry_run=False)
        print(report.scanned, report.orphaned, report.deleted)  # 2 1 1
        # --8<-- [end:gc]
        assert manager.exists(ref)
        assert not manager.exists(big)
        engine.dispose()

        # --8<-- [start:loop]
        async def handler() -> None:
            try:
                manager.get(ref)  # blocking call inside the event loop
            except SyncInEventLoopError as exc:
                print(exc)  # StorageManager.get() was called inside a running event loop, ...

        asyncio.run(handler())
        # --8<-- [end:loop]
    print("sync script: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
