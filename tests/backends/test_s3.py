"""What only the S3 backend does: multipart uploads and their abort, batch
deletes, presigned URLs, leftover uploads, error translation, one lazy client.

Everything runs against moto's server over real HTTP (fixtures in
tests/conftest.py); failures are injected with botocore event hooks on the
backend's own client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

pytest.importorskip("aioboto3")

import httpx
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from granite_storage import (
    ChecksumMismatchError,
    ContentTooLargeError,
    ObjectNotFoundError,
    StoredObjectRef,
)
from granite_storage.backends import _s3_multipart
from granite_storage.backends.s3 import S3StorageBackend
from granite_storage.errors import BackendError, ConfigurationError, InvalidLocationError
from granite_storage.http import content_disposition
from granite_storage.streams import Sha256Digest
from granite_storage.testing import manager_for
from tests.backends.conftest import S3_TEST_PART_SIZE, open_s3_backend
from tests.services import free_port

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
PART = S3_TEST_PART_SIZE


# --------------------------------------------------------------------------- helpers


async def chunks_of(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def ref_for(location: str, data: bytes) -> StoredObjectRef:
    return StoredObjectRef(
        storage_key="docs",
        backend="s3",
        location=location,
        size=len(data),
        checksum=f"sha256:{hashlib.sha256(data).hexdigest()}",
    )


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def pending_uploads(client: Any, bucket: str) -> list[str]:
    response = await client.list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in response.get("Uploads", [])]


async def stored_keys(client: Any, bucket: str) -> list[str]:
    response = await client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


async def count_calls(backend: S3StorageBackend, *operations: str) -> dict[str, int]:
    """Count the API calls the backend's client makes, by operation name."""
    counts = dict.fromkeys(operations, 0)
    client = await backend.aget_client()
    for operation in operations:

        def count(*, _operation: str = operation, **_: Any) -> None:
            counts[_operation] += 1

        client.meta.events.register(f"before-call.s3.{operation}", count)
    return counts


