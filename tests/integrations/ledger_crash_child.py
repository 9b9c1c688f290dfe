"""The child process of the ledger crash test: upload through the mixin, then wait to be killed.

``python -m tests.integrations.ledger_crash_child '{"database_url": ..., "backend": "local",
"root": ..., "flush_first": false}'`` (or ``"backend": "s3"`` with ``"endpoint_url"`` and
``"bucket"``) stores one object for a new ``Doc`` with a ledger, prints
``UPLOADED <location>`` and sleeps inside the still-open transaction until the
parent's SIGKILL. ``flush_first`` flushes the row before the upload (on SQLite
the transaction then holds the write lock, so the claim is made inside it).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from granite_storage.backends.local import LocalStorageBackend
from granite_storage.contracts import StorageBackend
from granite_storage.integrations.sqlalchemy import ObjectLedger
from tests.integrations.ledger_support import Doc, LedgerBase, make_manager


def make_backend(config: dict[str, Any]) -> StorageBackend:
    if config["backend"] == "local":
        return LocalStorageBackend(config["root"], fsync=False)
    from granite_storage.backends.s3 import S3StorageBackend

    return S3StorageBackend(
        bucket=config["bucket"],
        client_kwargs={"endpoint_url": config["endpoint_url"], "region_name": "us-east-1"},
    )


async def main(config: dict[str, Any]) -> None:
    engine = create_async_engine(config["database_url"])
    manager = make_manager(make_backend(config))
    Doc.configure_storage_manager(manager, ledger=ObjectLedger(LedgerBase.metadata))
    async with async_sessionmaker(engine)() as session:
        doc = Doc(id=uuid.uuid4())
        session.add(doc)
        if config["flush_first"]:
            await session.flush()
        ref = await doc.aset_content(b"uploaded, never committed")
        await session.flush()
        print("UPLOADED", ref.location, flush=True)
        await anyio.sleep(3600)  # the parent kills us here, transaction open
        print("NOT KILLED", flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
