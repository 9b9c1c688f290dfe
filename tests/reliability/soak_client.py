"""The soak's client: runs chains of steps against the example app's HTTP API
and keeps what every document must hold afterwards.

Committed uploads, replaces, downloads and deletes go through httpx, as an
application's client would send them. Oversized bodies and disconnects go
through :mod:`tests.reliability.raw_http`, which can stop mid-body, reset the
connection, or keep sending after the server answered 413.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from tests.reliability.raw_http import RawExchange, chunked, form_parts, raw_request
from tests.reliability.soak_plan import UPLOADS, Op, Step

__all__ = ["SoakClient", "SoakState"]

_PIECE = 64 * 1024
_BOUNDARY = "soak-boundary-7f3a"
_CONTENT_TYPE = "application/octet-stream"
#: The example's ``title`` column is ``String(200)``: PostgreSQL refuses a
#: longer one at commit, which rolls the transaction back.
_TOO_LONG_TITLE = 201
#: uvicorn closes the connection after a request that raised (the rollback's
#: 500); asking for that up front keeps httpx from reusing it.
_CLOSE = {"Connection": "close"}
#: Seconds between the pieces of an oversized body: gives the client a
#: chance to read the early 413 before the server's close resets the connection.
_PACE = 0.001


@dataclass
class SoakState:
    """What the soak expects and what went wrong."""

    #: Document id -> sha256 (hex) of the content it must have.
    expected: dict[str, str] = field(default_factory=dict)
    #: Every answer that was not the expected one.
    problems: list[str] = field(default_factory=list)
    #: Steps run, by op.
    counts: Counter[Op] = field(default_factory=Counter)
    #: How oversized uploads were refused: "413", or "reset" when the server's
    #: close (with the unread rest of the body) reset the connection first.
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def uploads(self) -> int:
        return sum(n for op, n in self.counts.items() if op in UPLOADS)


def _pieces(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), _PIECE):
        yield data[start : start + _PIECE]


def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: soak", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SoakClient:
    """Runs chains against the server at ``port``; records into ``state``."""

    def __init__(self, client: httpx.AsyncClient, port: int, state: SoakState) -> None:
        self.client = client
        self.port = port
        self.state = state

    async def run_chain(self, chain: list[Step]) -> None:
        doc: str | None = None
        for step in chain:
            self.state.counts[step.op] += 1
            try:
                doc = await self._perform(step, doc)
            except (httpx.HTTPError, OSError, TimeoutError) as exc:
                self._problem(step, f"the request failed: {exc!r}")
                return
            if doc is None:
                return

    def _problem(self, step: Step, what: str) -> None:
        self.state.problems.append(f"{step.op} ({step.size} bytes, seed {step.seed}): {what}")

    def _check(self, step: Step, status: int, expected: int, text: str = "") -> bool:
        if status != expected:
            self._problem(step, f"expected {expected}, got {status} {text[:300]!r}")
            return False
        return True

    async def _perform(self, step: Step, doc: str | None) -> str | None:
        """Run ``step``; return the chain's document id, ``None`` to end the chain."""
        data = random.Random(step.seed).randbytes(step.size)
        digest = hashlib.sha256(data).hexdigest()
        op = step.op
        if op in (Op.CREATE_FORM, Op.CREATE_ROLLBACK):
            rollback = op is Op.CREATE_ROLLBACK
            response = await self.client.post(
                "/documents",
                files={"file": (step.filename, data, _CONTENT_TYPE)},
                data={"title": "x" * _TOO_LONG_TITLE if rollback else f"doc {step.seed}"},
                headers=_CLOSE if rollback else None,
            )
            if rollback:
                self._check(step, response.status_code, 500, response.text)
                return None
            return self._created(step, response, digest)
        if op is Op.CREATE_RAW:
            response = await self.client.post(
                "/documents",
                params={"filename": step.filename},
                content=data,
                headers={"content-type": _CONTENT_TYPE},
            )
            return self._created(step, response, digest)
        if op is Op.CREATE_TOO_LARGE_DECLARED:
            head = _head(
                "POST",
                "/documents?filename=big.bin",
                {"Content-Type": _CONTENT_TYPE, "Content-Length": str(len(data))},
            )
            exchange = await raw_request(self.port, head, _pieces(data), pace=_PACE)
            self._refused(step, exchange)
            return None
        if op in (Op.CREATE_TOO_LARGE_STREAMED, Op.REPLACE_TOO_LARGE):
            head, (before, file, after) = self._form(step, doc, data, title="big", chunked=True)
            body = chunked([before, *_pieces(file), after])
            self._refused(step, await raw_request(self.port, head, body, pace=_PACE))
            return doc
        if op in (Op.CREATE_DISCONNECT, Op.REPLACE_DISCONNECT):
            head, (before, file, after) = self._form(step, doc, data, title="cut", chunked=False)
            cut = len(before) + int(len(file) * step.cut)
            exchange = await raw_request(
                self.port,
                head,
                [before, *_pieces(file), after],
                abort_after=cut,
                reset=step.reset,
                pace=0.002,
            )
            if exchange.response is not None:
                status = exchange.response.status
                self._problem(step, f"answered {status} before the client went away")
            return doc
        assert doc is not None, step
        if op in (Op.REPLACE, Op.REPLACE_ROLLBACK):
            rollback = op is Op.REPLACE_ROLLBACK
            response = await self.client.put(
                self._content(doc),
                files={"file": (step.filename, data, _CONTENT_TYPE)},
                data={"title": "x" * _TOO_LONG_TITLE if rollback else f"doc {step.seed}"},
                headers=_CLOSE if rollback else None,
            )
            if rollback:
                self._check(step, response.status_code, 500, response.text)
            elif self._check(step, response.status_code, 200, response.text):
                self._answered_checksum(step, response, digest)
                self.state.expected[doc] = digest
            return doc
        if op is Op.DOWNLOAD:
            response = await self.client.get(self._content(doc))
            if self._check(step, response.status_code, 200, response.text):
                got = hashlib.sha256(response.content).hexdigest()
                if got != self.state.expected[doc]:
                    self._problem(step, f"downloaded {got}, expected {self.state.expected[doc]}")
            return doc
        if op is Op.DELETE:
            response = await self.client.delete(f"/documents/{doc}")
            if self._check(step, response.status_code, 204, response.text):
                del self.state.expected[doc]
            return None
        raise AssertionError(f"unknown op {op}")

    @staticmethod
    def _content(doc: str) -> str:
        return f"/documents/{doc}/content"

    def _form(
        self, step: Step, doc: str | None, data: bytes, *, title: str, chunked: bool
    ) -> tuple[bytes, tuple[bytes, bytes, bytes]]:
        """The request head and the three pieces of a form upload: a create
        without ``doc``, a replace of ``doc`` with it."""
        method, target = ("POST", "/documents") if doc is None else ("PUT", self._content(doc))
        parts = form_parts(
            _BOUNDARY, title=title, filename=step.filename, content_type=_CONTENT_TYPE, data=data
        )
        framing = (
            {"Transfer-Encoding": "chunked"}
            if chunked
            else {"Content-Length": str(sum(map(len, parts)))}
        )
        content_type = {"Content-Type": f"multipart/form-data; boundary={_BOUNDARY}"}
        return _head(method, target, content_type | framing), parts

    def _created(self, step: Step, response: httpx.Response, digest: str) -> str | None:
        if not self._check(step, response.status_code, 201, response.text):
            return None
        self._answered_checksum(step, response, digest)
        doc: str = response.json()["id"]
        self.state.expected[doc] = digest
        return doc

    def _answered_checksum(self, step: Step, response: httpx.Response, digest: str) -> None:
        answered = response.json()
        if (answered["checksum"], answered["size"]) != (f"sha256:{digest}", step.size):
            self._problem(step, f"the server stored {answered}, expected sha256:{digest}")

    def _refused(self, step: Step, exchange: RawExchange) -> None:
        """A 413, or a connection the server ended before reading the whole
        body: before the client sent it all, or by a reset (a close with bytes
        unread, which can discard the 413 before the client reads it; a body
        only a little over the limit fits whole in the sockets' buffers, so
        "sent" does not mean "read"). Never a server that read it all and
        closed without answering."""
        answer = exchange.response
        if answer is not None:
            if self._check(step, answer.status, 413, answer.body.decode("latin-1")):
                self.state.refusals["413"] += 1
        elif exchange.body_sent and not exchange.reset:
            self._problem(step, "the whole oversized body was read, and never answered")
        else:
            self.state.refusals["reset"] += 1
