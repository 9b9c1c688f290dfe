"""Large uploads straight from the browser to S3, in parts, with Uppy.

The page uses Uppy's ``@uppy/aws-s3`` in multipart mode against the five
endpoints of ``direct_upload_router``; the browser PUTs each part to the
bucket, the app only signs, checks the size and records the ref in the row
(SQLite here) once the upload is complete.

Run it against any S3-compatible store (the bucket needs a CORS rule that
allows PUT and exposes ``ETag``, see docs/direct-uploads.md)::

    npm install --prefix ./var/npm uppy@6
    export S3_ENDPOINT_URL=http://127.0.0.1:9000 S3_BUCKET=uploads
    export UPPY_DIST=./var/npm/node_modules/uppy/dist
    uvicorn examples.direct_uploads:app

and open http://127.0.0.1:8000/videos/1 .
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.s3 import S3StorageBackend
from granite_storage.integrations.fastapi import (
    DirectUploadScope,
    direct_upload_router,
    install_exception_handlers,
)


class Base(DeclarativeBase):
    pass


class Video(StoredContentMixin, Base):
    __tablename__ = "video"
    __stored_content_field_name__ = "file_ref"
    __stored_content_storage_key__ = "videos"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType(), nullable=True)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Video {video_id}</title>
<link href="/uppy/uppy.min.css" rel="stylesheet"></head>
<body>
<input type="file" id="file">
<pre id="status">ready</pre>
<script src="/uppy/uppy.min.js"></script>
<script>
  // Resumable: the upload id and key of each file are kept in localStorage
  // until it completes; picking the same file after a reload resumes it from
  // the parts the bucket already has.
  const status = document.getElementById("status");
  const show = (text) => {{ status.textContent = text; }};
  const saved = (file) => "upload:" + file.name + ":" + file.size;
  const uppy = new Uppy.Uppy({{ autoProceed: false }})
    .use(Uppy.AwsS3, {{
      companionEndpoint: "/videos/{video_id}/uploads",
      shouldUseMultipart: () => true,
      generateObjectKey: (file) => file.name,
    }});
  uppy.on("s3-multipart:part-uploaded", (file, part) => {{
    const state = uppy.getFile(file.id).s3Multipart;
    if (state) localStorage.setItem(saved(file), JSON.stringify(state));
    show("part " + part.PartNumber);
  }});
  uppy.on("upload-success", (file, response) => {{
    localStorage.removeItem(saved(file));
    show("done " + response.body.key);
  }});
  uppy.on("upload-error", (file, error) => show("error " + error));
  document.getElementById("file").addEventListener("change", (event) => {{
    for (const data of event.target.files) {{
      const id = uppy.addFile({{ name: data.name, type: data.type, data }});
      const state = localStorage.getItem(saved(data));
      if (state) uppy.setFileState(id, {{ s3Multipart: JSON.parse(state) }});
    }}
    uppy.upload();
  }});
</script></body></html>
"""


def create_app(
    *, manager: StorageManager, engine: AsyncEngine, uppy_dist: str | os.PathLike[str]
) -> FastAPI:
    """The app: ``/videos/{id}`` serves the page, ``/videos/{id}/uploads`` the router."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    Video.configure_storage_manager(manager)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield

    async def video_scope(video_id: int) -> DirectUploadScope:
        # Your authorisation goes here: may the current user upload this video?
        async with sessions() as session:
            if await session.get(Video, video_id) is None:
                session.add(Video(id=video_id))
                await session.commit()
        return DirectUploadScope("video", video_id, "file_ref")

    async def attach(ref: StoredObjectRef, scope: DirectUploadScope) -> dict[str, Any]:
        async with sessions() as session, session.begin():
            video = await session.get_one(Video, scope.entity_id)
            video.file_ref = ref
        return {"video": scope.entity_id, "sha256": ref.checksum}

    app = FastAPI(lifespan=lifespan)
    install_exception_handlers(app)
    app.mount("/uppy", StaticFiles(directory=Path(uppy_dist)), name="uppy")
    app.include_router(
        direct_upload_router(
            manager, storage_key="videos", authorize=video_scope, on_complete=attach
        ),
        prefix="/videos/{video_id}/uploads",
    )

    @app.get("/videos/{video_id}", response_class=HTMLResponse)
    async def page(video_id: int) -> str:
        return PAGE.format(video_id=video_id)

    @app.get("/videos/{video_id}/ref")
    async def ref_of(video_id: int) -> dict[str, Any]:
        async with sessions() as session:
            video = await session.get(Video, video_id)
            if video is None or video.file_ref is None:
                raise HTTPException(404, "no file yet")
            return video.file_ref.to_dict()

    return app


def _from_environment() -> FastAPI:  # pragma: no cover - for uvicorn
    backend = S3StorageBackend(
        bucket=os.environ.get("S3_BUCKET", "uploads"),
        client_kwargs={"endpoint_url": os.environ.get("S3_ENDPOINT_URL")},
    )
    manager = StorageManager(
        backends={"s3": backend},
        policies={"videos": StoragePolicy("videos", "s3", max_size=5 << 30, key_prefix="videos")},
    )
    engine = create_async_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./var/app.db"))
    return create_app(manager=manager, engine=engine, uppy_dist=os.environ["UPPY_DIST"])


if os.environ.get("UPPY_DIST"):  # pragma: no cover
    app = _from_environment()
