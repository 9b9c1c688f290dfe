"""Fixtures for the backend-specific tests, and an S3 backend factory the
contract suite can import (fixtures defined here are not visible from
tests/contract/)::

    from tests.backends.conftest import open_s3_backend

    async with open_s3_backend(s3_endpoint_url, s3_bucket) as backend:
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from granite_storage.backends.s3 import S3StorageBackend

#: S3's smallest part size: multipart tests need only a few MiB.
S3_TEST_PART_SIZE = 5 * 1024 * 1024


@asynccontextmanager
async def open_s3_backend(
    endpoint_url: str, bucket: str, **kwargs: Any
) -> AsyncIterator[S3StorageBackend]:
    """An ``S3StorageBackend`` on the moto server at ``endpoint_url``, closed on exit.

    ``kwargs`` go to the constructor (``part_size`` defaults to 5 MiB);
    ``client_kwargs`` given there are merged over the endpoint and region.
    """
    pytest.importorskip("aioboto3")
    from granite_storage.backends.s3 import S3StorageBackend

    kwargs.setdefault("part_size", S3_TEST_PART_SIZE)
    client_kwargs = {
        "endpoint_url": endpoint_url,
        "region_name": "us-east-1",
        **kwargs.pop("client_kwargs", {}),
    }
    backend = S3StorageBackend(bucket=bucket, client_kwargs=client_kwargs, **kwargs)
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
async def s3_backend(
    s3_endpoint_url: str, s3_bucket: str, aioboto3_session: Any
) -> AsyncIterator[S3StorageBackend]:
    """A ready ``S3StorageBackend`` on a fresh, empty bucket; closed afterwards."""
    async with open_s3_backend(s3_endpoint_url, s3_bucket, session=aioboto3_session) as backend:
        yield backend


@pytest.fixture
async def s3_client(s3_endpoint_url: str, aioboto3_session: Any) -> AsyncIterator[Any]:
    """A raw aiobotocore S3 client on the moto server, to arrange and check tests."""
    async with aioboto3_session.client(
        "s3", endpoint_url=s3_endpoint_url, region_name="us-east-1"
    ) as client:
        yield client
