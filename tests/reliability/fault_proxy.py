"""A fault-injecting HTTP/1.1 proxy on loopback, in front of moto's S3 server.

The S3 backend under test talks to the proxy (its ``endpoint_url``), the proxy
to moto. Every request is classified as an S3 operation (``UploadPart``,
``PutObject``, ``CompleteMultipartUpload``, ...) and matched against the
:class:`FaultRule` list; a matching rule answers it with one :class:`Fault`:

* ``status``: an S3 error response (500 ``InternalError``, 503 ``SlowDown``)
  without forwarding the request;
* ``reset``: half the request body is read, then the connection is reset
  (``SO_LINGER`` 0, so the client sees ``ECONNRESET``);
* ``delay``: the request is forwarded (moto executes it) and its response is
  held back for ``seconds``, past the client's read timeout.

Bounded behaviour: the proxy listens on 127.0.0.1 only, request and response
heads are limited to 64 KiB, bodies are relayed in 64 KiB pieces (never
buffered whole), a delay is capped at ``max_hold`` seconds, and every
connection is closed when the proxy's ``async with`` block ends.

The proxy answers ``Expect: 100-continue`` itself and strips it before
forwarding, so the relay never has to interleave interim responses.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

import anyio
from anyio.abc import Listener, SocketAttribute, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["Exchange", "Fault", "FaultProxy", "FaultRule", "s3_operation"]

_MAX_HEAD = 64 * 1024
_PIECE = 64 * 1024
_NETWORK_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.DelimiterNotFound,
    OSError,
)
_REASONS = {500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Fault:
    """What the proxy does to a request a rule matched."""

    kind: Literal["status", "reset", "delay"]
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0

    @classmethod
    def internal_error(cls) -> Fault:
        return cls("status", 500, "InternalError")

    @classmethod
    def slow_down(cls) -> Fault:
        return cls("status", 503, "SlowDown")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)

    def __str__(self) -> str:
        if self.kind == "status":
            return f"{self.status} {self.code}"
        if self.kind == "delay":
            return f"delay {self.seconds:g}s"
        return "connection reset"


@dataclass(slots=True)
class FaultRule:
    """Answer matching requests ``first`` to ``first + count - 1`` with ``fault``.

    Requests are counted per rule, in the order they reach the proxy
    (1-based); ``count=None`` faults every matching request from ``first`` on.
    """

    operation: str
    fault: Fault
    first: int = 1
    count: int | None = 1
    seen: int = 0

    def match(self, operation: str) -> Fault | None:
        if operation != self.operation:
            return None
        self.seen += 1
        if self.seen < self.first:
            return None
        if self.count is not None and self.seen >= self.first + self.count:
            return None
        return self.fault


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the proxy saw: its operation, the fault applied (if any)
    and the status moto answered (``None`` when the request never reached it)."""

    operation: str
    target: str
    fault: Fault | None
    status: int | None
    #: When the request arrived (``time.monotonic()``).
    at: float = field(default_factory=time.monotonic)


def s3_operation(method: str, target: str) -> str:
    """The S3 operation of a path-style request, from its method and query."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    has_key = len(parts.path.lstrip("/").split("/", 1)) == 2
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "PostObject"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if "uploads" in query:
        return "ListMultipartUploads"
    if "uploadId" in query:
        return "ListParts"
    if not has_key:
        return "ListObjects"
    return "GetObject"


@dataclass(slots=True)
class _Head:
    """A parsed request or response head; ``raw`` keeps the original bytes."""

    first_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def without(self, *names: str) -> bytes:
        drop = {name.lower() for name in names}
        lines = [self.first_line] + [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    head = _Head(lines[0])
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            head.headers.append((key.strip(), value.strip()))
    return head


async def _read_head(reader: BufferedByteReceiveStream) -> _Head:
    return _parse_head(await reader.receive_until(b"\r\n\r\n", _MAX_HEAD))


async def _body(
    reader: BufferedByteReceiveStream, head: _Head, *, until_eof: bool
) -> AsyncGenerator[bytes]:
    """The framed body after ``head``, as raw pieces (chunked framing kept)."""
    if (head.get("transfer-encoding") or "").lower() == "chunked":
        while True:
            line = await reader.receive_until(b"\r\n", _MAX_HEAD)
            size = int(line.split(b";")[0], 16)
            yield line + b"\r\n"
            if size == 0:
                # Trailers, up to the empty line.
                while trailer := await reader.receive_until(b"\r\n", _MAX_HEAD):
                    yield trailer + b"\r\n"
                yield b"\r\n"
                return
            remaining = size + 2  # the data and its CRLF
            while remaining:
                piece = await reader.receive_exactly(min(remaining, _PIECE))
                remaining -= len(piece)
                yield piece
    elif (length := head.get("content-length")) is not None:
        remaining = int(length)
        while remaining:
            piece = await reader.receive_exactly(min(remaining, _PIECE))
            remaining -= len(piece)
            yield piece
    elif until_eof:
        while True:
            try:
                yield await reader.receive(_PIECE)
            except anyio.EndOfStream:
                return


def _reset(stream: SocketStream) -> None:
    """Make the next close send RST instead of FIN."""
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Upstream:
    """One connection to moto, opened on demand and reopened after a close."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._stream: SocketStream | None = None
        self._reader: BufferedByteReceiveStream | None = None

    async def connect(self) -> tuple[SocketStream, BufferedByteReceiveStream]:
        if self._stream is None or self._reader is None:
            self._stream = await anyio.connect_tcp(self._host, self._port)
            self._reader = BufferedByteReceiveStream(self._stream)
        return self._stream, self._reader

    async def aclose(self) -> None:
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await stream.aclose()


