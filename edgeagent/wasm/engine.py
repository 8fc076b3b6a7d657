"""The process-wide wasmtime Engine, its epoch ticker, and per-guest limits.

One Engine serves every guest: compiled code is shared and the epoch counter is engine-wide. A
daemon thread (``wasm-epoch``) advances the epoch every ``tick`` seconds; a guest's deadline is a number of
ticks, so a guest stuck in a loop traps with INTERRUPT at most one tick after its limit. Time is only checked
inside Wasm code, never inside a host call, which is why blocking host functions re-arm the deadline (see
guest.py).

The ticker runs only while some guest call is in flight (``enter``/``leave`` around every export call and
instantiation). An idle agent -- drivers reading once a second, controllers asleep -- would otherwise wake 100
times a second for nothing: that alone was 0.9 % of a core. A deadline is relative to the epoch at arming, and
the epoch only moves while a call runs, so a paused ticker neither shortens nor lengthens any budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import math
import threading
from typing import ClassVar

import wasmtime

WASM_PAGE = 65536
WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one guest may use.

    ``compute_ms``: longest stretch of Wasm code between host calls (a loop is stopped after this).
    ``call_ms``: wall-clock budget of one export call, host calls included (a guest spinning on host calls).
    """

    memory_bytes: int = 16 << 20
    compute_ms: float = 50.0
    call_ms: float = 10_000.0
    instances: int = 1
    tables: int = 4
    table_elements: int = 10_000


class Runtime:
    """A wasmtime Engine configured for guests, plus the ticker that drives epoch deadlines."""

    _default: ClassVar[Runtime | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, tick: float = 0.01) -> None:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        # A fixed base address for every linear memory: the fast path caches it (fastcall.GuestMemory).
        cfg.memory_may_move = False
        cfg.memory_reservation = 1 << 32
        cfg.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(cfg)
        self.tick = tick
        # Host function types, reused across linkers of this engine (see fastcall.functype).
        self.functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], wasmtime.FuncType] = {}
        # The Python-side mirror of the engine's epoch: host code reads it without a C call.
        self.epoch = 0
        self._stop = threading.Event()
        # Guests whose export call (or instantiation) is running, and the ticker's wake-up when it is paused.
        # Plain dict operations and attribute reads: atomic under the GIL, ~0.1 us on the call path.
        self.inflight: dict[object, None] = {}
        self.paused = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasm-epoch", daemon=True)
        self._thread.start()
        # What a serialized module depends on besides its bytes (see cache.py).
        self.fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;may_move=0;reservation=4G;opt=speed".encode()
        ).hexdigest()[:16]

    @classmethod
    def default(cls) -> Runtime:
        """The process-wide runtime (created on first use)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def ticks(self, ms: float) -> int:
        """Deadline in ticks for ``ms`` milliseconds (at least one)."""
        return max(1, math.ceil(ms / 1000.0 / self.tick))

    def enter(self, guest: object) -> None:
        """``guest`` starts running Wasm code: the ticker must run (wakes it if paused)."""
        self.inflight[guest] = None
        if self.paused:
            self._wake.set()

    def leave(self, guest: object) -> None:
        self.inflight.pop(guest, None)

    def _run(self) -> None:
        """The ``wasm-epoch`` thread."""
        inflight, wake, stop = self.inflight, self._wake, self._stop
        while not stop.is_set():
            if not inflight:
                # Announce the pause, then look again: a call entering after that look sees ``paused`` and
                # sets the event; one entering before it is seen here. Either way no call runs unticked.
                wake.clear()
                self.paused = True
                if not inflight:
                    wake.wait()
                self.paused = False
                continue
            if stop.wait(self.tick):
                break
            # Engine first, mirror second: the mirror never runs ahead, so a deadline armed "when the mirror
            # moved" (guest.py) is measured from an engine epoch at least as late, never a tick short.
            self.engine.increment_epoch()
            self.epoch += 1

    @property
    def ticking(self) -> bool:
        """Whether the ticker is running (False while no call is in flight, once it has noticed)."""
        return not self.paused

    def close(self) -> None:
        """Stops the ticker; guests still alive lose their deadlines."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=1.0)
