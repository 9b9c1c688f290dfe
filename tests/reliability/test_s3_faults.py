"""S3 under network faults: every upload either succeeds after botocore's
retries or raises a StorageError with its multipart upload aborted, and no
partial object is ever visible.

The backend talks to moto through :class:`~tests.reliability.fault_proxy.FaultProxy`
(a TCP proxy on loopback that answers chosen requests with 500 InternalError
or 503 SlowDown, resets the connection mid-body, or holds the response past
the client's read timeout). The client is configured with a short read
timeout and few attempts, as an application that must fail fast would be.
While each upload runs, a watcher lists the key directly on moto every 20 ms:
it must never see an object of the wrong size.

The short form runs a fixed matrix (each fault kind once, then on every
attempt, on the operations of a multipart and of a single-request upload)
and a few random fault plans; the full form adds a long random campaign.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest

pytest.importorskip("aioboto3")

from botocore.config import Config

from granite_storage import StoredObjectRef
from granite_storage.backends.s3 import S3StorageBackend
from granite_storage.errors import BackendError, StorageError
from tests.backends.conftest import S3_TEST_PART_SIZE, open_s3_backend
from tests.reliability.conftest import Figures
from tests.reliability.fault_proxy import Fault, FaultProxy, FaultRule
from tests.reliability.s3_support import (
    ObjectWatcher,
    moto_client,
    pending_uploads,
    stored_objects,
)
from tests.reliability.scale import FULL, SCALE, SEED

pytestmark = [pytest.mark.s3, pytest.mark.timeout(SCALE.timeout)]

KiB, MiB = 1024, 1024 * 1024
#: botocore's read timeout and attempts (the first try included) for these tests.
READ_TIMEOUT = 1.0
ATTEMPTS = 3
#: A held response comes this late: well past the read timeout.
HOLD = READ_TIMEOUT * 3
MULTIPART_SIZE = 2 * S3_TEST_PART_SIZE + 2 * MiB  # three parts
SMALL_SIZE = 100 * KiB  # one PutObject

Outcome = Literal["stored", "refused"]


@dataclass(frozen=True)
class Case:
    """One upload under one fault rule, and the outcome it must have."""

    operation: str
    fault: Fault
    first: int
    count: int | None
    size: int
    expected: Outcome

    def __str__(self) -> str:
        times = "every attempt" if self.count is None else f"{self.count}x"
        return f"{self.operation}#{self.first} {self.fault} {times}"


MATRIX = [
    # Once: botocore retries and the upload succeeds.
    Case("UploadPart", Fault.internal_error(), 2, 1, MULTIPART_SIZE, "stored"),
    Case("UploadPart", Fault.slow_down(), 2, 1, MULTIPART_SIZE, "stored"),
    Case("UploadPart", Fault.reset(), 2, 1, MULTIPART_SIZE, "stored"),
    Case("UploadPart", Fault.delay(HOLD), 2, 1, MULTIPART_SIZE, "stored"),
    Case("PutObject", Fault.reset(), 1, 1, SMALL_SIZE, "stored"),
    # Every attempt: the retries run out, the upload fails and is aborted.
    Case("UploadPart", Fault.slow_down(), 2, None, MULTIPART_SIZE, "refused"),
    Case("UploadPart", Fault.reset(), 2, None, MULTIPART_SIZE, "refused"),
    *([Case("UploadPart", Fault.delay(HOLD), 2, None, MULTIPART_SIZE, "refused")] if FULL else []),
    Case("CreateMultipartUpload", Fault.internal_error(), 1, None, MULTIPART_SIZE, "refused"),
    # moto creates an upload per attempt whose answer is held back: the retried
    # create must not leave those strays pending, whether the upload then
    # succeeds or every attempt times out.
    Case("CreateMultipartUpload", Fault.delay(HOLD), 1, 1, MULTIPART_SIZE, "stored"),
    Case("CreateMultipartUpload", Fault.delay(HOLD), 1, None, MULTIPART_SIZE, "refused"),
    # moto completes each attempt, the client never hears of it: the backend
    # must delete the object it cannot know was written.
    Case("CompleteMultipartUpload", Fault.delay(HOLD), 1, None, MULTIPART_SIZE, "refused"),
    Case("PutObject", Fault.delay(HOLD), 1, None, SMALL_SIZE, "refused"),
]


@pytest.fixture
async def moto(s3_endpoint_url: str, aioboto3_session: Any) -> AsyncIterator[Any]:
    async with moto_client(aioboto3_session, s3_endpoint_url) as client:
        yield client


@asynccontextmanager
async def faulty_backend(
    proxy: FaultProxy, bucket: str, session: Any
) -> AsyncIterator[S3StorageBackend]:
    """A backend whose client goes through the proxy, with a short read
    timeout and few attempts (a fresh client: a fresh retry quota)."""
    config = Config(
        read_timeout=READ_TIMEOUT,
        connect_timeout=2,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
    )
    async with open_s3_backend(
        proxy.url, bucket, session=session, client_kwargs={"config": config}
    ) as backend:
        yield backend


async def chunks_of(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class Verdict:
    outcome: Outcome
    error: StorageError | None
    lost: int
    leftovers: int


async def upload_and_judge(
    backend: S3StorageBackend, moto: Any, bucket: str, data: bytes
) -> Verdict:
    """Upload ``data`` to a new key while a watcher lists it on moto; check
    that it either arrived whole or left nothing, and say which."""
    key = f"faults/{uuid.uuid4().hex}.bin"
    watcher = ObjectWatcher(moto, bucket, key)
    error: StorageError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        try:
            result = await backend.aput_stream(key=key, chunks=chunks_of(data))
        except StorageError as exc:
            error = exc
        finally:
            watcher.stop()

    # Never a partial object, not even for a moment.
    assert {size for _, size in watcher.seen} <= {len(data)}, watcher.seen
    assert watcher.polls > 0
    stored = await stored_objects(moto, bucket, key)
    leftovers = len(await pending_uploads(moto, bucket, key))
    if error is None:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert (result.size, result.checksum) == (len(data), digest)
        ref = StoredObjectRef("faults", "s3", key, len(data), digest)
        lost = (
            0 if stored == {key: len(data)} and await backend.aget(ref, verify=True) == data else 1
        )
        return Verdict("stored", None, lost, leftovers)
    assert isinstance(error, BackendError), repr(error)
    assert error.__cause__ is not None
    return Verdict("refused", error, 0, leftovers + len(stored))


@pytest.mark.parametrize("case", MATRIX, ids=str)
async def test_each_fault_is_retried_or_aborted(
    case: Case,
    s3_endpoint_url: str,
    moto: Any,
    s3_bucket: str,
    aioboto3_session: Any,
    figures: Figures,
) -> None:
    data = random.Random(SEED).randbytes(case.size)
    # The proxy lives inside the test: its task group must end in the task
    # that started it, which an async fixture does not guarantee.
    async with FaultProxy(s3_endpoint_url, max_hold=HOLD) as proxy:
        proxy.add(FaultRule(case.operation, case.fault, first=case.first, count=case.count))
        async with faulty_backend(proxy, s3_bucket, aioboto3_session) as backend:
            verdict = await upload_and_judge(backend, moto, s3_bucket, data)

    figures.uploads, figures.faults = 1, proxy.faults_injected
    figures.lost, figures.leftovers = verdict.lost, verdict.leftovers
    assert verdict.outcome == case.expected, verdict.error
    assert (verdict.lost, verdict.leftovers) == (0, 0)
    faulted = [e for e in proxy.exchanges if e.fault is not None]
    assert faulted and all(e.operation == case.operation for e in faulted)
    if case.expected == "stored":
        assert len(faulted) == case.count
        return
    # Refused: the faulted request was tried ATTEMPTS times, a multipart
    # upload that had been created was aborted (moto answers 404 if it had
    # completed it), and an object whose completion went unanswered deleted.
    assert len(faulted) >= ATTEMPTS
    created = [e for e in proxy.seen("CreateMultipartUpload") if e.status == 200]
    assert len(proxy.seen("AbortMultipartUpload")) == len(created)
    if case.operation in ("CompleteMultipartUpload", "PutObject"):
        assert [e.status for e in proxy.seen("DeleteObject")] == [204]


@pytest.mark.parametrize(
    ("operation", "size"),
    [("PutObject", SMALL_SIZE), ("CompleteMultipartUpload", MULTIPART_SIZE)],
)
async def test_a_refusal_after_an_unanswered_attempt_leaves_nothing(
    operation: str,
    size: int,
    s3_endpoint_url: str,
    moto: Any,
    s3_bucket: str,
    aioboto3_session: Any,
    figures: Figures,
) -> None:
    """The first attempt is carried out but its answer held back; the retries
    are refused. The final error is a refusal, yet the object exists: the
    backend must delete it rather than trust the last answer."""
    async with FaultProxy(s3_endpoint_url, max_hold=HOLD) as proxy:
        proxy.add(FaultRule(operation, Fault.delay(HOLD), first=1, count=1))
        proxy.add(FaultRule(operation, Fault.internal_error(), first=1, count=None))  # the rest
        async with faulty_backend(proxy, s3_bucket, aioboto3_session) as backend:
            verdict = await upload_and_judge(backend, moto, s3_bucket, random.randbytes(size))
    figures.uploads, figures.faults = 1, proxy.faults_injected
    figures.lost, figures.leftovers = verdict.lost, verdict.leftovers
    assert verdict.outcome == "refused"
    assert (verdict.lost, verdict.leftovers) == (0, 0)
    assert [e.status for e in proxy.seen("DeleteObject")] == [204]


async def test_random_fault_campaign(
    s3_endpoint_url: str,
    moto: Any,
    s3_bucket: str,
    aioboto3_session: Any,
    figures: Figures,
) -> None:
    """Random plans of one or two faults (any kind, on any upload operation,
    once, twice or on every attempt), each on its own upload."""
    rng = random.Random(SEED)
    outcomes = {"stored": 0, "refused": 0}
    async with FaultProxy(s3_endpoint_url, max_hold=HOLD) as proxy:
        await run_campaign(proxy, moto, s3_bucket, aioboto3_session, rng, outcomes, figures)
    figures.notes.append(f"outcomes: {outcomes}")


async def run_campaign(
    proxy: FaultProxy,
    moto: Any,
    s3_bucket: str,
    aioboto3_session: Any,
    rng: random.Random,
    outcomes: dict[str, int],
    figures: Figures,
) -> None:
    for _ in range(SCALE.fault_campaign_uploads):
        size = rng.choice([SMALL_SIZE, rng.randrange(1, S3_TEST_PART_SIZE), MULTIPART_SIZE])
        operations = (
            ["PutObject"]
            if size <= S3_TEST_PART_SIZE
            else ["UploadPart", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload"]
        )
        proxy.clear()
        for _ in range(rng.randint(1, 2)):
            kind = rng.choices(
                [Fault.internal_error(), Fault.slow_down(), Fault.reset(), Fault.delay(HOLD)],
                weights=[3, 3, 3, 1],
            )[0]
            proxy.add(
                FaultRule(
                    rng.choice(operations),
                    kind,
                    first=rng.randint(1, 3),
                    count=rng.choice([1, 1, 2, None]),
                )
            )
        async with faulty_backend(proxy, s3_bucket, aioboto3_session) as backend:
            verdict = await upload_and_judge(backend, moto, s3_bucket, rng.randbytes(size))
        outcomes[verdict.outcome] += 1
        figures.uploads += 1
        figures.faults += proxy.faults_injected
        figures.lost += verdict.lost
        figures.leftovers += verdict.leftovers
        assert (verdict.lost, verdict.leftovers) == (0, 0), [str(r.fault) for r in proxy.rules]
