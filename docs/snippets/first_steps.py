"""Store, read, stream and delete one file on local disk, with no database."""

import asyncio
import tempfile

from granite_storage import StorageManager, StoragePolicy
from granite_storage.backends.local import LocalStorageBackend


async def main(root: str) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(root)},
        policies={
            "docs": StoragePolicy("docs", "local", max_size=10 << 20, key_prefix="docs"),
        },
    )
    async with manager:  # closes the backends' clients at the end
        ref = await manager.aput_bytes(
            storage_key="docs",
            model_name="document",
            entity_id=42,
            field_name="file",
            content=b"%PDF-1.7 hello",
            original_filename="report.pdf",
        )
        print(ref.location)  # docs/document/42/file/<32 hex digits>.pdf
        print(ref.size, ref.content_type)  # 14 application/pdf
        print(ref.to_dict())  # what goes into your JSON column

        assert await manager.aget(ref, verify=True) == b"%PDF-1.7 hello"
        async with manager.aopen(ref) as reader:  # stream instead of loading it whole
            async for chunk in reader:
                print(f"read {len(chunk)} bytes")

        await manager.adelete(ref)  # idempotent
        assert not await manager.aexists(ref)
    print("first steps: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(tmp))
