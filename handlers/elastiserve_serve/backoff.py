"""Reconnect delays: exponential, capped, jittered, reset by a success.

Why not a library: the serving image has none for this (``urllib3``'s ``Retry`` counts HTTP
retries of one request, not reconnects of a long-lived watch), and the policy is five lines.
Why these numbers: the level agent must be back within seconds of an API server that returns
(so the cap is small, 5 s), without every replica of every model reconnecting at the same
instant after a restart (so each delay is drawn between half and all of its nominal value).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """``next_delay()`` grows ``base_s * factor**n`` up to ``cap_s``; ``reset()`` after a
    success. ``jitter`` returns a number in [0, 1) (injectable for tests)."""

    base_s: float = 0.2
    cap_s: float = 5.0
    factor: float = 2.0
    jitter: Callable[[], float] = field(default=random.random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s) or self.factor < 1:
            raise ValueError("need 0 < base_s <= cap_s and factor >= 1")

    def next_delay(self) -> float:
        nominal = min(self.cap_s, self.base_s * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return nominal * (0.5 + 0.5 * self.jitter())

    def reset(self) -> None:
        self.attempts = 0
