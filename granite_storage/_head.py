"""The head stage of the upload pipeline: read the first bytes of a chunk
stream before anything is handed on, then hand on everything, head first."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from granite_storage._concurrency import aclose_quietly
from granite_storage.streams import BlockingPull, blocking_pull


class HeadStage:
    """``await stage.afill()`` reads chunks until ``size`` bytes (or the end)
    arrived and returns those first bytes; iterating the stage then yields
    every chunk unchanged, the buffered ones first.

    At most ``size`` bytes plus one chunk are held. Like
    :class:`~granite_storage.streams.SizeLimiter`, the stage passes on
    :func:`~granite_storage.streams.blocking_pull` after the head, so a
    backend can still copy a sync source from one worker thread.
    """

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        self._chunks = chunks
        self._size = size
        self._buffered: deque[bytes] = deque()
        self._inner_pull = blocking_pull(chunks)
        self.blocking_pull: BlockingPull | None = self._pull if self._inner_pull else None

    async def afill(self) -> bytes:
        """The first ``size`` bytes (fewer if the stream is shorter)."""
        total = 0
        while total < self._size and (chunk := await anext(self._chunks, None)) is not None:
            self._buffered.append(chunk)
            total += len(chunk)
        if len(self._buffered) == 1:
            return self._buffered[0][: self._size]
        return b"".join(self._buffered)[: self._size]

    def __aiter__(self) -> HeadStage:
        return self

    async def __anext__(self) -> bytes:
        if self._buffered:
            return self._buffered.popleft()
        return await anext(self._chunks)

    def _pull(self) -> bytes | None:
        assert self._inner_pull is not None
        if self._buffered:
            return self._buffered.popleft()
        return self._inner_pull()

    async def aclose(self) -> None:
        await aclose_quietly(self._chunks)
