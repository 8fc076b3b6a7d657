"""Restart with backoff: how long a failed part of the agent waits before its next start.

A part that keeps failing must not spin (a driver trapping on every read, an unreachable verifier), and
one that ran well for a while before failing deserves a quick restart: the delay doubles per consecutive
failure up to a cap, and a run that lasted ``healthy_after`` seconds resets the count.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Backoff:
    base: float = 1.0
    cap: float = 60.0
    healthy_after: float = 30.0
    failures: int = 0
    """Consecutive failures (reset by a long enough healthy run)."""
    restarts: int = 0
    """Every restart so far (never reset: reported)."""
    _started: float = dataclasses.field(default=0.0, repr=False)

    def started(self, now: float | None = None) -> None:
        self._started = time.monotonic() if now is None else now

    def failed(self, now: float | None = None) -> float:
        """Records a failure; returns the seconds to wait before the next start."""
        now = time.monotonic() if now is None else now
        if self._started and now - self._started >= self.healthy_after:
            self.failures = 0
        self.failures += 1
        self.restarts += 1
        return min(self.base * 2 ** (self.failures - 1), self.cap)
