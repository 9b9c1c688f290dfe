"""Build, sanitise and validate object locations. No I/O but the random names.

A location is a relative, ``/``-separated key such as
``docs/document/42/file/3f2a9c0e4b1d4e6f8a7b5c3d2e1f0a9b.pdf``:
``{key_prefix}/{model_name}/{entity_id}/{field_name}/{unique}{suffix}``.

Two rules keep every location inside its backend root and policy prefix:

* :func:`sanitize_segment` turns any user input into one safe segment
  (ASCII letters, digits, ``-``, ``_`` and ``.``, never starting with a dot),
  or raises :class:`~granite_storage.errors.InvalidLocationError`;
* :func:`validate_location` checks a location that comes from elsewhere (a
  ref loaded from the database, a listing) before a backend touches it.
"""

from __future__ import annotations

import os
import re
import unicodedata

from granite_storage.errors import InvalidLocationError

__all__ = [
    "MAX_LOCATION_LENGTH",
    "MAX_SEGMENT_LENGTH",
    "build_location",
    "is_under_prefix",
    "safe_suffix",
    "sanitize_segment",
    "unique_name",
    "validate_location",
    "validate_prefix",
]

MAX_SEGMENT_LENGTH = 100
MAX_LOCATION_LENGTH = 1024
_MAX_SUFFIX_LENGTH = 10

_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIX = re.compile(rf"\.[a-z0-9]{{1,{_MAX_SUFFIX_LENGTH}}}")
# Characters that must never appear in a location, whatever its origin:
# control characters (NUL included), backslashes, and unpaired surrogates
# (no file system, S3 key or JSON column can encode them).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


def sanitize_segment(value: object, *, what: str = "segment") -> str:
    """Turn ``value`` into one safe location segment.

    Accents are folded to ASCII (``"Résumé"`` -> ``"Resume"``), every run of
    other characters becomes ``-``, leading dots and dashes are dropped (no
    ``.``, ``..`` or hidden names) and the result is cut to
    :data:`MAX_SEGMENT_LENGTH`.

    :raises InvalidLocationError: if nothing safe is left, e.g. for ``".."``.
    """
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode()
    text = _UNSAFE_RUN.sub("-", text).lstrip(".-").rstrip("-")
    text = text[:MAX_SEGMENT_LENGTH].rstrip(".-")
    if not text:
        raise InvalidLocationError(
            f"{what} {value!r} has no safe characters left for a storage location; "
            "use letters, digits, '-', '_' or '.'"
        )
    return text


def safe_suffix(filename: str | None) -> str:
    """The lower-cased extension of ``filename`` when it is short and plain.

    ``"Report.PDF"`` gives ``".pdf"``; ``"../../x.sh\\x00.png"``, ``"archive"``
    or an extension longer than ten characters give ``""``. Only the last
    path component counts, whichever separator the client used.
    """
    if not filename:
        return ""
    name = re.split(r"[/\\]", filename)[-1]
    dot = name.rfind(".")
    if dot <= 0:
        return ""
    suffix = name[dot:].lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def validate_prefix(prefix: str | None) -> str | None:
    """Normalise a key prefix: ``None`` or ``""`` mean no prefix, surrounding
    slashes are dropped, and what is left must be a valid location."""
    if prefix is None:
        return None
    stripped = prefix.strip("/")
    if not stripped:
        return None
    return validate_location(stripped, what="key prefix")


def validate_location(location: str, *, what: str = "location") -> str:
    """Return ``location`` unchanged if it is a safe relative key.

    :raises InvalidLocationError: if it is empty, too long, absolute, has an
        empty, ``.`` or ``..`` segment, or holds control characters,
        backslashes or unpaired surrogates.
    """
    if not isinstance(location, str) or not location:
        raise InvalidLocationError(f"{what} must be a non-empty string, got {location!r}")
    if len(location) > MAX_LOCATION_LENGTH:
        raise InvalidLocationError(f"{what} is longer than {MAX_LOCATION_LENGTH} characters")
    if _FORBIDDEN.search(location):
        raise InvalidLocationError(
            f"{what} {location!r} contains control characters, backslashes or unpaired surrogates"
        )
    for segment in location.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidLocationError(
                f"{what} {location!r} has an empty, '.' or '..' segment or starts with '/'"
            )
    return location


def is_under_prefix(location: str, prefix: str | None) -> bool:
    """Whether ``location`` lies under ``prefix`` at a ``/`` boundary.

    ``is_under_prefix("docs/a", "docs")`` is true,
    ``is_under_prefix("docs2/a", "docs")`` is false; no prefix matches all.
    """
    if not prefix:
        return True
    return location.startswith(prefix.rstrip("/") + "/")


_NAME_BYTES = 16  # 128 random bits, 32 hex digits
_NAMES_PER_FETCH = 256
_names: list[str] = []
# A forked child must not hand out the names its parent will use.
os.register_at_fork(after_in_child=_names.clear)


def unique_name() -> str:
    """32 hex digits of 128 random bits from :func:`os.urandom`.

    The random bytes are fetched for 256 names at a time: ``os.urandom``
    releases the GIL, and on the event loop of a process whose worker threads
    are busy, getting it back cost about 270 µs per call (measured with 32
    concurrent small uploads), more than the rest of building a location.
    No lock either (a list's ``pop`` and ``extend`` are atomic): a thread
    that finds the list empty fetches more, and two that do so at once
    only fetch twice.
    """
    while True:
        try:
            return _names.pop()
        except IndexError:
            raw = os.urandom(_NAME_BYTES * _NAMES_PER_FETCH)
            fetched = [raw[at : at + _NAME_BYTES].hex() for at in range(0, len(raw), _NAME_BYTES)]
            _names.extend(fetched)


def build_location(
    *,
    key_prefix: str | None,
    model_name: str,
    entity_id: object,
    field_name: str,
    original_filename: str | None = None,
) -> str:
    """Build a new, unique location for one write.

    Every call returns a different location (a random 128-bit name), so a
    replace never overwrites the object it replaces.

    :raises InvalidLocationError: if a segment has no safe characters.
    """
    segments = [
        sanitize_segment(model_name, what="model_name"),
        sanitize_segment(entity_id, what="entity_id"),
        sanitize_segment(field_name, what="field_name"),
        unique_name() + safe_suffix(original_filename),
    ]
    prefix = validate_prefix(key_prefix)
    if prefix:
        segments.insert(0, prefix)
    return validate_location("/".join(segments))
