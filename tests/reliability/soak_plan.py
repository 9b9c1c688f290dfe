"""What the soak does: chains of requests on one document each, drawn from a seed.

A chain starts with a create (a committed multipart form or raw body, an
oversized body declared up front or only found out while streaming, a client
that disconnects mid-upload, a transaction that rolls back) and, if that
committed, goes on with replaces (committed, oversized, disconnected, rolled
back), downloads and possibly a delete. Chains run concurrently; the steps of
one chain run in order, so each document's expected content is known.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CREATES", "FOLLOW_UPS", "UPLOADS", "Op", "Step", "plan_chains"]

KiB, MiB = 1024, 1024 * 1024


class Op(StrEnum):
    CREATE_FORM = "create (form)"
    CREATE_RAW = "create (raw body)"
    CREATE_TOO_LARGE_DECLARED = "create, Content-Length too large"
    CREATE_TOO_LARGE_STREAMED = "create, too large while streaming"
    CREATE_DISCONNECT = "create, client disconnects"
    CREATE_ROLLBACK = "create, transaction rolls back"
    REPLACE = "replace"
    REPLACE_TOO_LARGE = "replace, too large while streaming"
    REPLACE_DISCONNECT = "replace, client disconnects"
    REPLACE_ROLLBACK = "replace, transaction rolls back"
    DOWNLOAD = "download"
    DELETE = "delete"


#: The ops that send a file.
UPLOADS = frozenset(Op) - {Op.DOWNLOAD, Op.DELETE}
CREATES = {
    Op.CREATE_FORM: 30,
    Op.CREATE_RAW: 14,
    Op.CREATE_TOO_LARGE_DECLARED: 7,
    Op.CREATE_TOO_LARGE_STREAMED: 7,
    Op.CREATE_DISCONNECT: 12,
    Op.CREATE_ROLLBACK: 8,
}
FOLLOW_UPS = {
    Op.REPLACE: 30,
    Op.REPLACE_TOO_LARGE: 6,
    Op.REPLACE_DISCONNECT: 10,
    Op.REPLACE_ROLLBACK: 8,
    Op.DOWNLOAD: 20,
    Op.DELETE: 10,
}
#: Files that commit leave the chain going; the others end it.
_COMMITS = {Op.CREATE_FORM, Op.CREATE_RAW}
FILENAMES = [
    "report.pdf",
    "notes.txt",
    "photo.JPG",
    "archive.tar.gz",
    "名前.txt",
    "Résumé final.docx",
    "../../etc/passwd",
    "no extension",
    ".hidden",
]


@dataclass(frozen=True, slots=True)
class Step:
    """One request of a chain.

    :param size: bytes of the file (for an oversized op: bytes it would send).
    :param cut: for a disconnect, the share of the body sent before it.
    :param reset: for a disconnect, close with RST instead of FIN.
    :param seed: the seed of the file's bytes.
    """

    op: Op
    size: int
    filename: str
    cut: float
    reset: bool
    seed: int


def _size(rng: random.Random, max_size: int) -> int:
    roll = rng.random()
    if roll < 0.05:
        return 0
    if roll < 0.55:
        return rng.randrange(1, 8 * KiB)
    if roll < 0.88:
        return rng.randrange(8 * KiB, 512 * KiB)
    return rng.randrange(max_size - MiB, max_size + 1)  # multipart on S3


def _step(rng: random.Random, op: Op, max_size: int) -> Step:
    size = _size(rng, max_size)
    if op in (Op.CREATE_TOO_LARGE_DECLARED, Op.CREATE_TOO_LARGE_STREAMED, Op.REPLACE_TOO_LARGE):
        size = max_size + rng.randrange(1, 2 * MiB)
    elif op in (Op.CREATE_DISCONNECT, Op.REPLACE_DISCONNECT):
        size = max(size, 64 * KiB)
    return Step(
        op=op,
        size=size,
        filename=rng.choice(FILENAMES),
        cut=rng.uniform(0.05, 0.95),
        reset=rng.random() < 0.5,
        seed=rng.randrange(2**32),
    )


def plan_chains(rng: random.Random, uploads: int, max_size: int) -> list[list[Step]]:
    """Chains whose steps send ``uploads`` files in all."""
    chains: list[list[Step]] = []
    count = 0
    while count < uploads:
        create = rng.choices(list(CREATES), weights=list(CREATES.values()))[0]
        chain = [_step(rng, create, max_size)]
        count += 1
        if create in _COMMITS:
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                if count >= uploads:
                    break
                op = rng.choices(list(FOLLOW_UPS), weights=list(FOLLOW_UPS.values()))[0]
                chain.append(_step(rng, op, max_size))
                count += op in UPLOADS
                if op is Op.DELETE:
                    break
        chains.append(chain)
    rng.shuffle(chains)
    return chains
