"""A raw HTTP/1.1 client for what httpx will not do: stop sending mid-body,
reset the connection, keep sending a body the server has already refused.

The response is read while the body is being sent, so a server that answers
early (413) and closes is heard before its close can discard the answer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute

__all__ = ["RawExchange", "RawResponse", "chunked", "form_parts", "raw_request"]

_GONE = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class RawExchange:
    """What happened: the response (``None`` if none came, or the client
    aborted), and whether the whole body went out before the connection ended."""

    response: RawResponse | None
    body_sent: bool
    #: The server reset the connection (it closed it with bytes unread): so
    #: it did not read the whole body, even if the client could send it all
    #: into the sockets' buffers.
    reset: bool = False


def form_parts(
    boundary: str, *, title: str, filename: str, content_type: str, data: bytes
) -> tuple[bytes, bytes, bytes]:
    """A multipart form with a ``title`` field and a ``file`` part: the bytes
    before the file's data, the data, and the bytes after it."""
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head, data, f"\r\n--{boundary}--\r\n".encode()


def chunked(pieces: Iterable[bytes]) -> Iterable[bytes]:
    """``pieces`` in HTTP chunked framing, with the final empty chunk."""
    for piece in pieces:
        if piece:
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def _parse(raw: bytes) -> RawResponse | None:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return RawResponse(int(lines[0].split(" ")[1]), headers, body[:length])


async def raw_request(
    port: int,
    head: bytes,
    body: Iterable[bytes],
    *,
    abort_after: int | None = None,
    reset: bool = False,
    pace: float = 0.0,
    answer_within: float = 60.0,
) -> RawExchange:
    """Send ``head`` and then the ``body`` pieces to 127.0.0.1:``port``.

    :param abort_after: close the connection as soon as this many body bytes
        were sent, without reading an answer.
    :param reset: close with RST (``SO_LINGER`` 0) instead of FIN.
    :param pace: seconds to wait after each piece (a slow client).
    :returns: the response once complete (sending stops as soon as one
        arrives), or none if the server closed the connection without one.
        A server that closes a connection with unread bytes in it resets
        it, and a reset can discard an answer before it is read.
    :raises TimeoutError: if the connection neither answers nor ends within
        ``answer_within`` seconds.
    """
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        received = bytearray()
        answered = anyio.Event()
        reset_seen = False

        async def read() -> None:
            nonlocal reset_seen
            try:
                while _parse(bytes(received)) is None:
                    received.extend(await stream.receive())
            except anyio.EndOfStream:
                pass  # closed cleanly
            except _GONE:
                reset_seen = True
            finally:
                answered.set()

        body_sent = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            sent = 0
            try:
                await stream.send(head)
                for piece in body:
                    if answered.is_set():
                        break
                    if abort_after is not None and sent >= abort_after:
                        if reset:
                            sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                        tg.cancel_scope.cancel()
                        return RawExchange(None, body_sent=False)
                    await stream.send(piece)
                    sent += len(piece)
                    await anyio.sleep(pace)
                else:
                    body_sent = True
            except _GONE:
                pass  # the server closed after answering: the answer is read below
            with anyio.fail_after(answer_within):
                await answered.wait()
        return RawExchange(_parse(bytes(received)), body_sent, reset=reset_seen)
