"""The signature table of content-type detection answers exactly what libmagic
answers, for every head it decides (Hypothesis: real headers of every format
in the table, followed by random bytes, cut at random lengths; random bytes;
polyglots); and a head it decides never reaches libmagic."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import wave
import zipfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from granite_storage import _detect
from granite_storage._detect import _DETECT_SIZE, adetect_content_type, libmagic_type
from granite_storage._signatures import MIN_HEAD, SIGNATURES, sniff

NAMES = _detect.signature_names()
checks = settings(max_examples=300, deadline=None)


def image(data: st.DataObject, fmt: str) -> bytes:
    modes = {"JPEG": ["RGB", "L", "CMYK"], "WEBP": ["RGB", "RGBA"]}.get(
        fmt, ["RGB", "RGBA", "L", "P", "1"]
    )
    mode = data.draw(st.sampled_from(modes))
    size = (data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)))
    out = io.BytesIO()
    Image.new(mode, size, color=data.draw(st.integers(0, 255))).save(out, fmt)
    return out.getvalue()


ZIP_NAMES = st.one_of(
    st.sampled_from(["a.txt", "dir/", "photos/IMG_0001.JPG", "data.csv", "report-2024.pdf",
                     "mimetype", "[Content_Types].xml", "_rels/.rels", "META-INF/MANIFEST.MF",
                     "word/document.xml", "xl/workbook.xml", "AndroidManifest.xml",
                     "classes.dex", "doc.kml", "content.xml"]),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/", min_size=1,
            max_size=30),
)  # fmt: skip


def archive(data: st.DataObject) -> bytes:
    out = io.BytesIO()
    method = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(out, "w", method) as zf:
        for name in data.draw(st.lists(ZIP_NAMES, min_size=1, max_size=4, unique=True)):
            zf.writestr(name, data.draw(st.binary(max_size=300)))
    return out.getvalue()


def ftyp(data: st.DataObject) -> bytes:
    brand = data.draw(st.sampled_from([b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"dash",
                                       b"M4A ", b"M4V ", b"qt  ", b"heic", b"mif1", b"avif",
                                       b"3gp4", b"3gp5", b"crx ", b"f4v "]))  # fmt: skip
    compatible = b"".join(data.draw(st.lists(st.binary(min_size=4, max_size=4), max_size=4)))
    box = b"ftyp" + brand + data.draw(st.binary(min_size=4, max_size=4)) + compatible
    return struct.pack(">I", 4 + len(box)) + box


def ebml(data: st.DataObject) -> bytes:
    doctype = data.draw(st.sampled_from([b"webm", b"matroska", b"other"]))
    body = (
        b"\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82"
        + bytes([0x80 | len(doctype)])
        + doctype
        + b"\x42\x87\x81\x04\x42\x85\x81\x02"
    )
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(body)]) + body  # fmt: skip


def wav(data: st.DataObject) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(data.draw(st.integers(1, 2)))
        sound.setsampwidth(data.draw(st.integers(1, 3)))
        sound.setframerate(data.draw(st.sampled_from([8000, 44100, 48000])))
        sound.writeframes(data.draw(st.binary(max_size=200)))
    return out.getvalue()


def prefixed(prefix: bytes) -> Any:
    return lambda data: prefix + data.draw(st.binary(max_size=64))


MAKERS: dict[str, Any] = {
    "jpeg": lambda data: image(data, "JPEG"),
    "png": lambda data: image(data, "PNG"),
    "gif": lambda data: image(data, "GIF"),
    "webp": lambda data: image(data, "WEBP"),
    "tiff": lambda data: image(data, "TIFF"),
    "pdf": lambda data: b"%PDF-1." + data.draw(st.sampled_from(b"01234567")).to_bytes() + b"\n",
    "zip": archive,
    "gzip": lambda data: gzip.compress(data.draw(st.binary(max_size=200))),
    "bzip2": lambda data: bz2.compress(data.draw(st.binary(max_size=200))),
    "xz": lambda data: lzma.compress(data.draw(st.binary(max_size=200))),
    "iso-bmff": ftyp,
    "ebml": ebml,
    "wav": wav,
    "flac": prefixed(b"fLaC\x00\x00\x00\x22"),
    "7z": prefixed(b"7z\xbc\xaf\x27\x1c\x00\x04"),
    "zstd": prefixed(b"\x28\xb5\x2f\xfd"),
    "apng": lambda data: image(data, "PNG")[:33] + b"\x00\x00\x00\x08acTL",
}


def same_as_libmagic(head: bytes) -> None:
    fast = sniff(head, NAMES)
    if fast is not None:
        assert fast == libmagic_type(head[:_DETECT_SIZE]), head[:64]


@pytest.mark.parametrize("kind", sorted(MAKERS))
@checks
@given(data=st.data())
def test_the_table_answers_what_libmagic_answers(kind: str, data: st.DataObject) -> None:
    head = MAKERS[kind](data) + data.draw(st.binary(max_size=_DETECT_SIZE + 100))
    same_as_libmagic(head)
    same_as_libmagic(head[: data.draw(st.integers(0, len(head)))])  # truncated
    same_as_libmagic(head[: data.draw(st.integers(MIN_HEAD, MIN_HEAD + 300))])


@checks
@given(head=st.binary(min_size=MIN_HEAD, max_size=4096))
def test_random_bytes(head: bytes) -> None:
    same_as_libmagic(head)


POLYGLOT_TAILS = [b"<!DOCTYPE html><html><script>x()</script>", b"#!/bin/sh\nrm -rf /\n",
                  b"%PDF-1.7\n", b"PK\x03\x04\x14\x00", b"\x7fELF\x02\x01\x01"]  # fmt: skip


@checks
@given(data=st.data())
def test_polyglots(data: st.DataObject) -> None:
    """A signature followed by another format's (HTML, a script, a ZIP, a PDF)."""
    first = data.draw(st.sampled_from(sorted(MAKERS)))
    second = data.draw(st.sampled_from(POLYGLOT_TAILS))
    filler = data.draw(st.binary(max_size=600))
    same_as_libmagic(MAKERS[first](data) + second + filler)
    same_as_libmagic(MAKERS[first](data)[:12] + second + filler)


def test_the_common_formats_are_in_the_table() -> None:
    """The installed libmagic knows every sample (a format it did not know
    would be left out of the table, and go to libmagic)."""
    assert set(NAMES) == {signature.name for signature in SIGNATURES}
    assert NAMES["PNG"] == "image/png" and NAMES["JPEG"] == "image/jpeg"
    assert NAMES["ZIP"] == "application/zip" and NAMES["PDF"] == "application/pdf"


async def test_a_head_the_table_decides_never_reaches_libmagic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    png = Image.new("RGB", (3, 3))
    out = io.BytesIO()
    png.save(out, "PNG")
    assert await adetect_content_type(out.getvalue() + b"\0" * 200, "a.png") == "image/png"

    def refuse(head: bytes) -> str:
        raise AssertionError("libmagic was called")

    monkeypatch.setattr(_detect, "libmagic_type", refuse)
    assert await adetect_content_type(out.getvalue() + b"\0" * 200, "a.png") == "image/png"
    with pytest.raises(AssertionError, match="libmagic was called"):
        await adetect_content_type(b"plain text, which the table does not decide\n" * 4, None)
