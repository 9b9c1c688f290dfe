"""Test data: large source files and trees of stored objects for the collectors."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import MIB

__all__ = ["ObjectTree", "make_object_tree", "make_source_file", "random_block", "write_objects"]

#: The content of every object in the collectors' trees (its size does not matter).
SMALL_CONTENT = b"granite-bench-object\n"


def random_block(size: int = MIB, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_source_file(path: Path, size: int) -> str:
    """Write ``size`` bytes of incompressible data to ``path``; return its
    ``"sha256:<hex>"``. Each MiB differs, so no layer can deduplicate."""
    block = random_block(MIB)
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        written = 0
        while written < size:
            chunk = (written.to_bytes(8, "little") + block[8:])[: size - written]
            digest.update(chunk)
            file.write(chunk)
            written += len(chunk)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class ObjectTree:
    """Locations of a collector fixture; the first object of each entity is referenced."""

    prefix: str
    referenced: list[str]
    orphans: list[str]

    def write_lists(self, directory: Path) -> tuple[Path, Path]:
        """Write the referenced and orphaned locations, one a line; return both files."""
        refs, orphans = directory / "referenced.txt", directory / "orphans.txt"
        refs.write_text("".join(f"{loc}\n" for loc in self.referenced), encoding="utf-8")
        orphans.write_text("".join(f"{loc}\n" for loc in self.orphans), encoding="utf-8")
        return refs, orphans


def make_object_tree(objects: int, references: int, prefix: str = "gc") -> ObjectTree:
    """Locations laid out as granite_storage writes them
    (``{prefix}/document/{entity}/file/{uuid}.bin``): ``references`` entities
    whose first object is referenced; the other objects are older versions
    of the same entities (orphans), spread evenly."""
    if not 0 < references <= objects:
        raise ValueError(f"need 0 < references <= objects, got {references} and {objects}")
    referenced: list[str] = []
    orphans: list[str] = []
    for index in range(objects):
        location = f"{prefix}/document/{index % references}/file/{uuid.uuid4().hex}.bin"
        (referenced if index < references else orphans).append(location)
    return ObjectTree(prefix, referenced, orphans)


def _write_many(root: str, locations: list[str]) -> None:
    made: set[str] = set()
    for location in locations:
        path = os.path.join(root, location)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        with open(path, "wb") as file:
            file.write(SMALL_CONTENT)


def write_objects(root: Path, locations: Iterable[str], threads: int = 4) -> None:
    """Create a small file at each location under ``root`` (a few threads,
    since creating files is mostly waiting on the file system)."""
    ordered = sorted(locations)  # keeps each entity's files in one batch
    batch = max(1, len(ordered) // (threads * 8) + 1)
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(_write_many, str(root), ordered[i : i + batch])
            for i in range(0, len(ordered), batch)
        ]
        for future in futures:
            future.result()


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return file.read().splitlines()
