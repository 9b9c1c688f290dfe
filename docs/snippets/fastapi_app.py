"""A FastAPI app: streamed uploads into a model, downloads with ranges and ETags, errors."""

import asyncio
import tempfile
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response, UploadFile
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    ObjectNotFoundError,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.fastapi import (
    install_exception_handlers,
    storage_response,
    stream_upload_to,
)

MAX_UPLOAD = 1 << 20


class Base(DeclarativeBase):
    pass


class Document(StoredContentMixin, Base):
    __tablename__ = "document"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(default="")
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


def create_app(manager: StorageManager, Session: async_sessionmaker[AsyncSession]) -> FastAPI:
    # --8<-- [start:app]
    app = FastAPI()
    install_exception_handlers(app)  # StorageError -> its status code and {"detail": ...}

    @app.post("/documents", status_code=201)
    async def upload(request: Request) -> dict[str, str]:
        # No UploadFile parameter: the body is streamed to storage as it arrives.
        async with Session() as session:
            doc = Document()
            session.add(doc)
            await session.flush()  # the primary key names the location
            upload = await stream_upload_to(
                request, doc.aset_content_from_stream, max_size=MAX_UPLOAD
            )
            doc.title = upload.fields.get("title", "")
            await session.commit()  # on failure the upload is deleted with the rollback
        return {"id": str(doc.id)}

    @app.api_route("/documents/{doc_id}/content", methods=["GET", "HEAD"])
    async def download(doc_id: uuid.UUID, request: Request) -> Response:
        async with Session() as session:
            doc = await session.get(Document, doc_id)
        if doc is None or doc.file_ref is None:
            raise ObjectNotFoundError(f"document {doc_id} has no content")  # -> 404
        return await storage_response(manager, doc.file_ref, request)

    # --8<-- [end:app]

    # --8<-- [start:uploadfile]
    @app.put("/documents/{doc_id}/content")
    async def replace(doc_id: uuid.UUID, file: UploadFile) -> dict[str, int]:
        async with Session() as session:
            doc = await session.get(Document, doc_id)
            if doc is None:
                raise ObjectNotFoundError(f"no document {doc_id}")
            ref = await doc.aset_content_from_uploadfile(file)  # read with `await file.read(n)`
            await session.commit()
        return {"size": ref.size}

    # --8<-- [end:uploadfile]
    return app


async def main(tmp: Path) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(tmp / "storage")},
        policies={
            "documents": StoragePolicy("documents", "local", max_size=MAX_UPLOAD, key_prefix="docs")
        },
    )
    Document.configure_storage_manager(manager)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    app = create_app(manager, async_sessionmaker(engine, expire_on_commit=False))

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # --8<-- [start:client]
        pdf = b"%PDF-1.7 " + b"x" * 1000
        response = await client.post(
            "/documents",
            files={"file": ("report.pdf", pdf, "application/pdf")},
            data={"title": "Annual report"},
        )
        assert response.status_code == 201
        url = f"/documents/{response.json()['id']}/content"

        response = await client.get(url)
        assert response.content == pdf
        assert response.headers["content-disposition"] == 'attachment; filename="report.pdf"'
        etag = response.headers["etag"]  # the sha256 of the content

        response = await client.get(url, headers={"Range": "bytes=0-3"})
        assert response.status_code == 206
        assert response.content == b"%PDF"
        assert response.headers["content-range"] == f"bytes 0-3/{len(pdf)}"

        response = await client.get(url, headers={"If-None-Match": etag})
        assert response.status_code == 304

        response = await client.post(
            "/documents",
            files={"file": ("big.bin", b"x" * (MAX_UPLOAD + 1), "application/octet-stream")},
        )
        assert response.status_code == 413
        print(response.json())  # {'detail': 'the upload is larger than the limit of ...'}

        response = await client.get(f"/documents/{uuid.uuid4()}/content")
        assert response.status_code == 404
        # --8<-- [end:client]

        response = await client.put(url, files={"file": ("v2.txt", b"version 2", "text/plain")})
        assert response.json() == {"size": 9}
        response = await client.get(url)
        assert response.content == b"version 2"
        assert response.headers["content-type"] == "text/plain"
    await engine.dispose()
    print("fastapi app: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
