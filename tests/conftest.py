"""Shared fixtures: real services (PostgreSQL, moto S3, Redis), databases, blockbuster.

Services are started once per session, lazily, by the first test that asks for them.
A service that cannot be started skips its tests, or fails them when
GRANITE_STORAGE_REQUIRE_SERVICES=1 (as .ci/run sets it).
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests import services


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_blocking: do not fail this async test when it blocks the event loop",
    )


# --------------------------------------------------------------------------- blockbuster

# Blocking calls that third-party code makes inside the event loop and that no caller can
# avoid; each is allowed only when the named function is on the stack.
# (blocked functions, file suffix, functions in that file, why it is acceptable)
_FILE_IO = (
    "os.stat",
    "os.listdir",
    "os.getcwd",
    "os.path.abspath",
    "os.path.islink",
    "os.readlink",
    "io.BufferedReader.read",
    "io.TextIOWrapper.read",
)
_BLOCKING_ALLOWANCES: list[tuple[tuple[str, ...], str, set[str], str]] = [
    (
        _FILE_IO,
        "<frozen importlib._bootstrap>",
        {"_find_and_load"},
        "a module imported lazily on first use (aioboto3 imports boto3.s3.transfer, and "
        "with it multiprocessing, when it creates its first S3 client) runs its top-level "
        "code once; blockbuster itself already allows the import machinery's own I/O",
    ),
    (
        ("os.path.abspath",),
        "sqlalchemy/dialects/sqlite/pysqlite.py",
        {"create_connect_args"},
        "create_async_engine() normalises the SQLite path; for an absolute path this is "
        "string work and touches no disk",
    ),
    (
        _FILE_IO,
        "asyncpg/connect_utils.py",
        {"_parse_connect_dsn_and_args"},
        "asyncpg looks for ~/.pgpass and ~/.postgresql/*.crt while it parses the "
        "connection arguments, at every connect: a few stats of small local files",
    ),
    (
        _FILE_IO,
        "botocore/loaders.py",
        {
            "_wrapper",
            "list_available_services",
            "determine_latest_version",
            "list_api_versions",
            "load_service_model",
            "load_data_with_path",
            "load_data",
            "_potential_locations",
            "exists",
            "load_file",
        },
        "botocore reads its bundled JSON models once per session when aioboto3 creates a "
        "client (inside the async `client().__aenter__`); there is no async loader",
    ),
    (
        _FILE_IO,
        "botocore/configloader.py",
        {"raw_config_parse"},
        "botocore reads the AWS config and credentials files (here /dev/null) once per "
        "session, e.g. when a backend builds an aioboto3.Session() in async code",
    ),
]


def _is_async_test(request: pytest.FixtureRequest) -> bool:
    if request.node.get_closest_marker("asyncio") is not None:
        return True
    function = getattr(request.node, "function", None)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


@pytest.fixture(autouse=True)
def _blockbuster(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test (and its async fixtures) that makes a blocking call in the loop.

    Opt out with ``@pytest.mark.allow_blocking``. Sync tests are never checked.
    """
    if not _is_async_test(request) or request.node.get_closest_marker("allow_blocking"):
        yield
        return
    with blockbuster_ctx() as bb:
        for blocked, filename, functions, _why in _BLOCKING_ALLOWANCES:
            for name in blocked:
                bb.functions[name].can_block_in(filename, functions)
        yield


# --------------------------------------------------------------------------- services


@contextlib.contextmanager
def _start_service(service: contextlib.AbstractContextManager[str]) -> Iterator[str]:
    """Enter a service from tests/services.py; skip (or fail, in CI) if it cannot start."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(service)
        except services.ServiceUnavailable as exc:
            reason = exc.reason
        else:
            yield url
            return
    services.skip_or_fail(reason)  # outside the except block: no chained traceback


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+asyncpg://test@127.0.0.1:PORT/postgres`` of a throwaway PostgreSQL 15."""
    with _start_service(services.postgres_server()) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server; AWS_* test credentials are set."""
    with _start_service(services.moto_s3_server()) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throwaway redis-server (no persistence)."""
    with _start_service(services.redis_server()) as url:
        yield url


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def aioboto3_session(s3_endpoint_url: str) -> Any:
    """One ``aioboto3.Session`` shared by the test session (botocore caches its models
    per session); made after the moto server set the AWS_* test credentials."""
    import aioboto3

    return aioboto3.Session()


@pytest.fixture
async def s3_bucket(s3_endpoint_url: str, aioboto3_session: Any) -> AsyncIterator[str]:
    """A new, empty bucket on the moto server; deleted with its contents afterwards."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    async with aioboto3_session.client(
        "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
    ) as s3:
        await s3.create_bucket(Bucket=name)
        yield name
        # Cheap cleanup: 3 requests for a bucket the test left empty.
        try:
            uploads = await s3.list_multipart_uploads(Bucket=name)
        except s3.exceptions.NoSuchBucket:
            return  # the test deleted it
        for upload in uploads.get("Uploads", []):
            await s3.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                await s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        await s3.delete_bucket(Bucket=name)


# --------------------------------------------------------------------------- databases


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on a fresh, empty PostgreSQL database made for this test.

    ``CREATE DATABASE`` from template0 costs a few tens of ms on the fsync-less cluster,
    and ``DROP DATABASE ... WITH (FORCE)`` afterwards cannot be blocked by a leaked
    connection, so tests never see each other's tables.
    """
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    engine = create_async_engine(url.set(database=name))
    try:
        yield engine
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine (aiosqlite) on a new database file in tmp_path."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest) -> AsyncEngine:
    """``sqlite_engine`` or ``pg_engine``: run a test on both databases."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: AsyncEngine = request.getfixturevalue(name)
    return engine
