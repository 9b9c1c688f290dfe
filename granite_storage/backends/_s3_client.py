"""The S3 backend's client: one aiobotocore client, created on first use
with the backend's defaults merged under the user's ``Config``, and closed
by the backend's ``aclose``.

Imported only by :mod:`granite_storage.backends.s3`, after it checked that
aioboto3 is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
import anyio.to_thread
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from granite_storage.errors import ConfigurationError


class S3Client:
    """Opens one client on the first :meth:`aget` (two concurrent first
    calls still open one) and keeps it until :meth:`aclose`; the next
    :meth:`aget` after that opens a new one. No I/O in the constructor.

    :raises ConfigurationError: if ``client_kwargs["config"]`` is not a
        ``botocore.config.Config``.
    """

    def __init__(
        self,
        session: aioboto3.Session | None,
        client_kwargs: Mapping[str, Any] | None,
        *,
        max_concurrency: int,
        checksum_validation: bool,
    ) -> None:
        self._kwargs: dict[str, Any] = dict(client_kwargs or {})
        config = self._kwargs.get("config")
        if config is not None and not isinstance(config, Config):
            raise ConfigurationError(
                f"client_kwargs['config'] must be a botocore.config.Config, got {type(config)}"
            )
        self._session = session
        self._max_concurrency = max_concurrency
        self._checksum_validation = checksum_validation
        self._client: Any = None
        self._exit_stack: AsyncExitStack | None = None
        self._lock = anyio.Lock()

    def config(self) -> Config:
        """The backend's defaults, with the user's ``Config`` merged over them."""
        defaults: dict[str, Any] = {
            # Reads are verified by aopen(verify=True), off the event loop;
            # botocore's own validation would hash every chunk inside it.
            "response_checksum_validation": "when_required",
            "max_pool_connections": max(10, 2 * self._max_concurrency),
        }
        if self._checksum_validation:
            # Every upload then carries a signed ChecksumSHA256 header that the
            # server verifies the body against, so hashing the body once more
            # for the signature adds nothing. botocore skips that hash by itself
            # on https://, but on http:// (MinIO, moto) it hashes every part on
            # the event loop: ~8 ms per 8 MiB part, and a third sha256 pass.
            defaults["s3"] = {"payload_signing_enabled": False}
        else:
            defaults["request_checksum_calculation"] = "when_required"
        config = Config(**defaults)
        user_config = self._kwargs.get("config")
        return config.merge(user_config) if user_config is not None else config

    async def aget(self) -> Any:
        """The client, opened on the first call.

        :raises ConfigurationError: if it cannot be created from the session
            and ``client_kwargs`` (an invalid endpoint URL, ...).
        """
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                session = await anyio.to_thread.run_sync(_preload_botocore, self._session)
                kwargs = {**self._kwargs, "config": self.config()}
                stack = AsyncExitStack()
                try:
                    client = await stack.enter_async_context(session.client("s3", **kwargs))
                except (BotoCoreError, ValueError) as exc:
                    raise ConfigurationError(
                        f"could not create an S3 client from client_kwargs: {exc}"
                    ) from exc
                self._client, self._exit_stack = client, stack
        return self._client

    async def aclose(self) -> None:
        """Close the client and its connection pool; safe to call twice."""
        async with self._lock:
            stack, self._client, self._exit_stack = self._exit_stack, None, None
            if stack is not None:
                await stack.aclose()


def _preload_botocore(session: aioboto3.Session | None) -> aioboto3.Session:
    """Return ``session`` (a new one if None) with the files botocore reads to
    create and use an S3 client already loaded; runs in a worker thread.

    aiobotocore reads and parses them synchronously inside the async client
    creation, which held the event loop for about 110 ms; afterwards the
    creation finds them in the loader's cache. Building a session reads the
    AWS config files, and aioboto3 imports its S3 helpers (and boto3's
    transfer module) on the first client: both happen here too.
    """
    import aioboto3.s3.inject  # imported by the first client creation

    session = session if session is not None else aioboto3.Session()
    core = getattr(session, "_session", None)  # the botocore session; absent on look-alikes
    if core is None:
        return session
    loader = core.get_component("data_loader")
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        loader.load_service_model("s3", type_name)
    return session
