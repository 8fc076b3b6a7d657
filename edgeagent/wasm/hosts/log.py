"""``edgeagent:driver/log``: a guest's only way to say something, routed to the agent's logging.

A guest's WASI stdout/stderr go nowhere (a driver must not corrupt the agent's JSON output); this import gives
it leveled, rate-limited lines tagged with its name.
"""

from __future__ import annotations

import logging
import time

from edgeagent.wasm.host import I32, HostModule, hostfunc

# WIT `enum level { trace, debug, info, warn, error }`
LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
MAX_LINE = 1024


class LogLimit:
    """A token bucket: ``rate`` lines a second, bursts of up to ``burst``; the rest counted as suppressed.

    Separate from the host module so a guest that is re-instantiated (a controller waking from its snapshot)
    keeps one budget and one count across instances. Used from the guest's calling thread only.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self.burst
        self._at = time.monotonic()
        self.suppressed = 0  # since the last notice
        self.total_suppressed = 0

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            self.total_suppressed += 1
            return False
        self._tokens -= 1.0
        return True


class LogHost(HostModule):
    interface = "edgeagent:driver/log"

    def __init__(
        self, name: str, *, lines_per_second: float = 50.0, keep: int = 0, limit: LogLimit | None = None
    ) -> None:
        super().__init__()
        self.logger = logging.getLogger(f"edgeagent.guest.{name}")
        self.limit = limit if limit is not None else LogLimit(lines_per_second)
        self.keep = keep
        self.lines: list[tuple[int, str]] = []  # the last `keep` lines, for tests and `run-driver -v`

    @property
    def dropped(self) -> int:
        return self.limit.total_suppressed

    @hostfunc("log", params=(I32, I32, I32))
    def log(self, level: int, ptr: int, length: int) -> None:
        if not self.limit.take():
            return
        text = self.memory.read(ptr, min(length, MAX_LINE)).decode("utf-8", "replace")
        if self.limit.suppressed:  # said before the line that got through, so the gap shows where it was
            n, self.limit.suppressed = self.limit.suppressed, 0
            self._emit(logging.WARNING, f"{n} log line{'s' if n != 1 else ''} suppressed (rate limit "
                       f"{self.limit.rate:g}/s)")
        self._emit(LEVELS[level] if level < len(LEVELS) else logging.ERROR, text)

    def _emit(self, lvl: int, text: str) -> None:
        if self.keep:
            self.lines.append((lvl, text))
            del self.lines[: -self.keep]
        self.logger.log(lvl, "%s", text)
