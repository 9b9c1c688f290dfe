"""A large upload to a FastAPI app on uvicorn: throughput and the server's memory.

Each run starts its own uvicorn process (so its memory is fresh), sends one
body from memory with httpx, and measures how much the server's peak RSS
grew during the request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks._context import Context, Job, extra, throughput_mib_s
from benchmarks._data import random_block
from benchmarks._harness import (
    MIB,
    Timer,
    cpu_seconds,
    peak_rss,
    recycle_free_pages,
    reset_peak_rss,
    rss,
)
from benchmarks._report import Row, Target
from benchmarks._services import uvicorn_server

__all__ = ["run"]

APP = "benchmarks._fastapi_app:app"
BOUNDARY = "granite-bench-boundary-7c1f"


def _chunks(size: int) -> Iterator[bytes]:
    block = random_block(MIB)
    for start in range(0, size, MIB):
        yield ((start // MIB).to_bytes(8, "little") + block[8:])[: size - start]


def _body(size: int, multipart: bool) -> tuple[Iterator[bytes], dict[str, str], int]:
    if not multipart:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        return _chunks(size), headers, size
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="title"\r\n\r\nbench\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def parts() -> Iterator[bytes]:
        yield head
        yield from _chunks(size)
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return parts(), headers, len(head) + size + len(tail)


def upload(
    timer: Timer, *, endpoint: str, size: int, root: str, multipart: bool
) -> dict[str, float]:
    import httpx

    expected = hashlib.sha256()
    for chunk in _chunks(size):
        expected.update(chunk)
    with (
        uvicorn_server(APP, Path(root), {"GRANITE_BENCH_ROOT": root}) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        client.post(endpoint, content=b"warm-up").raise_for_status()
        body, headers, total = _body(size, multipart)
        exact = reset_peak_rss(server.pid)
        before = rss(server.pid) if exact else max(rss(server.pid), peak_rss(server.pid))
        server_cpu = cpu_seconds(server.pid)
        # The stored file, and a form's spooled copy of the file.
        recycle_free_pages(root, 2 * total if multipart else total)
        with timer:
            response = client.post(endpoint, content=body, headers=headers)
        server_cpu = cpu_seconds(server.pid) - server_cpu
        growth = peak_rss(server.pid) - before
    response.raise_for_status()
    result = response.json()
    if endpoint == "/raw" and result["size"] != total:
        raise RuntimeError(f"the server stored {result['size']} bytes")
    if endpoint == "/granite" and result["checksum"] != f"sha256:{expected.hexdigest()}":
        raise RuntimeError(f"the server stored {result}, expected {expected.hexdigest()}")
    return {"server_rss_growth": max(0, growth), "server_cpu_seconds": server_cpu}


def run(ctx: Context) -> list[Row]:
    size = ctx.sizes.fastapi_mib * MIB
    rows = []
    for multipart in (False, True):
        kind = "multipart form" if multipart else "raw body"
        scenario = f"FastAPI {ctx.sizes.fastapi_mib} MiB upload on uvicorn, {kind}"
        root = ctx.scratch("fastapi-" + ("form" if multipart else "raw"))

        def job(endpoint: str, root: Path = root, multipart: bool = multipart) -> Job:
            kwargs = {"endpoint": endpoint, "size": size, "root": str(root), "multipart": multipart}
            return Job("benchmarks.fastapi_upload:upload", kwargs)

        out = ctx.compare({"granite": job("/granite"), "raw": job("/raw")})
        label = "request.stream() to a file"
        speed = throughput_mib_s(size)
        memory = extra("server_rss_growth", 1 / MIB)
        granite, raw = out["granite"], out["raw"]
        rows += [
            Row(scenario, "throughput", "MiB/s", True,
                granite.figure("granite_storage stream_upload", speed),
                [raw.figure(label, speed, short="stream()")], None,
                [Target(">= 0.9x stream() (issue 15)", 0.9, against=label)],
                note="granite_storage with fsync=False, as the baseline does not fsync; "
                "the baseline writes the multipart body unparsed" if multipart else
                "granite_storage with fsync=False, as the baseline does not fsync"),
            Row(scenario, "server peak RSS growth", "MiB", False,
                granite.figure("granite_storage stream_upload", memory, worst=True),
                [raw.figure(label, memory, worst=True, short="stream()")], None,
                [Target("<= 64 MiB", 64.0)], show_ratios=False),
        ]  # fmt: skip
    return rows
