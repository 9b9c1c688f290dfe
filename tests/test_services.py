"""The test services really work: each is reached over its real network protocol."""

from __future__ import annotations

import uuid
from typing import Any

import aioboto3
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import services


@pytest.mark.postgres
async def test_postgres_is_version_15(pg_engine: AsyncEngine) -> None:
    async with pg_engine.connect() as conn:
        version = (await conn.execute(text("select version()"))).scalar_one()
        database = (await conn.execute(text("select current_database()"))).scalar_one()
    assert version.startswith("PostgreSQL 15.")
    assert database.startswith("test_")  # a database of its own, not "postgres"


@pytest.mark.postgres
async def test_pg_engine_gives_each_test_an_empty_database(pg_engine: AsyncEngine) -> None:
    async with pg_engine.begin() as conn:
        tables = (
            await conn.execute(
                text("select count(*) from information_schema.tables where table_schema='public'")
            )
        ).scalar_one()
        await conn.execute(text("create table leftover (id int primary key)"))
    assert tables == 0


async def test_db_engine_round_trips_json(db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as conn:
        await conn.execute(text("create table t (id int primary key, body text)"))
        await conn.execute(text("insert into t values (1, :body)"), {"body": "héllo"})
        body = (await conn.execute(text("select body from t where id = 1"))).scalar_one()
    assert body == "héllo"
    assert db_engine.dialect.name in {"sqlite", "postgresql"}


@pytest.mark.s3
async def test_s3_put_and_get_over_http(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    assert s3_endpoint_url.startswith("http://127.0.0.1:")
    payload = uuid.uuid4().bytes * 1000
    async with aioboto3_session.client(
        "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
    ) as s3:
        await s3.put_object(Bucket=s3_bucket, Key="a/b.bin", Body=payload)
        response = await s3.get_object(Bucket=s3_bucket, Key="a/b.bin")
        async with response["Body"] as body:
            data = await body.read()
        listed = await s3.list_objects_v2(Bucket=s3_bucket)
    assert data == payload
    assert [obj["Key"] for obj in listed["Contents"]] == ["a/b.bin"]


@pytest.mark.s3
async def test_s3_bucket_is_new_and_empty(s3_endpoint_url: str, s3_bucket: str) -> None:
    async with aioboto3.Session().client(
        "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=s3_bucket)
    assert listed["KeyCount"] == 0


@pytest.mark.s3
def test_moto_reset_forgets_buckets(s3_endpoint_url: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="reset-me")
        services.reset_moto(s3_endpoint_url)
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        s3.close()
    assert "reset-me" not in names


@pytest.mark.redis
async def test_redis_ping(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        await client.set("granite", b"storage")
        assert await client.get("granite") == b"storage"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "start",
    [
        lambda: services.redis_server("no-such-redis-server"),
        lambda: services.moto_s3_server("no-such-moto-server"),
        lambda: services.postgres_server("/no/such/postgresql/bin"),
    ],
    ids=["redis", "s3", "postgres"],
)
@pytest.mark.parametrize(
    ("require", "outcome"),
    [(None, pytest.skip.Exception), ("1", pytest.fail.Exception)],
    ids=["local-skips", "ci-fails"],
)
def test_missing_service_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, start: Any, require: str | None, outcome: type[BaseException]
) -> None:
    if require is None:
        monkeypatch.delenv(services.REQUIRE_SERVICES_ENV, raising=False)
    else:
        monkeypatch.setenv(services.REQUIRE_SERVICES_ENV, require)
    with pytest.raises(services.ServiceUnavailable) as unavailable, start():
        pass
    assert "not found" in unavailable.value.reason
    assert "install it with" in unavailable.value.reason
    with pytest.raises(outcome, match="not found"):
        services.skip_or_fail(unavailable.value.reason)


async def test_blockbuster_catches_blocking_calls() -> None:
    import time

    from blockbuster import BlockingError

    with pytest.raises(BlockingError):
        time.sleep(0.001)  # noqa: ASYNC251 - the point of the test


@pytest.mark.allow_blocking
async def test_allow_blocking_marker_opts_out() -> None:
    import time

    time.sleep(0.001)  # noqa: ASYNC251 - the point of the test


def test_sync_tests_may_block() -> None:
    import time

    time.sleep(0.001)


@pytest.mark.s3
async def test_s3_bucket_fixture_tolerates_a_test_deleting_its_bucket(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with aioboto3_session.client(
        "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
    ) as s3:
        await s3.put_object(Bucket=s3_bucket, Key="x", Body=b"x")
        await s3.delete_object(Bucket=s3_bucket, Key="x")
        await s3.delete_bucket(Bucket=s3_bucket)
