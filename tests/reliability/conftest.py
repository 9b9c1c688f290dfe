"""Fixtures of the reliability suite, and the figures it prints at the end of a run.

Every test records what it did in a :class:`Figures` row (uploads run, faults
injected, objects lost, leftovers after the final collection); the rows are
printed as a table in pytest's terminal summary, with the form (short or
full) and the seed that replays the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.reliability.scale import MODE_ENV, SCALE, SEED, SEED_ENV

_ROWS = pytest.StashKey[list["Figures"]]()


@dataclass
class Figures:
    """What one reliability test did; filled in by the test."""

    test: str
    uploads: int = 0
    faults: int = 0
    lost: int = 0
    leftovers: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """This test's row of the reliability summary."""
    row = Figures(test=request.node.nodeid.removeprefix("tests/reliability/"))
    started = time.monotonic()
    yield row
    row.seconds = time.monotonic() - started
    request.config.stash.setdefault(_ROWS, []).append(row)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_ROWS, [])
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("granite_storage reliability")
    write(f"form: {SCALE.name} ({MODE_ENV}=full for the full form); seed: {SEED} ({SEED_ENV})")
    write(f"{'uploads':>8} {'faults':>7} {'lost':>5} {'leftovers':>9} {'seconds':>8}  test")
    for row in rows:
        write(
            f"{row.uploads:>8} {row.faults:>7} {row.lost:>5} {row.leftovers:>9} "
            f"{row.seconds:>8.1f}  {row.test}"
        )
        for note in row.notes:
            write(f"{'':>42}{note}")
    write(
        f"{sum(r.uploads for r in rows):>8} {sum(r.faults for r in rows):>7} "
        f"{sum(r.lost for r in rows):>5} {sum(r.leftovers for r in rows):>9} "
        f"{sum(r.seconds for r in rows):>8.1f}  total"
    )
