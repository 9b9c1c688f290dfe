"""Two small value helpers shared by every layer: one rule for UTC times,
one way to cut a list into batches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")

#: Items per ``IN (...)`` list in SQL and per batch call to a backend when
#: nothing tighter applies: well under every database's parameter limit.
DEFAULT_BATCH = 500


def as_utc(value: datetime) -> datetime:
    """``value`` as a timezone-aware UTC datetime.

    :raises ValueError: if ``value`` is naive: a naive time is ambiguous, and
        every clock and timestamp granite_storage accepts must be aware
        (``datetime.now(UTC)``, not ``datetime.now()``).
    """
    if value.tzinfo is None:
        raise ValueError(
            f"expected an aware datetime, got the naive {value!r}; pass a "
            "timezone-aware time such as datetime.now(UTC)"
        )
    return value.astimezone(UTC)


def batched(items: Sequence[T], size: int = DEFAULT_BATCH) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError(f"a batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
