"""A PCF8574 I/O expander (0x27) driving an HD44780 character LCD in 4-bit mode, as on the common backpack.

Wiring: P0 RS, P1 RW, P2 E, P3 backlight, P4-P7 D4-D7. Every byte written sets the eight pins; the controller
model latches a nibble on each falling edge of E. It follows the datasheet's initialisation by instruction
(three 8-bit function sets, then the switch to 4-bit), and implements clear, home, entry mode, display
control, function set, DDRAM addressing and data writes: enough to see what a driver put on the screen.

Timing, on the part's clock (edgeagent.hw.sim.clock), per the HD44780U datasheet: the controller ignores the
interface for 40 ms after power-on, and while it executes an instruction (clear display and return home
1.52 ms, the first function set of the initialisation by instruction 4.1 ms, the second 100 us, the rest
37 us, a data write 41 us); a nibble strobed in then is lost, as on the part. A simulated transfer takes no
time, but on the wire every nibble is two bytes to the expander, 180 us at 100 kHz: execution times shorter
than that pass on the bus by themselves, so the model enforces only the longer ones (the driver must wait
for those; it need not wait between ordinary instructions and characters).
"""

from __future__ import annotations

import time

from edgeagent.hw.sim.clock import Clock
from edgeagent.hw.sim.i2c_device import RegisterDevice

RS, RW, E, BACKLIGHT = 0x01, 0x02, 0x04, 0x08
ROW_OFFSETS = (0x00, 0x40, 0x14, 0x54)
POWER_ON_S = 0.040
NIBBLE_BUS_S = 2 * 9 / 100_000  # two bytes and their acknowledges at 100 kHz: one strobed nibble
CLEAR_S = 1.52e-3
INSTRUCTION_S = 37e-6
DATA_S = 41e-6
INIT_FUNCTION_SET_S = (4.1e-3, 100e-6)  # after the first and the second 8-bit function set


class Hd44780:
    """The controller: DDRAM, address counter and the 4-bit interface state."""

    def __init__(self, columns: int = 16, rows: int = 2, *, ready_at: float = 0.0) -> None:
        self.columns, self.rows = columns, rows
        self.ready_at = ready_at  # the controller ignores strobes before this time (busy)
        self.lost = 0  # nibbles strobed in while busy
        self._function_sets = 0
        self.ddram = bytearray(b" " * 0x80)
        self.addr = 0
        self.increment = True
        self.display_on = False
        self.four_bit = False
        self.two_lines = False
        self._high: int | None = None  # first nibble of a 4-bit transfer
        self.commands = 0

    def strobe(self, nibble: int, rs: bool, at: float) -> None:
        """E fell at time ``at`` with ``nibble`` on D4-D7."""
        if at < self.ready_at:
            self.lost += 1
            return
        if not self.four_bit:
            # 8-bit mode with only D4-D7 wired: each strobe is a whole instruction with D0-D3 = 0.
            self._busy(at, self._execute(nibble << 4, rs))
            return
        if self._high is None:
            self._high = nibble
        else:
            byte, self._high = (self._high << 4) | nibble, None
            self._busy(at, self._execute(byte, rs))

    def _busy(self, at: float, took: float) -> None:
        if took > NIBBLE_BUS_S:  # shorter: over before the next nibble can arrive
            self.ready_at = at + took

    def _execute(self, byte: int, rs: bool) -> float:
        """Runs an instruction or a data write; returns its execution time."""
        if rs:
            self.ddram[self.addr & 0x7F] = byte
            self.addr = (self.addr + (1 if self.increment else -1)) & 0x7F
            return DATA_S
        self.commands += 1
        took = INSTRUCTION_S
        if byte & 0x80:
            self.addr = byte & 0x7F
        elif byte & 0x20:
            if not self.four_bit and self._function_sets < len(INIT_FUNCTION_SET_S):
                took = INIT_FUNCTION_SET_S[self._function_sets]
            self._function_sets += 1
            self.four_bit = not byte & 0x10
            self.two_lines = bool(byte & 0x08)
        elif byte & 0x08:
            self.display_on = bool(byte & 0x04)
        elif byte & 0x04:
            self.increment = bool(byte & 0x02)
        elif byte & 0x02:
            self.addr = 0
            took = CLEAR_S
        elif byte & 0x01:
            self.ddram[:] = b" " * 0x80
            self.addr = 0
            self.increment = True
            took = CLEAR_S
        return took

    def lines(self) -> list[str]:
        return [
            self.ddram[off : off + self.columns].decode("ascii", "replace")
            for off in ROW_OFFSETS[: self.rows]
        ]


class Pcf8574Lcd(RegisterDevice):
    address = 0x27
    addresses = tuple(range(0x20, 0x28)) + tuple(range(0x38, 0x40))  # PCF8574 / PCF8574A, A0-A2
    name = "pcf8574-hd44780"

    def __init__(
        self, address: int | None = None, columns: int = 16, rows: int = 2, *, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(address)
        self._clock = clock
        self.lcd = Hd44780(columns, rows, ready_at=clock() + POWER_ON_S)
        self.pins = 0xFF  # quasi-bidirectional outputs come up high

    @property
    def backlight(self) -> bool:
        return bool(self.pins & BACKLIGHT)

    def write_bytes(self, data: bytes) -> None:
        t = self._clock()
        for b in data:
            falling = self.pins & E and not b & E
            self.pins = b
            if falling and not b & RW:
                self.lcd.strobe(b >> 4, bool(b & RS), t)

    def read_bytes(self, n: int) -> bytes:
        return bytes([self.pins]) * n

    def lines(self) -> list[str]:
        return self.lcd.lines()
