"""A complete FastAPI app that stores documents with granite_storage.

Files go to local disk, their refs to a SQL database through an
``AsyncSession`` and ``StoredContentMixin``. Uploads stream from the request
into storage while they arrive (nothing is spooled to a temporary file, and
an oversized upload is answered 413 before the rest is read); downloads
support ranges, ETags and ``HEAD``.

Run it::

    pip install "granite-storage[fastapi]" aiosqlite uvicorn
    uvicorn examples.fastapi_app:app

    curl -F title=Report -F file=@report.pdf http://127.0.0.1:8000/documents
    curl --data-binary @video.mp4 "http://127.0.0.1:8000/documents?filename=video.mp4"
    curl http://127.0.0.1:8000/documents
    curl -r 0-99 http://127.0.0.1:8000/documents/<id>/content

Configuration (environment variables):

* ``GRANITE_STORAGE_ROOT``: where files are stored (default ``./var/storage``);
* ``GRANITE_STORAGE_DATABASE_URL``: an async SQLAlchemy URL (default
  ``sqlite+aiosqlite:///./var/documents.db``; PostgreSQL works with
  ``postgresql+asyncpg://...``);
* ``GRANITE_STORAGE_MAX_SIZE``: the largest upload in bytes (default 100 MiB);
* ``GRANITE_STORAGE_FSYNC``: ``0`` to skip fsync (caches, tests; default ``1``).

Endpoints:

* ``POST /documents``: streaming upload, a multipart form (``file`` and an
  optional ``title``) or a raw body (name in ``?filename=``);
* ``POST /documents/uploadfile``: the same through FastAPI's ``UploadFile``
  (spooled by Starlette first; simpler, for small files);
* ``GET /documents``, ``GET /documents/{id}``: metadata;
* ``GET|HEAD /documents/{id}/content``: download (``?inline=true`` to display);
* ``PUT /documents/{id}/content``: replace the file (streaming);
* ``DELETE /documents/{id}``: delete the document and its file.

Run this file (``python examples/fastapi_app.py``) for an in-process demo in a
temporary directory.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import String, make_url, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import StorageManager, StoragePolicy, StoredObjectRef
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.fastapi import (
    install_exception_handlers,
    storage_response,
    stream_upload_to,
)
from granite_storage.integrations.sqlalchemy import (
    StoredContentMixin,
    StoredObjectRefType,
    drain_pending_deletions,
)

# --------------------------------------------------------------------------- model


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    """A title and one stored file, whose ref the ``file_ref`` column keeps."""

    __tablename__ = "document"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())
    title: Mapped[str] = mapped_column(String(200), default="")


class DocumentOut(BaseModel):
    id: uuid.UUID
    title: str
    filename: str | None
    content_type: str | None
    size: int | None
    checksum: str | None

    @classmethod
    def of(cls, doc: Document) -> DocumentOut:
        ref = doc.file_ref
        return cls(
            id=doc.id,
            title=doc.title,
            filename=ref.original_filename if ref else None,
            content_type=ref.content_type if ref else None,
            size=ref.size if ref else None,
            checksum=ref.checksum if ref else None,
        )


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    storage_root: Path
    database_url: str
    max_size: int = 100 * 1024 * 1024
    fsync: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            storage_root=Path(os.environ.get("GRANITE_STORAGE_ROOT", "./var/storage")),
            database_url=os.environ.get(
                "GRANITE_STORAGE_DATABASE_URL", "sqlite+aiosqlite:///./var/documents.db"
            ),
            max_size=int(os.environ.get("GRANITE_STORAGE_MAX_SIZE", 100 * 1024 * 1024)),
            fsync=os.environ.get("GRANITE_STORAGE_FSYNC", "1") != "0",
        )


def make_manager(settings: Settings) -> StorageManager:
    return StorageManager(
        backends={"local": LocalStorageBackend(settings.storage_root, fsync=settings.fsync)},
        policies={
            # delete_replaced: a replaced or cleared file is deleted once the
            # transaction that replaced it commits (else the GC removes it later).
            "documents": StoragePolicy(
                "documents", "local", max_size=settings.max_size, key_prefix="documents",
                delete_replaced=True,
            ),
        },
    )  # fmt: skip


# --------------------------------------------------------------------------- dependencies


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_manager(request: Request) -> StorageManager:
    manager: StorageManager = request.app.state.manager
    return manager


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[StorageManager, Depends(get_manager)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_document(doc_id: uuid.UUID, session: SessionDep) -> Document:
    doc = await session.get(Document, doc_id)
    if doc is None:
        raise HTTPException(404, f"no document {doc_id}")
    return doc


DocumentDep = Annotated[Document, Depends(get_document)]


# --------------------------------------------------------------------------- the app


def create_app(settings: Settings | None = None, manager: StorageManager | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment (see the module docstring).

    ``manager`` replaces the local-disk manager built from ``settings`` (to store
    on S3, say); it needs a ``"documents"`` policy, and its owner closes it.
    """
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = make_url(settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            await anyio.Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            # Closes the backends at shutdown (a manager passed in is its owner's to close).
            async with (
                nullcontext(manager) if manager is not None else make_manager(settings)
            ) as storage:
                Document.configure_storage_manager(storage)
                app.state.settings = settings
                app.state.manager = storage
                app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
                yield
        finally:
            await engine.dispose()

    app = FastAPI(title="granite_storage documents", lifespan=lifespan)
    install_exception_handlers(app)  # 413, 404, 400 ... from storage errors
    app.include_router(_routes())
    return app


def _routes() -> APIRouter:
    router = APIRouter()

    @router.post("/documents", status_code=201)
    async def upload(request: Request, session: SessionDep, settings: SettingsDep) -> DocumentOut:
        """Stream a multipart form (``file`` + ``title``) or a raw body into storage."""
        doc = Document()
        session.add(doc)
        await session.flush()  # the primary key names the file's location
        result = await stream_upload_to(
            request, doc.aset_content_from_stream, max_size=settings.max_size
        )
        doc.title = result.fields.get("title") or (result.ref.original_filename or "")
        await session.commit()  # had this failed, the rollback would delete the file
        return DocumentOut.of(doc)

    @router.post("/documents/uploadfile", status_code=201)
    async def upload_file(
        file: UploadFile, session: SessionDep, title: Annotated[str, Form()] = ""
    ) -> DocumentOut:
        """The same through FastAPI's ``UploadFile``, which Starlette has
        spooled to a temporary file before this runs."""
        doc = Document(title=title or file.filename or "")
        session.add(doc)
        await session.flush()
        await doc.aset_content_from_uploadfile(file)
        await session.commit()
        return DocumentOut.of(doc)

    @router.get("/documents")
    async def list_documents(session: SessionDep) -> list[DocumentOut]:
        docs = await session.scalars(select(Document).order_by(Document.title, Document.id))
        return [DocumentOut.of(doc) for doc in docs]

    @router.get("/documents/{doc_id}")
    async def get_metadata(doc: DocumentDep) -> DocumentOut:
        return DocumentOut.of(doc)

    @router.api_route("/documents/{doc_id}/content", methods=["GET", "HEAD"])
    async def download(
        doc: DocumentDep, request: Request, manager: ManagerDep, inline: bool = False
    ) -> Response:
        """The file, with Range, If-None-Match and HEAD support."""
        if doc.file_ref is None:
            raise HTTPException(404, f"document {doc.id} has no file")
        return await storage_response(
            manager, doc.file_ref, request, disposition="inline" if inline else "attachment"
        )

    @router.put("/documents/{doc_id}/content")
    async def replace(
        doc: DocumentDep, request: Request, session: SessionDep, settings: SettingsDep
    ) -> DocumentOut:
        """Replace the file; the old one is deleted once the change is committed."""
        result = await stream_upload_to(
            request, doc.aset_content_from_stream, max_size=settings.max_size
        )
        if "title" in result.fields:
            doc.title = result.fields["title"]
        await session.commit()
        await drain_pending_deletions(session)  # answer once the old file is gone
        return DocumentOut.of(doc)

    @router.delete("/documents/{doc_id}", status_code=204)
    async def delete(doc: DocumentDep, session: SessionDep) -> None:
        """Delete the document; its file goes once the deletion is committed."""
        doc.clear_content_reference()
        await session.delete(doc)
        await session.commit()
        await drain_pending_deletions(session)

    return router


app = create_app()


# --------------------------------------------------------------------------- demo


async def _demo() -> None:
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            storage_root=Path(tmp) / "storage",
            database_url=f"sqlite+aiosqlite:///{tmp}/documents.db",
            fsync=False,
        )
        demo_app = create_app(settings)
        transport = httpx.ASGITransport(app=demo_app)
        async with (
            demo_app.router.lifespan_context(demo_app),
            httpx.AsyncClient(transport=transport, base_url="http://demo") as client,
        ):
            created = await client.post(
                "/documents", data={"title": "Notes"}, files={"file": ("notes.txt", b"hello")}
            )
            doc = created.json()
            print("uploaded:", doc)
            part = await client.get(
                f"/documents/{doc['id']}/content", headers={"Range": "bytes=1-3"}
            )
            print("bytes 1-3:", part.status_code, part.content)
            await client.delete(f"/documents/{doc['id']}")
            print("after delete:", (await client.get("/documents")).json())


if __name__ == "__main__":
    anyio.run(_demo)
