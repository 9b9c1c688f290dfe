"""Local disk and memory cannot presign: OperationNotSupportedError, HTTP 501."""

import asyncio
import tempfile

from granite_storage import StorageManager, StoragePolicy
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import OperationNotSupportedError


async def main(root: str) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(root), "memory": MemoryStorageBackend()},
        policies={
            "docs": StoragePolicy("docs", "local", key_prefix="docs"),
            "cache": StoragePolicy("cache", "memory", key_prefix="cache"),
        },
    )
    for key in ("docs", "cache"):
        ref = await manager.aput_bytes(
            storage_key=key, model_name="m", entity_id=1, field_name="f", content=b"x"
        )
        # --8<-- [start:presign]
        try:
            url = await manager.apresigned_url(ref, expires_in=600)
        except OperationNotSupportedError as exc:
            print(exc.status_code, exc)  # 501 backend 'local' cannot presign URLs; stream ...
            url = None  # serve the object through the application instead (aopen)
        # --8<-- [end:presign]
        assert url is None
        upload_error = None
        try:
            await manager.apresigned_upload(
                storage_key=key, model_name="m", entity_id=1, field_name="f"
            )
        except OperationNotSupportedError as exc:
            upload_error = exc
        assert upload_error is not None
    print("presign unsupported: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(tmp))