class FaultProxy:
    """``async with FaultProxy("http://127.0.0.1:PORT") as proxy:`` then use
    ``proxy.url`` as the S3 endpoint; add rules with :meth:`add` at any time.

    :param upstream: moto's endpoint URL.
    :param max_hold: the longest a ``delay`` fault holds a response, in seconds.
    """

    def __init__(self, upstream: str, *, max_hold: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self.max_hold = max_hold
        self.rules: list[FaultRule] = []
        self.exchanges: list[Exchange] = []
        self.port = 0
        self._task_group: TaskGroup | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults_injected(self) -> int:
        return sum(1 for exchange in self.exchanges if exchange.fault is not None)

    def add(self, *rules: FaultRule) -> None:
        self.rules.extend(rules)

    def clear(self) -> None:
        """Drop every rule and forget every exchange."""
        self.rules.clear()
        self.exchanges.clear()

    def seen(self, operation: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.operation == operation]

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._accept, listener)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    async def _accept(self, listener: Listener[SocketStream]) -> None:
        async with listener:
            await listener.serve(self._serve)

    def _match(self, operation: str) -> Fault | None:
        for rule in self.rules:
            fault = rule.match(operation)
            if fault is not None:
                return fault
        return None

    async def _serve(self, client: SocketStream) -> None:
        upstream = _Upstream(*self._upstream)
        try:
            async with client:
                reader = BufferedByteReceiveStream(client)
                while await self._relay_one(client, reader, upstream):
                    pass
        except _NETWORK_ERRORS:
            pass  # either side went away: nothing to relay any more
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    async def _relay_one(
        self, client: SocketStream, reader: BufferedByteReceiveStream, upstream: _Upstream
    ) -> bool:
        """Relay one request and its response; whether the connection stays open."""
        try:
            request = await _read_head(reader)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return False
        method, target = request.first_line.split(" ")[:2]
        operation = s3_operation(method, target)
        fault = self._match(operation)
        if (request.get("expect") or "").lower() == "100-continue":
            await client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if fault is not None and fault.kind == "status":
            await _drain(_body(reader, request, until_eof=False))
            self.exchanges.append(Exchange(operation, target, fault, None))
            await client.send(_error_response(fault))
            return True
        if fault is not None and fault.kind == "reset":
            # Half the body arrives, then the connection breaks.
            await _drain(
                _body(reader, request, until_eof=False),
                int(request.get("content-length") or 0) // 2,
            )
            self.exchanges.append(Exchange(operation, target, fault, None))
            _reset(client)
            return False

        stream, upstream_reader = await upstream.connect()
        await stream.send(request.without("expect"))
        async with aclosing(_body(reader, request, until_eof=False)) as body:
            async for piece in body:
                await stream.send(piece)
        response = await _read_head(upstream_reader)
        status = int(response.first_line.split(" ")[1])
        self.exchanges.append(Exchange(operation, target, fault, status))
        if fault is not None:  # a delay: moto has done the work, the client waits in vain
            await anyio.sleep(min(fault.seconds, self.max_hold))
        has_body = method != "HEAD" and status not in (204, 304)
        framed = (
            response.get("content-length") is not None
            or (response.get("transfer-encoding") or "").lower() == "chunked"
        )
        await client.send(response.without() if framed or not has_body else _close(response))
        if has_body:
            async with aclosing(_body(upstream_reader, response, until_eof=True)) as body:
                async for piece in body:
                    await client.send(piece)
        keep = (response.get("connection") or "").lower() != "close" and (framed or not has_body)
        if not keep:
            await upstream.aclose()
        return keep and (request.get("connection") or "").lower() != "close"


async def _drain(body: AsyncGenerator[bytes], limit: int | None = None) -> None:
    """Read and discard ``body``, or its first ``limit`` bytes."""
    received = 0
    async with aclosing(body):
        async for piece in body:
            received += len(piece)
            if limit is not None and received >= limit:
                return


def _close(response: _Head) -> bytes:
    """A head whose body ends when the connection closes says so."""
    response.headers = [(k, v) for k, v in response.headers if k.lower() != "connection"]
    response.headers.append(("Connection", "close"))
    return response.without()


def _error_response(fault: Fault) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>injected by the fault proxy</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    reason = _REASONS.get(fault.status, "Error")
    head = (
        f"HTTP/1.1 {fault.status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body
