"""Several stored fields on one model, each with its own policy."""

import asyncio
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy_model import Base  # the Base of docs/snippets/sqlalchemy_model.py

from granite_storage import (
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.local import LocalStorageBackend
from granite_storage.integrations.sqlalchemy import stored_content_field


# --8<-- [start:model]
class User(StoredContentMixin, Base):
    __tablename__ = "user_account"

    user_id: Mapped[int] = mapped_column(primary_key=True)
    avatar_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())
    banner_ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())

    avatar = stored_content_field("avatar_ref", storage_key="avatars")
    banner = stored_content_field("banner_ref", storage_key="banners", delete_replaced=True)


# --8<-- [end:model]


async def main(tmp: Path) -> None:
    manager = StorageManager(
        backends={"local": LocalStorageBackend(tmp / "storage")},
        policies={
            "avatars": StoragePolicy("avatars", "local", max_size=1 << 20, key_prefix="avatars"),
            "banners": StoragePolicy("banners", "local", max_size=4 << 20, key_prefix="banners"),
        },
    )
    User.configure_storage_manager(manager)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

    PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR..."  # the type is detected from the bytes
    # --8<-- [start:use]
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        user = User(user_id=7)  # a primary key set by hand needs no flush
        session.add(user)
        await user.avatar.aset(PNG, filename="me.png")
        await user.banner.aset(PNG, filename="banner.png")
        await session.commit()

        assert user.avatar.ref is not None  # the ref, without I/O
        print(user.avatar.ref.location)  # avatars/user_account/7/avatar/<unique>.png
        assert user.avatar.ref.content_type == "image/png"
        assert await user.banner.aget() == PNG
    # --8<-- [end:use]
    assert user.avatar.ref.location.startswith("avatars/user_account/7/avatar/")
    await engine.dispose()
    print("sqlalchemy fields: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
