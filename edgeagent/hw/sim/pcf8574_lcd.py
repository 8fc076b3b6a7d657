"""A PCF8574 I/O expander (0x27) driving an HD44780 character LCD in 4-bit mode, as on the common backpack.

Wiring: P0 RS, P1 RW, P2 E, P3 backlight, P4-P7 D4-D7. Every byte written sets the eight pins; the controller
model latches a nibble on each falling edge of E. It follows the datasheet's initialisation by instruction
(three 8-bit function sets, then the switch to 4-bit), and implements clear, home, entry mode, display
control, function set, DDRAM addressing and data writes: enough to see what a driver put on the screen.
"""

from __future__ import annotations

from edgeagent.hw.sim.i2c_device import RegisterDevice

RS, RW, E, BACKLIGHT = 0x01, 0x02, 0x04, 0x08
ROW_OFFSETS = (0x00, 0x40, 0x14, 0x54)


class Hd44780:
    """The controller: DDRAM, address counter and the 4-bit interface state."""

    def __init__(self, columns: int = 16, rows: int = 2) -> None:
        self.columns, self.rows = columns, rows
        self.ddram = bytearray(b" " * 0x80)
        self.addr = 0
        self.increment = True
        self.display_on = False
        self.four_bit = False
        self.two_lines = False
        self._high: int | None = None  # first nibble of a 4-bit transfer
        self.commands = 0

    def strobe(self, nibble: int, rs: bool) -> None:
        if not self.four_bit:
            # 8-bit mode with only D4-D7 wired: each strobe is a whole instruction with D0-D3 = 0.
            self._execute(nibble << 4, rs)
            return
        if self._high is None:
            self._high = nibble
        else:
            byte, self._high = (self._high << 4) | nibble, None
            self._execute(byte, rs)

    def _execute(self, byte: int, rs: bool) -> None:
        if rs:
            self.ddram[self.addr & 0x7F] = byte
            self.addr = (self.addr + (1 if self.increment else -1)) & 0x7F
            return
        self.commands += 1
        if byte & 0x80:
            self.addr = byte & 0x7F
        elif byte & 0x20:
            self.four_bit = not byte & 0x10
            self.two_lines = bool(byte & 0x08)
        elif byte & 0x08:
            self.display_on = bool(byte & 0x04)
        elif byte & 0x04:
            self.increment = bool(byte & 0x02)
        elif byte & 0x02:
            self.addr = 0
        elif byte & 0x01:
            self.ddram[:] = b" " * 0x80
            self.addr = 0
            self.increment = True

    def lines(self) -> list[str]:
        return [
            self.ddram[off : off + self.columns].decode("ascii", "replace")
            for off in ROW_OFFSETS[: self.rows]
        ]


class Pcf8574Lcd(RegisterDevice):
    address = 0x27
    addresses = tuple(range(0x20, 0x28)) + tuple(range(0x38, 0x40))  # PCF8574 / PCF8574A, A0-A2
    name = "pcf8574-hd44780"

    def __init__(self, address: int | None = None, columns: int = 16, rows: int = 2) -> None:
        super().__init__(address)
        self.lcd = Hd44780(columns, rows)
        self.pins = 0xFF  # quasi-bidirectional outputs come up high

    @property
    def backlight(self) -> bool:
        return bool(self.pins & BACKLIGHT)

    def write_bytes(self, data: bytes) -> None:
        for b in data:
            falling = self.pins & E and not b & E
            self.pins = b
            if falling and not b & RW:
                self.lcd.strobe(b >> 4, bool(b & RS))

    def read_bytes(self, n: int) -> bytes:
        return bytes([self.pins]) * n

    def lines(self) -> list[str]:
        return self.lcd.lines()
