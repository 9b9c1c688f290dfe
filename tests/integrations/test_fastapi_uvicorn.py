"""The example app under a real uvicorn server, in a subprocess.

What only a real server shows: a 200 MiB upload goes through the streaming
path with the server's memory growing by far less than the upload, and an
oversized upload is answered 413 while the client is still sending.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
BOUNDARY = "granite-test-boundary"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    storage_root: Path
    log: Path

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the server process, in KiB."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux 4.0+); False if not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


def _start_server(
    tmp_path: Path, max_size: int, app: str = "examples.fastapi_app:app", ready: str = "/documents"
) -> Server:
    """uvicorn serving ``app`` on a socket bound here (no port race), waiting
    until ``GET ready`` answers 200."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    log = tmp_path / "uvicorn.log"
    env = os.environ | {
        "GRANITE_STORAGE_ROOT": str(tmp_path / "storage"),
        "GRANITE_STORAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'documents.db'}",
        "GRANITE_STORAGE_MAX_SIZE": str(max_size),
        "GRANITE_STORAGE_FSYNC": "0",
    }
    command = [
        sys.executable, "-m", "uvicorn", *app.split(),
        "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with sock, log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            pass_fds=[sock.fileno()],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", port, tmp_path / "storage", log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {log.read_text()}")
        try:
            if httpx.get(f"{server.url}{ready}", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            _stop(server)
            raise RuntimeError(f"uvicorn did not answer within 60 s: {log.read_text()}")
        time.sleep(0.1)


def _stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(max_size, app=..., ready=...)``: a server of the example
    app (or of ``app``); stopped after the test."""
    servers: list[Server] = []

    def start(max_size: int, **kwargs: str) -> Server:
        server = _start_server(tmp_path, max_size, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        _stop(server)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _part_head(filename: str) -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="title"\r\n\r\nbig\r\n'
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


_PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_200_mib_upload_streams_in_bounded_server_memory(
    start_server: Callable[..., Server],
) -> None:
    server = await anyio.to_thread.run_sync(start_server, 256 * MiB)
    block = bytes(range(256)) * 4096  # 1 MiB, the same object sent 200 times
    blocks = 200
    digest = hashlib.sha256()
    for _ in range(blocks):
        await anyio.to_thread.run_sync(digest.update, block)

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        # Warm up: the first upload imports and allocates what every upload needs.
        warm = await client.post("/documents", files={"file": ("w.bin", b"w" * MiB, "x/y")})
        assert warm.status_code == 201, warm.text
        await anyio.to_thread.run_sync(server.reset_peak)
        before = await anyio.to_thread.run_sync(server.memory_kib)

        head = _part_head("big.bin")

        async def body() -> AsyncIterator[bytes]:
            yield head
            for _ in range(blocks):
                yield block
            yield _PART_TAIL

        length = len(head) + blocks * len(block) + len(_PART_TAIL)
        response = await client.post(
            "/documents",
            content=body(),
            headers={
                "content-type": f"multipart/form-data; boundary={BOUNDARY}",
                "content-length": str(length),
            },
        )
        after = await anyio.to_thread.run_sync(server.memory_kib)
        assert response.status_code == 201, response.text
        doc = response.json()
        assert doc["size"] == blocks * len(block)
        assert doc["checksum"] == f"sha256:{digest.hexdigest()}"
        assert doc["title"] == "big"
        tail = await client.get(f"/documents/{doc['id']}/content", headers={"Range": "bytes=-5"})
        assert (tail.status_code, tail.content) == (206, block[-5:])

    # Peak RSS during the upload against RSS before it. Without the reset
    # (not permitted) the peak includes start-up: that only makes it stricter.
    growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 64, f"server memory grew by {growth_mib:.1f} MiB ({before} -> {after})"


@dataclass
class SlowUpload:
    """What a slow client saw while sending a 64 MiB body."""

    response: bytes
    sent_when_answered: int | None
    closed_by_server: bool
    total: int


async def _send_slowly(
    server: Server, path: str, content_type: str, first: bytes, piece: bytes
) -> SlowUpload:
    """POST a chunked body: ``first``, then ``piece`` (16 KiB) every 10 ms up
    to 64 MiB, until the server answers. Sending it all would take over 40 s,
    so the server has seconds of slack to answer before the client gets
    anywhere near the end, however busy the machine."""
    pieces = 64 * MiB // len(piece)
    sent = 0
    sent_when_answered: int | None = None
    response = b""
    closed_by_server = False

    def http_chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(
            f"POST {path} HTTP/1.1\r\n".encode()
            + b"Host: test\r\n"
            + b"Transfer-Encoding: chunked\r\n"
            + f"Content-Type: {content_type}\r\n\r\n".encode()
            + http_chunk(first)
        )

        async def read_response() -> None:
            nonlocal sent_when_answered, response, closed_by_server
            try:
                while True:
                    data = await stream.receive()
                    if sent_when_answered is None:
                        sent_when_answered = sent
                    response += data
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                closed_by_server = True
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_response)
            for _ in range(pieces):
                if sent_when_answered is not None:
                    break
                try:
                    await stream.send(http_chunk(piece))
                except (anyio.BrokenResourceError, ConnectionError):
                    break
                sent += len(piece)
                await anyio.sleep(0.01)
            with anyio.fail_after(30):
                await anyio.sleep_forever()  # until the reader saw the connection close
    return SlowUpload(response, sent_when_answered, closed_by_server, pieces * len(piece))


async def test_oversized_upload_is_answered_while_the_client_is_still_sending(
    start_server: Callable[..., Server],
) -> None:
    """A slow client streams a 64 MiB file (chunked, so no Content-Length
    tells the server up front) to a 1 MiB limit: the 413 arrives after a
    small part was sent, and the server closes the connection."""
    server = await anyio.to_thread.run_sync(start_server, MiB)
    upload = await _send_slowly(
        server,
        "/documents",
        f"multipart/form-data; boundary={BOUNDARY}",
        _part_head("big.bin"),
        b"s" * (16 * 1024),
    )
    assert upload.response.startswith(b"HTTP/1.1 413 "), upload.response[:200]
    assert b"connection: close" in upload.response.lower()
    assert upload.closed_by_server
    assert upload.sent_when_answered is not None
    assert upload.sent_when_answered < upload.total // 8, upload.sent_when_answered
    assert await anyio.to_thread.run_sync(_files, server.storage_root) == []


async def test_html_posted_as_png_is_answered_415_while_the_client_is_still_sending(
    start_server: Callable[..., Server],
) -> None:
    """An "image" whose head is HTML, to a policy that allows images only:
    the 415 arrives once the head was read, with most of 64 MiB unsent."""
    server = await anyio.to_thread.run_sync(
        lambda: start_server(
            256 * MiB,
            app="--factory tests.integrations.test_fastapi_validation:uvicorn_app",
            ready="/ready",
        )
    )
    upload = await _send_slowly(
        server,
        "/upload/images?filename=avatar.png",
        "image/png",
        b"<!DOCTYPE html><html><body><script>alert(1)</script>",
        b"<p>more html</p>" * 1024,
    )
    assert upload.response.startswith(b"HTTP/1.1 415 "), upload.response[:200]
    assert b"text/html" in upload.response and b"image/png" in upload.response
    assert b"connection: close" in upload.response.lower()
    assert upload.closed_by_server
    assert upload.sent_when_answered is not None
    assert upload.sent_when_answered < upload.total // 8, upload.sent_when_answered
    assert await anyio.to_thread.run_sync(_files, server.storage_root) == []