def error_response(status: int = 500, code: str = "InternalError") -> tuple[AWSResponse, Any]:
    """What a ``before-call`` hook returns to short-circuit a call with an error."""
    http = AWSResponse("http://injected", status, {}, None)
    parsed = {
        "Error": {"Code": code, "Message": "injected by the test"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return http, parsed


def part_number(params: dict[str, Any]) -> int:
    return int(params["query_string"]["partNumber"])


# --------------------------------------------------------------------------- uploads


async def test_large_stream_goes_multipart_and_round_trips(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    data = os.urandom(12 * MiB)
    async with open_s3_backend(
        s3_endpoint_url,
        s3_bucket,
        session=aioboto3_session,
        extra_put_kwargs={"CacheControl": "max-age=60", "Metadata": {"origin": "test"}},
    ) as backend:
        calls = await count_calls(backend, "PutObject", "CreateMultipartUpload", "UploadPart")
        part_checksums: list[str] = []
        client = await backend.aget_client()

        def record_checksum(*, request: Any, **_: Any) -> None:
            part_checksums.append(request.headers["x-amz-checksum-sha256"].decode())

        client.meta.events.register("before-send.s3.UploadPart", record_checksum)
        result = await backend.aput_stream(
            key="docs/big.bin", chunks=chunks_of(data), content_type="application/x-test"
        )
        assert result.size == len(data)
        assert result.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert calls == {"PutObject": 0, "CreateMultipartUpload": 1, "UploadPart": 3}

        head = await s3_client.head_object(Bucket=s3_bucket, Key="docs/big.bin")
        assert head["ETag"].strip('"').endswith("-3")
        assert head["ContentLength"] == len(data)
        assert head["ContentType"] == "application/x-test"
        assert head["CacheControl"] == "max-age=60"
        assert head["Metadata"] == {"origin": "test"}
        # The parts carried SHA-256 checksums: S3's composite checksum is the
        # sha256 of the parts' sha256s, for parts of 5, 5 and 2 MiB.
        attributes = await s3_client.get_object_attributes(
            Bucket=s3_bucket, Key="docs/big.bin", ObjectAttributes=["Checksum"]
        )
        parts = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
        assert sorted(part_checksums) == sorted(b64_sha256(part) for part in parts)
        composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts))
        assert (
            attributes["Checksum"]["ChecksumSHA256"]
            == base64.b64encode(composite.digest()).decode()
        )
        assert attributes["Checksum"]["ChecksumType"] == "COMPOSITE"

        ref = ref_for("docs/big.bin", data)
        assert await backend.aget(ref, verify=True) == data
        async with backend.aopen(ref) as reader:
            assert reader.size == len(data)
            assert b"".join([chunk async for chunk in reader]) == data
        with pytest.raises(ChecksumMismatchError):
            await backend.aget(ref.replace(checksum="sha256:" + "0" * 64), verify=True)
    assert await pending_uploads(s3_client, s3_bucket) == []


async def test_small_stream_is_one_put_object_with_its_sha256(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any
) -> None:
    data = b"hello, s3" * 1000
    calls = await count_calls(s3_backend, "PutObject", "CreateMultipartUpload")
    result = await s3_backend.aput_stream(key="docs/small.txt", chunks=chunks_of(data, 1000))
    assert calls == {"PutObject": 1, "CreateMultipartUpload": 0}
    assert result.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    head = await s3_client.head_object(
        Bucket=s3_bucket, Key="docs/small.txt", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == b64_sha256(data)
    assert await s3_backend.aget(ref_for("docs/small.txt", data), verify=True) == data


async def test_exactly_one_part_is_a_single_put_and_empty_objects_work(
    s3_backend: S3StorageBackend,
) -> None:
    calls = await count_calls(s3_backend, "PutObject", "CreateMultipartUpload")
    data = os.urandom(PART)
    await s3_backend.aput_stream(key="docs/one-part.bin", chunks=chunks_of(data))
    empty = await s3_backend.aput_stream(key="docs/empty.bin", chunks=chunks_of(b""))
    assert calls == {"PutObject": 2, "CreateMultipartUpload": 0}
    assert empty.size == 0
    assert empty.checksum == f"sha256:{hashlib.sha256(b'').hexdigest()}"
    assert await s3_backend.aget(ref_for("docs/one-part.bin", data)) == data
    assert await s3_backend.aget(ref_for("docs/empty.bin", b"")) == b""


async def upload_headers(backend: S3StorageBackend) -> tuple[list[dict[str, str]], bytes, bytes]:
    """Upload a small object and a two-part one through ``backend``; return
    the headers of every PutObject/UploadPart request sent, and both contents."""
    sent: list[dict[str, str]] = []

    def record(*, request: Any, **_: Any) -> None:
        sent.append(
            {  # header values may be bytes
                name.lower(): value.decode() if isinstance(value, bytes) else value
                for name, value in request.headers.items()
            }
        )

    client = await backend.aget_client()
    client.meta.events.register("before-send.s3.PutObject", record)
    client.meta.events.register("before-send.s3.UploadPart", record)
    small, large = b"x" * 100, os.urandom(PART + 1)
    await backend.aput_stream(key="a/small", chunks=chunks_of(small))
    await backend.aput_stream(key="a/large", chunks=chunks_of(large))
    assert await backend.aget(ref_for("a/large", large), verify=True) == large
    return sent, small, large


async def test_uploads_carry_a_signed_checksum_instead_of_a_payload_hash(
    s3_backend: S3StorageBackend,
) -> None:
    """On http:// botocore would hash every body again to sign it, on the event
    loop; the signed ChecksumSHA256 header covers the bytes instead."""
    sent, small, large = await upload_headers(s3_backend)
    assert sorted(headers["x-amz-checksum-sha256"] for headers in sent) == sorted(
        [b64_sha256(small), b64_sha256(large[:PART]), b64_sha256(large[PART:])]
    )  # parts go up concurrently, in any order
    for headers in sent:
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert "x-amz-checksum-sha256" in signed.split(";")


async def test_checksum_validation_off_sends_no_checksums(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, checksum_validation=False
    ) as backend:
        sent, _, _ = await upload_headers(backend)
    assert len(sent) == 3
    for headers in sent:
        assert not [name for name in headers if "checksum" in name], headers
        # Without a checksum the body is signed: its sha256 is in the signature.
        assert headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"


async def test_parts_are_bounded_and_go_up_concurrently(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    data = os.urandom(3 * PART + 1)  # four parts
    in_flight, peak, sizes = 0, 0, []
    two_in_flight = anyio.Event()

    async def before(*, params: dict[str, Any], **_: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        with params["body"].getbuffer() as body:  # each part is a BytesIO
            sizes.append(body.nbytes)
        if in_flight == 2:
            two_in_flight.set()
        # Hold the first part until a second one is in flight: it only gets
        # there if parts really go up concurrently (a deadlock guard, not a
        # timing assertion).
        with anyio.fail_after(30):
            await two_in_flight.wait()

    def after(**_: Any) -> None:
        nonlocal in_flight
        in_flight -= 1

    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, max_concurrency=2
    ) as backend:
        client = await backend.aget_client()
        client.meta.events.register("before-call.s3.UploadPart", before)
        client.meta.events.register("after-call.s3.UploadPart", after)
        await backend.aput_stream(key="docs/four-parts.bin", chunks=chunks_of(data))
        assert await backend.aget(ref_for("docs/four-parts.bin", data)) == data
    assert peak == 2
    assert sorted(sizes) == [1, PART, PART, PART]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 25])
@pytest.mark.parametrize("length", [0, 1, 9, 10, 11, 49, 50])
async def test_part_splitter_cuts_exact_parts_from_any_chunking(
    chunk_size: int, length: int
) -> None:
    data = bytes(range(256))[:length] if length <= 256 else os.urandom(length)
    digest = Sha256Digest()
    splitter = _s3_multipart.PartSplitter(chunks_of(data, chunk_size), 10, digest)
    assert await splitter.fits_in_one_part() is (length <= 10)
    parts = []
    while True:
        part = await splitter.read_part()
        assert part.tell() == 0  # ready to send
        parts.append(part.getvalue())
        if await splitter.at_end():
            break
    assert b"".join(parts) == data
    assert [len(p) for p in parts[:-1]] == [10] * (len(parts) - 1)
    assert 0 < len(parts[-1]) <= 10 or length == 0
    assert (digest.size, digest.checksum) == (length, ref_for("x", data).checksum)


async def test_upload_memory_is_bounded_by_the_parts_in_flight(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    """An 8-part upload with 2 parts in flight holds at most 3 parts (2 sent,
    1 being read) plus a chunk. One copy per part in flight, as aiohttp's
    ``getbuffer()`` made of a ``bytes`` part wrapped by botocore, would add 2
    parts; memory growing with the object would add 5."""
    concurrency, chunks = 2, 8 * PART // MiB
    expected = hashlib.sha256()
    for index in range(chunks):
        expected.update(bytes([index]) * MiB)

    async def generated() -> AsyncIterator[bytes]:  # nothing held but the current chunk
        for index in range(chunks):
            yield bytes([index]) * MiB

    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, max_concurrency=concurrency
    ) as backend:
        await backend.aput_stream(key="docs/warm-up.bin", chunks=chunks_of(b"w"))
        tracemalloc.start()
        try:
            result = await backend.aput_stream(key="docs/eight-parts.bin", chunks=generated())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.checksum == f"sha256:{expected.hexdigest()}"
    # + the chunk in hand, botocore's 1 MiB reads to sign the body on http://,
    # and the HTTP buffers.
    bound = PART * (concurrency + 1) + 4 * MiB
    assert peak <= bound, f"traced peak {peak / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB"


async def test_oversized_stream_through_manager_leaves_nothing(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any
) -> None:
    manager = manager_for(s3_backend, "docs", backend_key="s3", max_size=11 * MiB)
    calls = await count_calls(s3_backend, "CreateMultipartUpload", "AbortMultipartUpload")
    with pytest.raises(ContentTooLargeError):  # the error itself, not an ExceptionGroup
        await manager.aput_stream(
            storage_key="docs",
            model_name="doc",
            entity_id=1,
            field_name="file",
            stream=chunks_of(os.urandom(12 * MiB)),
        )
    assert calls == {"CreateMultipartUpload": 1, "AbortMultipartUpload": 1}
    assert await pending_uploads(s3_client, s3_bucket) == []
    assert await stored_keys(s3_client, s3_bucket) == []


async def test_cancelled_stream_aborts_the_upload(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any
) -> None:
    calls = await count_calls(s3_backend, "UploadPart", "AbortMultipartUpload")
    part_stored = anyio.Event()
    client = await s3_backend.aget_client()
    client.meta.events.register("after-call.s3.UploadPart", lambda **_: part_stored.set())

    async def stream() -> AsyncGenerator[bytes, None]:
        for _ in range(11):  # two parts and a bit
            yield os.urandom(MiB)
        await part_stored.wait()  # a part is on the server now
        scope.cancel()
        await anyio.sleep_forever()

    chunks = stream()
    with anyio.CancelScope() as scope:
        await s3_backend.aput_stream(key="docs/cancelled.bin", chunks=chunks)
    await chunks.aclose()
    assert scope.cancelled_caught
    assert calls["UploadPart"] >= 1
    assert calls["AbortMultipartUpload"] == 1
    assert await pending_uploads(s3_client, s3_bucket) == []
    assert await stored_keys(s3_client, s3_bucket) == []


async def test_server_error_on_a_part_aborts_cleanly(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any
) -> None:
    calls = await count_calls(s3_backend, "AbortMultipartUpload")

    def fail_second_part(*, params: dict[str, Any], **_: Any) -> Any:
        # Returned from before-call, the response skips HTTP and botocore's retries.
        return error_response() if part_number(params) == 2 else None

    client = await s3_backend.aget_client()
    client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    with pytest.raises(BackendError, match="InternalError") as caught:
        await s3_backend.aput_stream(key="docs/failed.bin", chunks=chunks_of(os.urandom(12 * MiB)))
    assert isinstance(caught.value.__cause__, ClientError)
    assert calls["AbortMultipartUpload"] == 1
    assert await pending_uploads(s3_client, s3_bucket) == []
    assert await stored_keys(s3_client, s3_bucket) == []


async def test_dropped_connection_on_a_part_is_retried(s3_backend: S3StorageBackend) -> None:
    sends: list[int] = []

    def drop_second_part_once(*, request: Any, **_: Any) -> None:
        number = int(dict(httpx.URL(request.url).params)["partNumber"])
        sends.append(number)
        if number == 2 and sends.count(2) == 1:
            raise ConnectionClosedError(endpoint_url=request.url)

    client = await s3_backend.aget_client()
    client.meta.events.register("before-send.s3.UploadPart", drop_second_part_once)
    data = os.urandom(12 * MiB)
    result = await s3_backend.aput_stream(key="docs/retried.bin", chunks=chunks_of(data))
    assert sorted(sends) == [1, 2, 2, 3]
    assert result.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert await s3_backend.aget(ref_for("docs/retried.bin", data), verify=True) == data


@pytest.mark.parametrize(
    ("size", "operation"),
    [
        (100, "PutObject"),
        (PART + 1, "CompleteMultipartUpload"),
        # cancelled once the server created the upload, before its id arrived
        (PART + 1, "CreateMultipartUpload"),
    ],
)
async def test_cancelled_after_the_object_was_written_leaves_nothing(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any, size: int, operation: str
) -> None:
    # The server stored the object, but the caller was cancelled before the
    # answer arrived: the backend cannot know, so it deletes the (unique) key.
    async def cancel_once_answered(**_: Any) -> None:
        scope.cancel()
        await anyio.lowlevel.checkpoint()

    client = await s3_backend.aget_client()
    client.meta.events.register(f"after-call.s3.{operation}", cancel_once_answered)
    with anyio.CancelScope() as scope:
        await s3_backend.aput_stream(key="docs/late.bin", chunks=chunks_of(os.urandom(size)))
    assert scope.cancelled_caught
    assert await stored_keys(s3_client, s3_bucket) == []
    assert await pending_uploads(s3_client, s3_bucket) == []


async def test_too_many_parts_is_a_clear_error(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_s3_multipart, "MAX_PARTS", 2)
    with pytest.raises(BackendError, match="larger part_size"):
        await s3_backend.aput_stream(
            key="docs/huge.bin", chunks=chunks_of(os.urandom(2 * PART + 1))
        )
    assert await pending_uploads(s3_client, s3_bucket) == []
    assert await stored_keys(s3_client, s3_bucket) == []


# --------------------------------------------------------------------------- reads


async def test_ranged_reads(s3_backend: S3StorageBackend) -> None:
    data = bytes(range(256)) * 4
    await s3_backend.aput_stream(key="docs/range.bin", chunks=chunks_of(data))
    ref = ref_for("docs/range.bin", data)
    for start, end in [(0, None), (10, 20), (0, 1), (1000, None), (1000, 5000), (1023, 1024)]:
        async with s3_backend.aopen(ref, start=start, end=end) as reader:
            expected = data[start:end]
            assert reader.size == len(expected)
            assert await reader.read() == expected, (start, end)
    for start, end in [(2000, None), (5, 5), (1024, 2000)]:
        async with s3_backend.aopen(ref, start=start, end=end) as reader:
            assert await reader.read() == b"", (start, end)


async def test_missing_objects(s3_backend: S3StorageBackend) -> None:
    ref = ref_for("docs/missing.bin", b"")
    with pytest.raises(ObjectNotFoundError) as caught:
        await s3_backend.aget(ref)
    assert caught.value.location == "docs/missing.bin"
    assert isinstance(caught.value.__cause__, ClientError)
    with pytest.raises(ObjectNotFoundError):
        async with s3_backend.aopen(ref, start=3):
            pass
    with pytest.raises(ObjectNotFoundError):
        async with s3_backend.aopen(ref, start=3, end=3):
            pass
    assert await s3_backend.aexists(ref) is False
    await s3_backend.adelete(ref)  # idempotent

    await s3_backend.aput_stream(key="docs/missing.bin", chunks=chunks_of(b"x"))
    assert await s3_backend.aexists(ref) is True
    await s3_backend.adelete(ref)
    await s3_backend.adelete(ref)
    assert await s3_backend.aexists(ref) is False


async def test_missing_bucket_and_unreachable_server_are_storage_errors(
    s3_endpoint_url: str, aioboto3_session: Any
) -> None:
    ref = ref_for("docs/a.bin", b"")
    async with open_s3_backend(
        s3_endpoint_url, "no-such-bucket-here", session=aioboto3_session
    ) as backend:
        with pytest.raises(ConfigurationError, match="does not exist"):
            await backend.aget(ref)
        with pytest.raises(ConfigurationError, match="does not exist"):
            await backend.aput_stream(key="docs/a.bin", chunks=chunks_of(b"data"))

    no_retries = Config(retries={"total_max_attempts": 1}, connect_timeout=5)
    async with open_s3_backend(
        f"http://127.0.0.1:{free_port()}",
        "some-bucket",
        session=aioboto3_session,
        client_kwargs={"config": no_retries},
    ) as backend:
        with pytest.raises(BackendError) as caught:
            await backend.aexists(ref)  # not False: only "not found" means False
        assert isinstance(caught.value.__cause__, EndpointConnectionError)
        with pytest.raises(BackendError):
            await backend.aput_stream(key="docs/a.bin", chunks=chunks_of(b"data"))
        with pytest.raises(BackendError):
            await backend.aput_stream(key="docs/b.bin", chunks=chunks_of(os.urandom(PART + 1)))


# --------------------------------------------------------------------------- listing


async def test_listing_strips_the_prefix_and_respects_boundaries(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, prefix="/tenant/"
    ) as backend:
        assert backend.prefix == "tenant"
        for location in ["docs/a.txt", "docs/sub/b.txt", "docs2/c.txt"]:
            await backend.aput_stream(key=location, chunks=chunks_of(location.encode()))
        for key in ["tenant2/docs/x.txt", "other/y.txt", "tenant/folder/"]:
            await s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"")

        async def listed(prefix: str | None) -> set[str]:
            return {location async for location in backend.aiter_locations(prefix)}

        assert await listed(None) == {"docs/a.txt", "docs/sub/b.txt", "docs2/c.txt"}
        assert await listed("docs") == {"docs/a.txt", "docs/sub/b.txt"}
        assert await listed("docs/") == {"docs/a.txt", "docs/sub/b.txt"}
        assert await listed("docs2") == {"docs2/c.txt"}
        assert await listed("doc") == set()
        assert await listed("docs/sub") == {"docs/sub/b.txt"}

        infos = [info async for info in backend.aiter_objects("docs/sub")]
        assert [(i.location, i.size) for i in infos] == [("docs/sub/b.txt", len(b"docs/sub/b.txt"))]
        assert infos[0].last_modified.tzinfo is not None
        assert infos[0].last_modified.utcoffset() == timedelta(0)
        assert backend.timestamp_resolution == timedelta(seconds=1)
        assert "tenant/docs/a.txt" in await stored_keys(s3_client, s3_bucket)
        with pytest.raises(InvalidLocationError):
            await listed("../tenant2")


