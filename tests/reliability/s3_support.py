"""Looking at moto's S3 directly (not through the backend under test): stored
objects, pending multipart uploads, and a watcher that records every object it
ever sees while an upload runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

__all__ = ["ObjectWatcher", "moto_client", "pending_uploads", "stored_objects"]


@asynccontextmanager
async def moto_client(session: Any, endpoint_url: str) -> AsyncIterator[Any]:
    """A raw aiobotocore S3 client on moto's server."""
    async with session.client("s3", endpoint_url=endpoint_url, region_name="us-east-1") as client:
        yield client


async def stored_objects(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix``, with its size."""
    found: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            found[item["Key"]] = int(item["Size"])
    return found


async def pending_uploads(client: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every multipart upload under ``prefix`` that was neither completed nor aborted."""
    uploads: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_multipart_uploads")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        uploads.extend(page.get("Uploads", ()))
    return uploads


class ObjectWatcher:
    """Lists ``prefix`` every ``interval`` seconds until stopped, and keeps
    every ``(key, size)`` it saw: a partial object would show up here."""

    def __init__(self, client: Any, bucket: str, prefix: str, *, interval: float = 0.02) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._interval = interval
        self._stop = anyio.Event()
        self.seen: set[tuple[str, int]] = set()
        self.polls = 0

    async def run(self) -> None:
        while not self._stop.is_set():
            for key, size in (
                await stored_objects(self._client, self._bucket, self._prefix)
            ).items():
                self.seen.add((key, size))
            self.polls += 1
            with anyio.move_on_after(self._interval):
                await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
