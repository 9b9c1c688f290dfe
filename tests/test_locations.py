"""Locations: sanitised segments, safe suffixes, and no escape, whatever the input."""

from __future__ import annotations

import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_storage import InvalidLocationError
from granite_storage.locations import (
    MAX_LOCATION_LENGTH,
    build_location,
    is_under_prefix,
    safe_suffix,
    sanitize_segment,
    unique_name,
    validate_location,
    validate_prefix,
)

SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "..",
            ".",
            "/",
            "\\",
            "../../etc/passwd",
            "a\x00b",
            "..\\..\\x",
            "",
            " ",
            "\u202e",
            "Résumé",
            "名前",
            "a/b",
            "CON",
            "~root",
            "-",
            ".hidden",
        ]
    ),
    st.integers().map(str),
    st.uuids().map(str),
)


def assert_safe(location: str, prefix: str | None) -> None:
    assert validate_location(location) == location
    assert is_under_prefix(location, prefix)
    segments = location.split("/")
    assert all(SAFE_SEGMENT.fullmatch(segment) for segment in segments)
    assert len(location) <= MAX_LOCATION_LENGTH


@given(
    model=hostile_text,
    entity=hostile_text,
    field=hostile_text,
    filename=hostile_text,
    prefix=st.sampled_from([None, "docs", "tenant-1/docs"]),
)
def test_build_location_is_safe_or_refuses(
    model: str, entity: str, field: str, filename: str, prefix: str | None
) -> None:
    try:
        location = build_location(
            key_prefix=prefix,
            model_name=model,
            entity_id=entity,
            field_name=field,
            original_filename=filename,
        )
    except InvalidLocationError:
        return
    assert_safe(location, prefix)
    expected_segments = 3 + (prefix.count("/") + 1 if prefix else 0)
    assert location.count("/") == expected_segments


@given(hostile_text)
def test_sanitize_segment_never_yields_a_path(value: str) -> None:
    try:
        segment = sanitize_segment(value)
    except InvalidLocationError:
        return
    assert SAFE_SEGMENT.fullmatch(segment)
    assert segment not in (".", "..")


@given(st.text(max_size=200))
def test_validate_location_rejects_every_escape(location: str) -> None:
    try:
        validate_location(location)
    except InvalidLocationError:
        return
    segments = location.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert "\\" not in location and "\x00" not in location


def test_location_layout() -> None:
    location = build_location(
        key_prefix="docs",
        model_name="Document",
        entity_id=42,
        field_name="file",
        original_filename="Annual Report.PDF",
    )
    assert re.fullmatch(r"docs/Document/42/file/[0-9a-f]{32}\.pdf", location)
    bare = build_location(key_prefix=None, model_name="m", entity_id="e", field_name="f")
    assert re.fullmatch(r"m/e/f/[0-9a-f]{32}", bare)


def test_unique_names_are_128_random_bits_never_repeated() -> None:
    names = [unique_name() for _ in range(5000)]  # spans many fetches of random bytes
    assert all(re.fullmatch(r"[0-9a-f]{32}", name) for name in names)
    assert len(set(names)) == len(names)
    # Every bit varies (uuid4 fixes six of them): no nibble is constant.
    assert all(len({name[i] for name in names}) == 16 for i in range(32))


def test_threads_taking_names_at_once_never_get_the_same_one() -> None:
    # No lock: the list's pop hands each name out once, and threads that
    # find it empty at the same time each fetch more.
    start = threading.Barrier(8)

    def take() -> list[str]:
        start.wait()
        return [unique_name() for _ in range(3000)]

    with ThreadPoolExecutor(8) as pool:
        names = [name for taken in pool.map(lambda _: take(), range(8)) for name in taken]
    assert len(names) == 24000 and len(set(names)) == len(names)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_does_not_reuse_its_parents_names() -> None:
    unique_name()  # the parent now holds names it has not handed out
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, "".join(unique_name() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(unique_name() for _ in range(4))
    assert len(child) == len(parent) == 128
    assert child != parent


@pytest.mark.parametrize(
    ("filename", "suffix"),
    [
        ("a.PDF", ".pdf"),
        ("archive", ""),
        ("x.tar.gz", ".gz"),
        ("../../x.sh\x00.png", ".png"),
        ("a.verylongextension", ""),
        (".bashrc", ""),
        ("dir\\evil.exe", ".exe"),
        (None, ""),
        ("photo.jpeg ", ""),
        ("c:\\users\\me\\cv.docx", ".docx"),
    ],
)
def test_safe_suffix(filename: str | None, suffix: str) -> None:
    assert safe_suffix(filename) == suffix


@pytest.mark.parametrize("value", ["..", ".", "", "///", "\x00", "名前"])
def test_unsafe_segments_are_refused_with_a_clear_message(value: str) -> None:
    with pytest.raises(InvalidLocationError, match="no safe characters"):
        sanitize_segment(value, what="entity_id")


def test_prefix_boundaries() -> None:
    assert is_under_prefix("docs/a", "docs")
    assert is_under_prefix("docs/a", "docs/")
    assert not is_under_prefix("docs2/a", "docs")
    assert not is_under_prefix("docs", "docs")
    assert is_under_prefix("anything", None)
    assert validate_prefix("/docs/") == "docs"
    assert validate_prefix("") is None
    with pytest.raises(InvalidLocationError):
        validate_prefix("../docs")
