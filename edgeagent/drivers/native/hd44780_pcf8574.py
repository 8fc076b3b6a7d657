"""HD44780 behind a PCF8574, natively: the work of drivers/hd44780_pcf8574.c."""

from __future__ import annotations

from smbus2 import i2c_msg

from edgeagent.drivers.native.base import NativeDriver

RS, E, BACKLIGHT = 0x01, 0x04, 0x08
COLUMNS, ROWS = 16, 2
ROW_OFFSETS = (0x00, 0x40, 0x14, 0x54)


class Hd44780Pcf8574Native(NativeDriver):
    name = "hd44780_pcf8574"
    channels = ()

    def _nibbles(self, byte: int, rs: int) -> list[int]:
        out = []
        for nib in (byte >> 4, byte & 0x0F):
            v = (nib << 4) | rs | BACKLIGHT
            out += [v | E, v]
        return out

    def _send(self, data: list[int]) -> None:
        if data:
            self.bus.i2c_rdwr(i2c_msg.write(self.address, data))

    def init(self) -> None:
        self.sleep(0.05)
        for wait in (0.0045, 0.00015, 0.00015):
            self._send([0x30 | BACKLIGHT | E, 0x30 | BACKLIGHT])
            self.sleep(wait)
        self._send([0x20 | BACKLIGHT | E, 0x20 | BACKLIGHT])
        for cmd in (0x28, 0x0C, 0x01):
            self._send(self._nibbles(cmd, 0))
        self.sleep(0.002)
        self._send(self._nibbles(0x06, 0))

    def write(self, text: str) -> None:
        self._send(self._nibbles(0x01, 0))
        self.sleep(0.002)
        for row, line in enumerate(text.split("\n")[:ROWS]):
            if row:
                self._send(self._nibbles(0x80 | ROW_OFFSETS[row], 0))
            out: list[int] = []
            for ch in line[:COLUMNS]:
                code = ord(ch)
                out += self._nibbles(code if 0x20 <= code < 0x7F else ord("?"), RS)
            self._send(out)
