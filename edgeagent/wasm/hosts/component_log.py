"""``edgeagent:driver/log@0.1.0`` for components: the same leveled, rate-limited lines as the core LogHost."""

from __future__ import annotations

import logging
import time

from edgeagent.wasm.component import ComponentHost, componentfunc
from edgeagent.wasm.hosts.log import MAX_LINE

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class ComponentLogHost(ComponentHost):
    interface = "edgeagent:driver/log@0.1.0"

    def __init__(self, name: str, *, lines_per_second: float = 50.0, keep: int = 0) -> None:
        super().__init__()
        self.logger = logging.getLogger(f"edgeagent.guest.{name}")
        self._interval = 1.0 / lines_per_second if lines_per_second > 0 else 0.0
        self._last = 0.0
        self.dropped = 0
        self.keep = keep
        self.lines: list[tuple[int, str]] = []

    @componentfunc("log")
    def log(self, level: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self.dropped += 1
            return
        self._last = now
        lvl = LEVELS.get(level, logging.ERROR)
        text = message[:MAX_LINE]
        if self.keep:
            self.lines.append((lvl, text))
            del self.lines[: -self.keep]
        self.logger.log(lvl, "%s", text)
