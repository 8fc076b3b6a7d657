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


class LogHost(HostModule):
    interface = "edgeagent:driver/log"

    def __init__(self, name: str, *, lines_per_second: float = 50.0, keep: int = 0) -> None:
        super().__init__()
        self.logger = logging.getLogger(f"edgeagent.guest.{name}")
        self._interval = 1.0 / lines_per_second if lines_per_second > 0 else 0.0
        self._last = 0.0
        self.dropped = 0
        self.keep = keep
        self.lines: list[tuple[int, str]] = []  # the last `keep` lines, for tests and `run-driver -v`

    @hostfunc("log", params=(I32, I32, I32))
    def log(self, level: int, ptr: int, length: int) -> None:
        text = self.memory.read(ptr, min(length, MAX_LINE)).decode("utf-8", "replace")
        now = time.monotonic()
        if now - self._last < self._interval:
            self.dropped += 1
            return
        self._last = now
        lvl = LEVELS[level] if level < len(LEVELS) else logging.ERROR
        if self.keep:
            self.lines.append((lvl, text))
            del self.lines[: -self.keep]
        self.logger.log(lvl, "%s", text)
