"""Content-type detection per format (#16): the signature table with libmagic
as its fallback, against libmagic alone in a worker thread (the detector
before the table), in the same child, interleaved format by format.

Each payload is a 64 KiB head, what the upload pipeline hands the detector.
The child first checks that both ways give the same answer and that the
table decides exactly the formats it is meant to; then, inside the measured
region, it runs ``calls`` detections of each format each way and reports the
CPU (of the whole process: libmagic runs in a worker thread) and the wall
time per detection.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import time
import zipfile
from collections.abc import Awaitable, Callable

from benchmarks._context import Context, extra
from benchmarks._data import random_block
from benchmarks._harness import Timer
from benchmarks._report import Row, Target
from granite_storage.validation import HEAD_SIZE as HEAD

__all__ = ["payloads", "run"]

#: The formats the signature table decides; every other goes to libmagic.
TABLE_DECIDES = frozenset({"PNG", "JPEG", "PDF", "ZIP", "MP4", "gzip"})
GRANITE_LABEL = "granite_storage"
LIBMAGIC_LABEL = "libmagic alone, in a worker thread"


def _fill(head: bytes, seed: int) -> bytes:
    return (head + random_block(HEAD, seed))[:HEAD]


def _image(fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (160, 160), random_block(160 * 160 * 3, seed=1)).save(out, fmt)
    return _fill(out.getvalue(), seed=2)


def _docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>" * 40)
        archive.writestr("word/document.xml", random_block(HEAD, seed=3))
    return out.getvalue()[:HEAD]


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("photos/IMG_0001.JPG", random_block(HEAD, seed=4))
    return out.getvalue()[:HEAD]


def _text(line: bytes) -> bytes:
    return (line * (HEAD // len(line) + 1))[:HEAD]


def payloads() -> dict[str, bytes]:
    """A 64 KiB head of each format, the same in every run."""
    ftyp = struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2"
    return {
        "PNG": _image("PNG"),
        "JPEG": _image("JPEG"),
        "PDF": _fill(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", seed=5),
        "ZIP": _zip(),
        "DOCX": _docx(),
        "MP4": _fill(ftyp, seed=6),
        "gzip": gzip.compress(random_block(HEAD, seed=7), mtime=0)[:HEAD],
        "text": _text(b"The quick brown fox jumps over the lazy dog.\n"),
        "CSV": _text(b"id,name,amount\n1,alice,10.5\n"),
        "JSON": _text(json.dumps({"id": 1, "tags": ["a", "b"]}).encode() + b"\n"),
        "HTML": _text(b"<html><body><p>hello</p></body></html>\n"),
        "random binary": random_block(HEAD, seed=8),
    }


async def _measure(
    detect: Callable[[bytes], Awaitable[str]], head: bytes, calls: int
) -> tuple[float, float]:
    """CPU and wall seconds per call of ``detect(head)``, over ``calls`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await detect(head)
    return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


async def detect_each_format(timer: Timer, *, calls: int) -> dict[str, float]:
    """For each format, ``calls`` detections by libmagic alone, then as many
    by granite_storage; extras ``"{format}/{way}/{cpu|wall}"`` in seconds."""
    import anyio.to_thread

    from granite_storage._detect import _DETECT_SIZE, aclassify, libmagic_type, signature_names
    from granite_storage._signatures import sniff

    async def libmagic_alone(head: bytes) -> str:
        return await anyio.to_thread.run_sync(libmagic_type, head[:_DETECT_SIZE])

    ways = {"libmagic": libmagic_alone, "granite": aclassify}
    heads = payloads()
    names = await anyio.to_thread.run_sync(signature_names)
    for kind, head in heads.items():  # the checks warm both ways up, too
        answers = {name: await way(head) for name, way in ways.items()}
        if answers["libmagic"] != answers["granite"]:
            raise RuntimeError(f"{kind}: the two ways disagree: {answers}")
        decided = sniff(head, names) is not None
        if decided != (kind in TABLE_DECIDES):
            raise RuntimeError(
                f"{kind}: the signature table {'decides' if decided else 'does not decide'} "
                f"it ({answers['granite']}); update TABLE_DECIDES if that is intended"
            )
    figures: dict[str, float] = {}
    with timer:
        for kind, head in heads.items():
            for name, way in ways.items():
                cpu, wall = await _measure(way, head, calls)
                figures[f"{kind}/{name}/cpu"] = cpu
                figures[f"{kind}/{name}/wall"] = wall
    return figures


def run(ctx: Context) -> list[Row]:
    calls = ctx.sizes.detect_calls
    outcome = ctx.run("benchmarks.detect:detect_each_format", {"calls": calls})
    rows: list[Row] = []
    cpu_note = "user+system CPU of the process (libmagic's worker thread included)"
    for kind in payloads():
        by_table = kind in TABLE_DECIDES
        scenario = f"detect the type of a 64 KiB {kind} head ({calls:,} calls)"
        target = (
            Target(">= 10x libmagic (the table decides)", 10.0, against=LIBMAGIC_LABEL)
            if by_table
            else Target(">= 0.85x libmagic (left to libmagic)", 0.85, against=LIBMAGIC_LABEL)
        )
        for metric, what in (("CPU per detection", "cpu"), ("wall per detection", "wall")):
            per_run = extra(f"{kind}/granite/{what}", 1e6)
            alone = extra(f"{kind}/libmagic/{what}", 1e6)
            rows.append(
                Row(scenario, metric, "us", False,
                    outcome.figure(GRANITE_LABEL, per_run),
                    [outcome.figure(LIBMAGIC_LABEL, alone, short="libmagic")],
                    targets=[target] if what == "cpu" else [],
                    note="" if rows else cpu_note)
            )  # fmt: skip
    return rows
