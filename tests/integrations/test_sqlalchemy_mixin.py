"""StoredContentMixin and stored_content_field: every method, keys, configuration."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage import (
    ContentTooLargeError,
    ObjectNotFoundError,
    ReplaceContentResult,
    StorageError,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from granite_storage.backends.memory import MemoryStorageBackend
from granite_storage.errors import ConfigurationError
from granite_storage.integrations.sqlalchemy import StoredContent, stored_content_field
from tests.integrations.conftest import (
    Document,
    Env,
    Membership,
    User,
    flushed,
    make_manager,
)


async def test_set_and_get_bytes(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"%PDF-1.7", filename="report.pdf")
        assert doc._file_ref is ref
        assert ref.content_type == "application/pdf"
        assert ref.original_filename == "report.pdf"
        assert ref.location.startswith(f"docs/document/{doc.id}/file_ref/")
        assert ref.location.endswith(".pdf")
        await session.commit()
        doc_id = doc.id
    async with env.sessions() as session:
        loaded = await session.get_one(Document, doc_id)
        assert loaded._file_ref == ref
        assert await loaded.aget_content() == b"%PDF-1.7"
        assert await loaded.aget_content(verify=True) == b"%PDF-1.7"


async def test_a_misspelt_keyword_is_a_type_error_and_stores_nothing(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        with pytest.raises(TypeError, match="filenme"):
            await doc.aset_content(b"x", filenme="report.pdf")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="content_typ"):
            await doc.aset_content_from_stream([b"x"], content_typ="text/plain")  # type: ignore[call-arg]
        assert doc._file_ref is None
        assert len(env.backend) == 0


async def test_text_content(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content("héllo")
        assert ref.content_type == "text/plain; charset=utf-8"
        assert await doc.aget_content() == "héllo".encode()
        assert await doc.aget_content_text() == "héllo"
        assert await doc.aget_content_text("latin-1") == "héllo".encode().decode("latin-1")


async def test_no_content_reads_as_none_and_open_raises(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        assert await doc.aget_content() is None
        assert await doc.aget_content_text() is None
        with pytest.raises(ObjectNotFoundError, match="no stored content"):
            async with doc.aopen_content():
                pass


async def test_open_streams_the_content(env: Env) -> None:
    data = bytes(range(256)) * 3
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        await doc.aset_content(data)
        async with doc.aopen_content(verify=True) as reader:
            first = await reader.read(10)
            rest = b"".join([chunk async for chunk in reader])
        assert first + rest == data


async def test_open_a_missing_object_raises_not_found(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x")
        await env.manager.adelete(ref)
        with pytest.raises(ObjectNotFoundError):
            async with doc.aopen_content():
                pass
        with pytest.raises(ObjectNotFoundError):
            await doc.aget_content()


async def test_set_from_streams(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content_from_stream(chunks(), filename="v.txt")
        assert (ref.size, ref.content_type) == (4, "text/plain")
        assert await doc.aget_content() == b"abcd"
        ref2 = await doc.aset_content_from_stream(io.BytesIO(b"xyz"), content_type="a/b")
        # The type comes from the bytes; the declared one is kept beside it.
        assert ref2.content_type == "text/plain"
        assert ref2.extra == {"declared_content_type": "a/b"}
        assert await doc.aget_content() == b"xyz"


async def test_set_from_uploadfile(env: Env) -> None:
    starlette = pytest.importorskip("starlette.datastructures")
    upload = starlette.UploadFile(
        file=io.BytesIO(b"GIF89a..."),
        filename="cat.gif",
        headers=starlette.Headers({"content-type": "image/gif"}),
    )
    await upload.read(3)  # the handler peeked: the whole file is still stored
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content_from_uploadfile(upload)
        assert (ref.original_filename, ref.content_type, ref.size) == ("cat.gif", "image/gif", 9)
        assert await doc.aget_content() == b"GIF89a..."


async def test_replace_returns_both_refs(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        first = await doc.areplace_content(b"one", filename="r.pdf")
        assert first == ReplaceContentResult(previous_ref=None, new_ref=doc._file_ref)  # type: ignore[arg-type]
        second = await doc.areplace_content(b"two", filename="r2.pdf")
        assert second.previous_ref == first.new_ref
        assert second.new_ref == doc._file_ref
        assert second.new_ref.location != first.new_ref.location
        assert await doc.aget_content() == b"two"


async def test_clear_reference_does_no_io_and_returns_previous(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"x")
        await session.commit()
        assert doc.clear_content_reference() == ref
        assert doc._file_ref is None
        assert doc.clear_content_reference() is None
        await session.commit()
        assert ref.location in await env.alocations()  # not deleted: the policy keeps it
        row = await session.scalar(select(Document._file_ref).where(Document.id == doc.id))
        assert row is None


async def test_too_large_upload_leaves_the_ref_unchanged(env: Env) -> None:
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        ref = await doc.aset_content(b"small")
        with pytest.raises(ContentTooLargeError):
            await doc.aset_content(b"x" * 2000)
        assert doc._file_ref == ref
        assert await env.alocations() == {ref.location}


async def test_missing_primary_key_says_to_flush(env: Env) -> None:
    async with env.sessions() as session:
        doc = Document()
        session.add(doc)
        with pytest.raises(StorageError, match=r"await session\.flush\(\)") as excinfo:
            await doc.aset_content(b"x")
        assert "id" in str(excinfo.value)
        assert await env.alocations() == set()
        user = User()
        with pytest.raises(StorageError, match="user_id"):
            await user.avatar.aset(b"x")


async def test_primary_key_not_called_id_and_explicit_key_without_flush(env: Env) -> None:
    async with env.sessions() as session:
        user = User(user_id=41)
        session.add(user)
        ref = await user.avatar.aset(b"png", filename="me.png")
        assert ref.location.startswith("avatars/user_account/41/avatar/")
        await session.commit()
        user2 = await flushed(session, User())
        ref2 = await user2.avatar.aset(b"png")
        assert ref2.location.startswith(f"avatars/user_account/{user2.user_id}/avatar/")


async def test_composite_primary_key_and_model_name_override(env: Env) -> None:
    async with env.sessions() as session:
        member = await flushed(session, Membership(org="Acme Inc/../x", member_no=7))
        ref = await member.aset_content(b"badge")
        assert ref.location.startswith("docs/member/Acme-Inc-..-x_7/badge_ref/")
        assert ".." not in ref.location.split("/")
        await session.commit()
    async with env.sessions() as session:
        loaded = await session.get_one(Membership, ("Acme Inc/../x", 7))
        assert await loaded.aget_content() == b"badge"


async def test_several_fields_each_with_its_policy(env: Env) -> None:
    async with env.sessions() as session:
        user = await flushed(session, User(user_id=1))
        avatar = await user.avatar.aset(b"avatar", filename="a.png")
        banner = await user.banner.aset(b"banner", filename="b.jpg")
        assert avatar.storage_key == "avatars" and avatar.location.startswith("avatars/")
        assert banner.storage_key == "banners" and banner.location.startswith("banners/")
        assert "/banner/" in banner.location
        assert (user.avatar_ref, user.banner_ref) == (avatar, banner)
        assert user.avatar.ref == avatar
        assert await user.avatar.aget() == b"avatar"
        assert await user.banner.aget_text() == "banner"
        async with user.banner.aopen() as reader:
            assert await reader.read() == b"banner"
        replaced = await user.banner.areplace(b"banner2")
        assert replaced.previous_ref == banner
        assert user.avatar.clear() == avatar
        assert user.avatar.ref is None
        await session.commit()
        await user.avatar.aset_from_stream(io.BytesIO(b"new avatar"))
        await session.commit()
    async with env.sessions() as session:
        loaded = await session.get_one(User, 1)
        assert await loaded.avatar.aget() == b"new avatar"
        assert await loaded.banner.aget() == b"banner2"


def test_field_descriptor_on_the_class_and_assignment() -> None:
    field = User.avatar
    assert field.spec.ref_attr == "avatar_ref"
    assert field.spec.storage_key == "avatars"
    assert field.spec.field_name == "avatar"
    assert User.banner.spec.delete_replaced is True
    user = User(user_id=3)
    assert isinstance(user.avatar, StoredContent)
    with pytest.raises(AttributeError, match="avatar_ref"):
        user.avatar = b"x"


def test_field_requires_the_mixin() -> None:
    with pytest.raises((ConfigurationError, RuntimeError)) as excinfo:

        class Plain:
            avatar = stored_content_field("avatar_ref", storage_key="avatars")

    error = excinfo.value
    cause = error if isinstance(error, ConfigurationError) else error.__cause__
    assert isinstance(cause, ConfigurationError)
    assert "StoredContentMixin" in str(cause)


async def test_mixin_without_class_variables_says_what_to_set(env: Env) -> None:
    user = User(user_id=5)
    with pytest.raises(ConfigurationError, match="__stored_content_field_name__"):
        await user.aset_content(b"x")


class OtherBase(DeclarativeBase):
    """Models of these tests only, never created in the database."""


class Broken(StoredContentMixin, OtherBase):
    __tablename__ = "broken"
    __stored_content_field_name__ = "name"  # not a ref column
    __stored_content_storage_key__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None]


class Lonely(StoredContentMixin, OtherBase):
    __tablename__ = "lonely"  # never configured
    __stored_content_field_name__ = "ref"
    __stored_content_storage_key__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[StoredObjectRef | None] = mapped_column(StoredObjectRefType())


async def test_field_that_is_not_a_ref_column_is_refused(env: Env) -> None:
    Broken.configure_storage_manager(env.manager)
    with pytest.raises(ConfigurationError, match="StoredObjectRefType"):
        await Broken(id=1).aset_content(b"x")
    assert await env.alocations() == set()


async def test_configure_per_class(env: Env) -> None:
    class Base2(StoredContentMixin):
        pass

    class Unconfigured(Base2):
        pass

    with pytest.raises(ConfigurationError, match=r"Unconfigured\.configure_storage_manager"):
        Unconfigured.get_storage_manager()

    other = make_manager(MemoryStorageBackend())
    Base2.configure_storage_manager(other)
    assert Unconfigured.get_storage_manager() is other  # inherited
    own = make_manager(MemoryStorageBackend())
    Unconfigured.configure_storage_manager(own)
    assert Unconfigured.get_storage_manager() is own
    assert Base2.get_storage_manager() is other  # a subclass does not touch its base
    again = make_manager(MemoryStorageBackend())
    Unconfigured.configure_storage_manager(again)  # a second call replaces it
    assert Unconfigured.get_storage_manager() is again
    with pytest.raises(ConfigurationError):
        Unconfigured.configure_storage_manager(object())  # type: ignore[arg-type]

    # The real models: each has the manager env configured, and it is used.
    async with env.sessions() as session:
        doc = await flushed(session, Document())
        second = env.configure()
        ref = await doc.aset_content(b"x")
        assert await second.aexists(ref)


async def test_unconfigured_model_says_what_to_call(env: Env) -> None:
    # StoredContentMixin itself is never configured by the tests, so nothing is inherited.
    with pytest.raises(ConfigurationError, match=r"Lonely\.configure_storage_manager\(manager\)"):
        await Lonely(id=1).aset_content(b"x")
    with pytest.raises(ConfigurationError):
        await Lonely(id=1).aget_content()
