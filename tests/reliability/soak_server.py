"""The example FastAPI app (examples/fastapi_app.py) on a real uvicorn server,
for the soak test: ``python -m tests.reliability.soak_server CONFIG_JSON``.

The config names the database (PostgreSQL in the soak), the largest upload,
the listening socket's file descriptor (bound by the parent, so there is no
port race) and the storage: ``"local"`` runs the example exactly as shipped
(its own local-disk manager under ``storage_root``); ``"s3"`` passes
``create_app`` a manager on moto's S3 server with the same ``documents``
policy. :func:`soak_manager` builds the same manager in the test process,
which collects garbage and checks the objects.

SIGTERM shuts uvicorn down gracefully (in-flight requests finish first).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

from examples.fastapi_app import Settings, create_app, make_manager
from granite_storage import StorageManager, StoragePolicy
from granite_storage.testing import manager_for

MiB = 1024 * 1024
#: The S3 part size: the soak's large uploads (above it) go multipart.
S3_PART_SIZE = 5 * MiB


def settings_of(config: dict[str, Any]) -> Settings:
    return Settings(
        storage_root=Path(config.get("storage_root") or "unused"),
        database_url=config["database_url"],
        max_size=config["max_size"],
        fsync=False,
    )


def soak_manager(config: dict[str, Any]) -> StorageManager:
    """The manager the app stores through, for ``config``."""
    settings = settings_of(config)
    if config["backend"] == "local":
        return make_manager(settings)
    from granite_storage.backends.s3 import S3StorageBackend

    backend = S3StorageBackend(
        bucket=config["bucket"],
        client_kwargs={"endpoint_url": config["endpoint_url"], "region_name": "us-east-1"},
        part_size=S3_PART_SIZE,
    )
    policy = StoragePolicy(
        "documents", "s3", max_size=settings.max_size, key_prefix="documents", delete_replaced=True
    )
    return manager_for(backend, policy, backend_key="s3")


async def serve(config: dict[str, Any]) -> None:
    settings = settings_of(config)
    # Keep idle connections open longer than the soak's pauses: the client
    # must not race uvicorn's keep-alive timeout (5 s by default).
    uvicorn_config = {
        "fd": config["fd"],
        "log_level": "warning",
        "access_log": False,
        "timeout_keep_alive": 120,
    }
    if config["backend"] == "local":
        app = create_app(settings)  # the example as shipped
        await uvicorn.Server(uvicorn.Config(app, **uvicorn_config)).serve()
        return
    async with soak_manager(config) as manager:
        app = create_app(settings, manager=manager)
        await uvicorn.Server(uvicorn.Config(app, **uvicorn_config)).serve()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
