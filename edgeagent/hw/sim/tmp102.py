"""TMP102 temperature sensor (TI SBOS397) at 0x48-0x4b: four 16-bit big-endian registers behind a pointer.

Temperature: 12-bit two's complement, left-aligned, 0.0625 degC per LSB. Reading more than two bytes repeats
the pointed register (no auto-increment), as the part does.
"""

from __future__ import annotations

from edgeagent.hw.sim.i2c_device import RegisterDevice

REG_TEMPERATURE = 0x00
REG_CONFIG = 0x01
REG_TLOW = 0x02
REG_THIGH = 0x03
CONFIG_POWER_ON = 0x60A0


class Tmp102(RegisterDevice):
    address = 0x48
    addresses = (0x48, 0x49, 0x4A, 0x4B)  # ADD0 strapped to GND, V+, SDA, SCL
    name = "tmp102"

    def __init__(self, address: int | None = None, temperature: float = 23.5) -> None:
        super().__init__(address)
        self.words = {REG_TEMPERATURE: 0, REG_CONFIG: CONFIG_POWER_ON, REG_TLOW: 0x4B00, REG_THIGH: 0x5000}
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        raw = self.words[REG_TEMPERATURE] >> 4
        return (raw - 4096 if raw & 0x800 else raw) * 0.0625

    @temperature.setter
    def temperature(self, celsius: float) -> None:
        raw = max(-2048, min(2047, round(celsius / 0.0625)))
        self.words[REG_TEMPERATURE] = (raw & 0xFFF) << 4

    def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0] & 0x03
        if len(data) >= 3 and self.pointer != REG_TEMPERATURE:
            self.words[self.pointer] = (data[1] << 8) | data[2]

    def read_bytes(self, n: int) -> bytes:
        word = self.words[self.pointer]
        pair = bytes([(word >> 8) & 0xFF, word & 0xFF])
        return (pair * ((n + 1) // 2))[:n]
