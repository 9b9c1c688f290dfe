"""The fast path of content-type detection: the magic numbers of the formats
uploads are made of, checked on the first bytes in a few microseconds.

The table says *where* a format's signature is, never what it is called:
each entry carries a minimal header of its format (``sample``), and
:mod:`granite_storage._detect` asks libmagic once for the type of every
sample. So the fast path answers with libmagic's own names, whatever its
version, and an entry whose sample the installed libmagic does not know is
left out. An entry matches only where libmagic's answer cannot depend on
the bytes after the signature (a property test compares the two on real
headers followed by random bytes); anything else goes to libmagic.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signature:
    """One format: ``matches(head)`` says whether ``head`` starts with it;
    ``sample`` (a minimal header, padded with zeros to :data:`MIN_HEAD` bytes
    when libmagic names it) is one that does."""

    name: str
    sample: bytes
    matches: Callable[[bytes], bool]


def _prefix(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(prefixes)


def _png(head: bytes) -> bool:
    # IHDR first, as libmagic's rule asks; an animated PNG (acTL after IHDR)
    # is left to libmagic, whose newer versions call it image/apng.
    return head.startswith(_PNG) and head[37:41] != b"acTL"


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(b"RIFF") and head[8:12] == form


def _ftyp(brand: bytes) -> Callable[[bytes], bool]:
    # ISO base media (MP4, QuickTime, HEIF, AVIF, 3GP): the major brand names the type.
    return lambda head: head[4:8] == b"ftyp" and head[8:12] == brand


def _ebml(doctype: bytes) -> Callable[[bytes], bool]:
    # Matroska and WebM: libmagic takes the first DocType element (0x4282)
    # after the EBML magic; only a DocType within the usual header is decided here.
    def matches(head: bytes) -> bool:
        if not head.startswith(b"\x1a\x45\xdf\xa3"):
            return False
        at = head.find(b"\x42\x82", 4, 64)
        return at >= 0 and head[at + 3 : at + 3 + len(doctype)] == doctype

    return matches


# A ZIP whose first entry is one of these may be a format of its own (OOXML,
# OpenDocument, EPUB, JAR, APK, KMZ, 3MF, XPI, ...): libmagic decides.
_ZIP_SPECIAL = (
    b"mimetype", b"[Content_Types].xml", b"_rels/", b"META-INF", b"AndroidManifest",
    b"classes", b"doc.kml", b"3D/", b"install.rdf", b"chrome.manifest", b"Payload/",
    b"docProps/", b"word/", b"xl/", b"ppt/", b"content.xml", b"styles.xml", b"manifest",
)  # fmt: skip
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9._/-]+")
ZIP_ENTRY = struct.Struct("<4sHHHHHIIIHH")  # a ZIP local file header


def _plain_zip(head: bytes) -> bool:
    """A ZIP archive whose first entry is an ordinary file or folder name."""
    if len(head) < ZIP_ENTRY.size or not head.startswith(b"PK\x03\x04"):
        return False
    name_len = ZIP_ENTRY.unpack_from(head)[9]
    name = head[ZIP_ENTRY.size : ZIP_ENTRY.size + name_len]
    return (
        0 < len(name) == name_len
        and name.isascii()
        and name.replace(b"/", b"")
        .replace(b".", b"")
        .replace(b"_", b"")
        .replace(b"-", b"")
        .isalnum()
        and not any(special.lower() in name.lower() for special in _ZIP_SPECIAL)
    )


_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
_MP4_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"dash", b"M4A ", b"M4V ", b"qt  ",
               b"heic", b"mif1", b"avif", b"3gp4", b"3gp5")  # fmt: skip


def _ftyp_sample(brand: bytes) -> bytes:
    return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x02\x00isomiso2"


def _zip_sample() -> bytes:
    header = ZIP_ENTRY.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0x3610A5F2, 5, 5, 9, 0)
    return header + b"notes.txt" + b"hello"


#: The formats the fast path knows, most common first.
SIGNATURES: tuple[Signature, ...] = (
    Signature("JPEG", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
              _prefix(b"\xff\xd8\xff")),
    Signature("PNG", _PNG + b"\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde",
              _png),
    Signature("PDF", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", _prefix(b"%PDF-")),
    Signature("GIF", b"GIF89a\x01\x00\x01\x00\x80\x00\x00", _prefix(b"GIF87a", b"GIF89a")),
    Signature("WebP", b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00", _riff(b"WEBP")),
    Signature("ZIP", _zip_sample(), _plain_zip),
    Signature("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", _prefix(b"\x1f\x8b\x08")),
    *(Signature(f"ISO-BMFF {brand.decode().strip()}", _ftyp_sample(brand), _ftyp(brand))
      for brand in _MP4_BRANDS),
    Signature("WebM", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04"
              b"\x42\xf3\x81\x08\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02", _ebml(b"webm")),
    Signature("Matroska", b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81"
              b"\x04\x42\xf3\x81\x08\x42\x82\x88matroska\x42\x87\x81\x04\x42\x85\x81\x02",
              _ebml(b"matroska")),
    Signature("TIFF", b"II*\x00\x08\x00\x00\x00", _prefix(b"II*\x00", b"MM\x00*")),
    Signature("WAV", b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", _riff(b"WAVE")),
    Signature("FLAC", b"fLaC\x00\x00\x00\x22", _prefix(b"fLaC")),
    Signature("7-Zip", b"7z\xbc\xaf\x27\x1c\x00\x04", _prefix(b"7z\xbc\xaf\x27\x1c")),
    Signature("bzip2", b"BZh91AY&SY",
              _prefix(*(b"BZh%d1AY&SY" % level for level in range(1, 10)))),
    Signature("xz", b"\xfd7zXZ\x00\x00\x04", _prefix(b"\xfd7zXZ\x00")),
    Signature("zstd", b"\x28\xb5\x2f\xfd\x04\x58", _prefix(b"\x28\xb5\x2f\xfd")),
)  # fmt: skip


#: The table decides only for heads of at least this many bytes: libmagic
#: reads past the signature (a ZIP entry's fields, say), and on a shorter
#: head it may not recognise the format at all.
MIN_HEAD = 128


def sniff(head: bytes, names: dict[str, str]) -> str | None:
    """The type of the format ``head`` starts with, named as in ``names``
    (signature name -> libmagic's type); ``None`` when the table cannot tell."""
    if len(head) < MIN_HEAD:
        return None
    for signature in SIGNATURES:
        if signature.matches(head):
            return names.get(signature.name)
    return None