# --------------------------------------------------------------------------- deletes


async def test_batch_delete_uses_one_request_per_thousand_keys(
    s3_backend: S3StorageBackend, s3_bucket: str, s3_client: Any
) -> None:
    real = [f"docs/real-{i}.txt" for i in range(5)]

    async def put(key: str) -> None:
        await s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    async with anyio.create_task_group() as tg:
        for location in real:
            tg.start_soon(put, location)
    # Missing keys count as deleted, so 2,500 deletions need only 5 real objects.
    locations = real + [f"docs/missing-{i}.txt" for i in range(2495)] + ["../escape"]
    calls = await count_calls(s3_backend, "DeleteObjects")
    result = await s3_backend.adelete_many(locations)
    assert calls["DeleteObjects"] == 3
    assert sorted(result.deleted) == sorted(locations[:-1])
    assert list(result.failed) == ["../escape"]
    assert result.failed["../escape"].startswith("InvalidLocationError")
    assert await stored_keys(s3_client, s3_bucket) == []


async def test_batch_delete_reports_per_key_and_per_request_failures(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, delete_batch_size=2
    ) as backend:
        client = await backend.aget_client()
        requests: list[list[str]] = []

        def refuse(*, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            body = params["body"].decode()
            context["keys"] = keys = [k for k in ["a/1", "a/2", "a/3", "a/4"] if k in body]
            requests.append(keys)
            return error_response(503, "SlowDown") if "a/3" in keys else None

        def refuse_one_key(*, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            if "a/1" in context["keys"]:  # a quiet response lists only the failures
                parsed["Errors"] = [{"Key": "a/1", "Code": "AccessDenied", "Message": "nope"}]

        client.meta.events.register("before-call.s3.DeleteObjects", refuse)
        client.meta.events.register("after-call.s3.DeleteObjects", refuse_one_key)
        result = await backend.adelete_many(["a/1", "a/2", "a/3", "a/4"])
    assert sorted(map(sorted, requests)) == [["a/1", "a/2"], ["a/3", "a/4"]]
    assert result.deleted == ["a/2"]
    assert result.failed["a/1"] == "AccessDenied: nope"
    assert set(result.failed) == {"a/1", "a/3", "a/4"}
    assert "SlowDown" in result.failed["a/3"]
    assert result.failed["a/3"].startswith("BackendError")


# --------------------------------------------------------------------------- presigned


async def test_presigned_download_through_the_manager(
    s3_backend: S3StorageBackend, aioboto3_session: Any
) -> None:
    manager = manager_for(s3_backend, "docs", backend_key="s3")
    ref = await manager.aput_bytes(
        storage_key="docs",
        model_name="doc",
        entity_id=7,
        field_name="file",
        content=b"%PDF-1.7 report",
        original_filename="Résumé 2024.pdf",
    )
    url = await manager.apresigned_url(ref, expires_in=60)
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7 report"
    assert response.headers["content-disposition"] == content_disposition("Résumé 2024.pdf")
    with pytest.raises(ValueError, match="expires_in"):
        await manager.apresigned_url(ref, expires_in=0)


async def test_presigned_post_upload(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, prefix="tenant"
    ) as backend:
        upload = await backend.apresigned_upload(
            key="docs/direct.txt", max_size=10, content_type="text/plain", expires_in=60
        )
        assert upload.method == "POST"
        assert upload.location == "docs/direct.txt"
        assert upload.fields["key"] == "tenant/docs/direct.txt"
        # moto 5.2 does not enforce content-length-range (an oversized POST is
        # accepted), so the limit is checked in the signed policy S3 enforces.
        policy = json.loads(base64.b64decode(upload.fields["policy"]))
        assert ["content-length-range", 0, 10] in policy["conditions"]
        assert {"Content-Type": "text/plain"} in policy["conditions"]

        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(
                upload.url,
                data=upload.fields,
                files={"file": ("direct.txt", b"0123456", "text/plain")},
            )
        assert response.status_code in (200, 201, 204), response.text
        head = await s3_client.head_object(Bucket=s3_bucket, Key="tenant/docs/direct.txt")
        assert head["ContentType"] == "text/plain"
        assert await backend.aget(ref_for("docs/direct.txt", b"0123456")) == b"0123456"
        with pytest.raises(InvalidLocationError):
            await backend.apresigned_upload(key="../x", max_size=None)


# --------------------------------------------------------------------------- leftovers


async def test_cleanup_aborts_abandoned_uploads_under_the_prefix(
    s3_endpoint_url: str, s3_bucket: str, s3_client: Any, aioboto3_session: Any
) -> None:
    for key in ["tenant/docs/abandoned.bin", "elsewhere/abandoned.bin"]:
        await s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    uploads = (await s3_client.list_multipart_uploads(Bucket=s3_bucket))["Uploads"]
    # moto reports the same fixed "Initiated" time (2010-11-10) for every
    # upload, so the cutoffs are taken relative to the time it reports.
    initiated = uploads[0]["Initiated"]
    async with open_s3_backend(
        s3_endpoint_url, s3_bucket, session=aioboto3_session, prefix="tenant"
    ) as backend:
        assert await backend.acleanup_leftovers(older_than=initiated, dry_run=False) == 0
        before = initiated - timedelta(hours=1)
        assert await backend.acleanup_leftovers(older_than=before, dry_run=False) == 0
        assert len(await pending_uploads(s3_client, s3_bucket)) == 2

        future = datetime.now(UTC) + timedelta(hours=1)
        assert await backend.acleanup_leftovers(older_than=future) == 1  # dry run by default
        assert len(await pending_uploads(s3_client, s3_bucket)) == 2
        assert await backend.acleanup_leftovers(older_than=future, dry_run=False) == 1
    assert await pending_uploads(s3_client, s3_bucket) == ["elsewhere/abandoned.bin"]


# --------------------------------------------------------------------------- client


class CountingSession:
    """Wraps an aioboto3 session, counting clients and yielding to other tasks
    while one opens (so that two first calls really overlap)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.opened = 0

    def client(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return _SlowToOpen(self.session.client(*args, **kwargs))


class _SlowToOpen:
    def __init__(self, context: Any) -> None:
        self.context = context

    async def __aenter__(self) -> Any:
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        return await self.context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.context.__aexit__(*exc_info)


async def test_client_creation_loads_botocore_models_off_the_event_loop(
    s3_endpoint_url: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore parses its JSON models (about 110 ms for S3) inside the async
    client creation; the backend loads them in a worker thread first."""
    import threading

    import aioboto3
    from botocore.loaders import JSONFileLoader

    loaded_on_loop: list[str] = []
    load_file = JSONFileLoader.load_file

    def recording_load_file(self: JSONFileLoader, file_path: str) -> Any:
        data = load_file(self, file_path)
        if data is not None and threading.current_thread() is threading.main_thread():
            loaded_on_loop.append(os.path.basename(file_path))
        return data

    monkeypatch.setattr(JSONFileLoader, "load_file", recording_load_file)
    fresh = await anyio.to_thread.run_sync(aioboto3.Session)  # nothing loaded yet
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=fresh) as backend:
        await backend.aput_stream(key="docs/a.bin", chunks=chunks_of(b"a"))
        assert [info.location async for info in backend.aiter_objects("docs")] == ["docs/a.bin"]
    assert loaded_on_loop == []


async def test_one_lazy_client_reopened_after_aclose(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> None:
    session = CountingSession(aioboto3_session)
    ref = ref_for("docs/none.bin", b"")
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=session) as backend:
        assert session.opened == 0  # no I/O in the constructor
        results: list[bool] = []

        async def check() -> None:
            results.append(await backend.aexists(ref))

        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            tg.start_soon(check)
        assert results == [False, False]
        assert session.opened == 1
        await backend.aexists(ref)
        assert session.opened == 1

        await backend.aclose()
        await backend.aclose()  # twice is fine
        assert await backend.aexists(ref) is False
        assert session.opened == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": ""}, "bucket"),
        ({"bucket": "b", "part_size": 1024}, "part_size"),
        ({"bucket": "b", "max_concurrency": 0}, "max_concurrency"),
        ({"bucket": "b", "delete_batch_size": 1001}, "delete_batch_size"),
        ({"bucket": "b", "extra_put_kwargs": {"Key": "x"}}, "extra_put_kwargs"),
        ({"bucket": "b", "client_kwargs": {"config": {"retries": 3}}}, "Config"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        S3StorageBackend(**kwargs)


def test_constructor_validates_the_prefix() -> None:
    with pytest.raises(InvalidLocationError):
        S3StorageBackend(bucket="b", prefix="../up")
    assert S3StorageBackend(bucket="b", prefix="").prefix == ""
