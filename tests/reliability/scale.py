"""How hard the reliability suite pushes: a short form in every pytest run, a full form on demand.

``GRANITE_STORAGE_RELIABILITY=full`` (``nox -s reliability`` sets it) selects the
full form; anything else, or nothing, the short form CI runs in well under a
minute and a half on two cores. ``GRANITE_STORAGE_RELIABILITY_SEED=<int>`` replays
the random choices (sizes, scenarios, fault plans) of an earlier run: every run
prints its seed in the reliability summary at the end of the pytest output.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

__all__ = ["FULL", "MODE_ENV", "SCALE", "SEED", "SEED_ENV", "Scale"]

MODE_ENV = "GRANITE_STORAGE_RELIABILITY"
SEED_ENV = "GRANITE_STORAGE_RELIABILITY_SEED"
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scale:
    """The sizes of one form of the suite."""

    name: str
    #: Uploads (commits, oversized bodies, disconnects, rollbacks, replaces) per soak.
    soak_uploads: int
    #: Requests in flight at once during a soak.
    soak_concurrency: int
    #: Fractions of the 64 MiB upload at which a crash test kills its child.
    crash_points: tuple[float, ...]
    #: Uploads of the random S3 fault campaign (after the fixed fault matrix).
    fault_campaign_uploads: int
    #: Hypothesis examples per property on memory/local, and on S3.
    hypothesis_examples: int
    hypothesis_s3_examples: int
    #: pytest-timeout for each test of the suite, in seconds.
    timeout: float


SHORT = Scale(
    name="short (CI)",
    soak_uploads=80,
    soak_concurrency=32,
    crash_points=(0.5,),
    fault_campaign_uploads=4,
    hypothesis_examples=60,
    hypothesis_s3_examples=8,
    timeout=120,
)
LONG = Scale(
    name="full",
    soak_uploads=500,
    soak_concurrency=32,
    crash_points=(0.02, 0.3, 0.5, 0.8, 0.98),
    fault_campaign_uploads=120,
    hypothesis_examples=1000,
    hypothesis_s3_examples=60,
    timeout=1800,
)

FULL = os.environ.get(MODE_ENV, "").strip().lower() == "full"
SCALE = LONG if FULL else SHORT
SEED = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
