"""Content-type detection per payload kind: the signature table with libmagic
as the fallback, against libmagic alone in a worker thread (the detector
before the table).

    python -m benchmarks.detect [--calls 2000] [--runs 5]

Each payload is a 64 KiB head (what the upload pipeline hands the detector).
For each kind it prints the median over ``--runs`` of CPU and wall time per
detection, both ways, in one process and interleaved, and checks that both
ways give the same answer. On a shared machine compare the ratios, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import statistics
import struct
import time
import zipfile
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread

from granite_storage._detect import _DETECT_SIZE, aclassify, libmagic_type
from granite_storage.validation import HEAD_SIZE

__all__ = ["main", "payloads"]


def _fill(head: bytes) -> bytes:
    return (head + os.urandom(HEAD_SIZE))[:HEAD_SIZE]


def _image(fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3)).save(out, fmt)
    return _fill(out.getvalue())


def _docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>" * 40)
        archive.writestr("word/document.xml", os.urandom(HEAD_SIZE))
    return out.getvalue()[:HEAD_SIZE]


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("photos/IMG_0001.JPG", os.urandom(HEAD_SIZE))
    return out.getvalue()[:HEAD_SIZE]


def _text(line: bytes) -> bytes:
    return (line * (HEAD_SIZE // len(line) + 1))[:HEAD_SIZE]


def payloads() -> dict[str, bytes]:
    """A 64 KiB head of each kind."""
    ftyp = struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2"
    return {
        "PNG": _image("PNG"),
        "JPEG": _image("JPEG"),
        "PDF": _fill(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        "ZIP": _zip(),
        "DOCX": _docx(),
        "MP4": _fill(ftyp),
        "gzip": gzip.compress(os.urandom(HEAD_SIZE))[:HEAD_SIZE],
        "text": _text(b"The quick brown fox jumps over the lazy dog.\n"),
        "CSV": _text(b"id,name,amount\n1,alice,10.5\n"),
        "JSON": _text(json.dumps({"id": 1, "tags": ["a", "b"]}).encode() + b"\n"),
        "HTML": _text(b"<html><body><p>hello</p></body></html>\n"),
        "random binary": os.urandom(HEAD_SIZE),
    }


async def _libmagic_in_a_thread(head: bytes) -> str:
    """The detector before the signature table: always libmagic, always a thread hop."""
    return await anyio.to_thread.run_sync(libmagic_type, head[:_DETECT_SIZE])


async def _measure(
    detect: Callable[[bytes], Awaitable[str]], head: bytes, calls: int
) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await detect(head)
    return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


async def amain(calls: int, runs: int) -> None:
    ways = {"before": _libmagic_in_a_thread, "after": aclassify}
    print(f"load average {os.getloadavg()[0]:.2f}; {calls} calls x {runs} runs, medians")
    print(
        f"{'payload':14} {'type':40} {'before CPU/wall us':>20} {'after CPU/wall us':>19} "
        f"{'CPU ratio':>9}"
    )
    for kind, head in payloads().items():
        answers = {name: await way(head) for name, way in ways.items()}
        if answers["before"] != answers["after"]:
            raise RuntimeError(f"{kind}: the two ways disagree: {answers}")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(runs):
            for name, way in ways.items():  # interleaved
                samples[name].append(await _measure(way, head, calls))
        cpu = {
            name: statistics.median(s[0] for s in runs_) * 1e6 for name, runs_ in samples.items()
        }
        wall = {
            name: statistics.median(s[1] for s in runs_) * 1e6 for name, runs_ in samples.items()
        }
        print(
            f"{kind:14} {answers['after']:40} {cpu['before']:9.1f} / {wall['before']:7.1f} "
            f"{cpu['after']:8.1f} / {wall['after']:7.1f} {cpu['after'] / cpu['before']:9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    anyio.run(amain, args.calls, args.runs)


if __name__ == "__main__":
    main()
