"""The FastAPI app the upload benchmark serves with uvicorn.

``POST /granite`` stores the body with granite_storage's streaming helper;
``POST /raw`` is the baseline: the same app writing ``request.stream()``
straight to a file. Configured by ``GRANITE_BENCH_ROOT``.
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI, Request

from granite_storage import StorageManager, StoragePolicy
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.fastapi import install_exception_handlers, stream_upload

ROOT = os.environ.get("GRANITE_BENCH_ROOT", "./var/bench")

manager = StorageManager(
    backends={"local": LocalStorageBackend(os.path.join(ROOT, "granite"), fsync=False)},
    policies={"bench": StoragePolicy("bench", "local", key_prefix="bench")},
)
app = FastAPI()
install_exception_handlers(app)


@app.get("/health")
async def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.post("/granite")
async def granite(request: Request) -> dict[str, object]:
    upload = await stream_upload(
        request,
        manager,
        storage_key="bench",
        model_name="document",
        entity_id=uuid.uuid4().hex,
        field_name="file",
    )
    return {"size": upload.ref.size, "checksum": upload.ref.checksum}


@app.post("/raw")
async def raw(request: Request) -> dict[str, object]:
    os.makedirs(os.path.join(ROOT, "raw"), exist_ok=True)
    size = 0
    # The baseline on purpose: plain blocking writes, straight to disk.
    with open(os.path.join(ROOT, "raw", uuid.uuid4().hex), "wb") as file:  # noqa: ASYNC230
        async for chunk in request.stream():
            file.write(chunk)
            size += len(chunk)
    return {"size": size}
