"""Time for simulated parts: the clock a model reads and the conversions it times against it.

Every simulated part (the declarative TOML models and the bundled Python ones) takes a ``clock`` (a function
returning seconds, ``time.monotonic`` by default) and times its conversions with ``Conversion``: a driver that
skips the datasheet's wait reads too early and gets what the chip gives then, as on hardware.

``SimClock`` is the clock of a simulated session: monotonic time plus the part of every driver sleep that did
not really pass. Why: tests and benchmarks run drivers with a sleep that returns at once (a benchmark must
time the driver path, not the datasheet's waits); the parts must still see the waited time go by, or a
correct driver would poll until it gave up. With a real sleep nothing is added, so time is never counted
twice. Given a file, the clock lives there (16 bytes, memory-mapped) so that a driver in one process and the
parts in another (the umockdev emulation's server) share one clock. ``freeze`` stops real time from counting
(only sleeps move the clock then): a test steps time exactly, even across processes.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Clock = Callable[[], float]


class Conversion:
    """A conversion in progress on a part: started at a time, lasting a duration, on the part's clock.

    Not started, or finished, it is not ``busy``. ``done()`` is true once for each conversion that has ended
    since it was started: where a model latches the result (into its output registers) lazily, when next
    looked at, rather than on a timer.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started = 0.0
        self.duration = 0.0
        self.pending = False

    def start(self, seconds: float) -> None:
        self.started, self.duration, self.pending = self.clock(), seconds, True

    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def busy(self) -> bool:
        return self.pending and self.elapsed() < self.duration

    def done(self) -> bool:
        """True (once) when a started conversion has run its time."""
        if self.pending and self.elapsed() >= self.duration:
            self.pending = False
            return True
        return False

    def cancel(self) -> None:
        self.pending = False


class SimClock:
    """Monotonic time plus what driver sleeps skipped (see the module docstring). ``now`` is the clock the
    parts read; ``sleep`` is the one the driver is given. Thread-safe enough for one driver thread: only
    ``sleep`` writes."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep, *, path: Path | None = None) -> None:
        self._sleep = sleep
        self._local = [0.0, 0.0]  # offset, frozen at (0: not frozen)
        self._map: mmap.mmap | None = None
        if path is not None:
            with open(path, "a+b") as f:
                if f.seek(0, 2) < 16:
                    f.write(b"\0" * (16 - f.tell()))
                    f.flush()
                self._map = mmap.mmap(f.fileno(), 16)

    def _get(self, i: int) -> float:
        if self._map is not None:
            return float(struct.unpack_from("d", self._map, 8 * i)[0])
        return self._local[i]

    def _set(self, i: int, value: float) -> None:
        if self._map is not None:
            struct.pack_into("d", self._map, 8 * i, value)
        else:
            self._local[i] = value

    @property
    def offset(self) -> float:
        return self._get(0)

    def _advance(self, seconds: float) -> None:
        self._set(0, self.offset + seconds)

    def now(self) -> float:
        frozen = self._get(1)
        return (frozen or time.monotonic()) + self.offset

    def freeze(self) -> None:
        """From now on only sleeps move this clock (and every SimClock on the same file)."""
        if not self._get(1):
            self._set(1, time.monotonic())

    def sleep(self, seconds: float) -> None:
        t = self.now()
        self._sleep(seconds)
        short = seconds - (self.now() - t)
        if short > 0:
            self._advance(short)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def new_part(factory: Callable[..., Any], address: int, clock: Clock | None) -> Any:
    """``factory(address)``, given ``clock`` too when it takes one (the bundled parts and TOML models do; a
    third-party factory without it keeps its own time)."""
    if clock is not None:
        import inspect  # here: the agent imports this module, and inspect pulls in much of the stdlib

        try:
            takes_clock = "clock" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_clock = False
        if takes_clock:
            return factory(address, clock=clock)
    return factory(address)
