"""The plug-in seam: the session hooks hand a plug-in's objects to it, and
check and delete the others themselves (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session

from granite_storage import StoredObjectRef
from granite_storage.integrations.sqlalchemy import drain_pending_deletions
from granite_storage.integrations.sqlalchemy._plugin import (
    ContentPlugin,
    TrackedObject,
    UploadClaim,
)
from granite_storage.integrations.sqlalchemy._tracking import track_release, track_upload
from tests.integrations.conftest import Base, Env


class Recorder:
    """A plug-in that records what it is asked to delete, and deletes nothing."""

    def __init__(self) -> None:
        self.swept: list[tuple[list[str], str]] = []

    def watch(self, session: Session) -> None:
        pass

    async def aclaim_upload(
        self, instance: object, *, location: str, storage_key: str, backend: str
    ) -> UploadClaim:
        raise AssertionError("not called by the session hooks")

    async def asweep_tracked(
        self, objects: Sequence[TrackedObject], *, bind: Engine, metadata: MetaData, reason: str
    ) -> None:
        self.swept.append(([obj.ref.location for obj in objects], reason))


async def astored(env: Env, name: str) -> StoredObjectRef:
    return await env.manager.aput_bytes(
        storage_key="documents", model_name="document", entity_id=name, field_name="f", content=b"x"
    )


async def test_the_hooks_hand_a_plugins_objects_to_it(env: Env) -> None:
    recorder: ContentPlugin = Recorder()
    async with env.sessions() as session:
        sync, bind = session.sync_session, env.engine.sync_engine
        mine, plain = await astored(env, "mine"), await astored(env, "plain")
        await session.connection()  # a transaction that the objects follow
        track_upload(sync, TrackedObject(env.manager, mine, Base.metadata, bind, recorder))
        track_upload(sync, TrackedObject(env.manager, plain, Base.metadata, bind))
        await session.rollback()
        await drain_pending_deletions(session)
        assert isinstance(recorder, Recorder)
        [(locations, reason)] = recorder.swept
        assert locations == [mine.location] and reason.startswith("rollback")
        assert await env.alocations() == {mine.location}  # the plug-in decides on its own

        released = await astored(env, "released")
        await session.connection()
        obj = TrackedObject(env.manager, released, Base.metadata, bind, recorder)
        track_release(sync, obj, delete_after_commit=True)
        await session.commit()
        await drain_pending_deletions(session)
        assert recorder.swept[-1] == ([released.location], "commit")
