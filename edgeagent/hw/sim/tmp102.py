"""TMP102 temperature sensor (TI SBOS397) at 0x48-0x4b: four 16-bit big-endian registers behind a pointer.

Temperature: 12-bit two's complement, left-aligned, 0.0625 degC per LSB. Reading more than two bytes repeats
the pointed register (no auto-increment), as the part does.

Timing, on the part's clock (edgeagent.hw.sim.clock): a conversion takes ``CONVERSION_S`` (26 ms typical,
the datasheet's electrical characteristics). After power-on the temperature register reads 0 degC until the
first conversion ends, as the datasheet says; in continuous mode it then follows ``temperature`` (this model
does not hold each value for the conversion period). In shutdown mode (configuration bit SD) conversions
stop and the register keeps its last value; writing OS = 1 starts a one-shot conversion, during which OS
reads 0 and the register still holds the previous value; OS reads 1 again once the conversion is done.
Entering shutdown lets a conversion under way finish; leaving it starts over with a first conversion.
"""

from __future__ import annotations

import time

from edgeagent.hw.sim.clock import Clock, Conversion
from edgeagent.hw.sim.i2c_device import RegisterDevice

REG_TEMPERATURE = 0x00
REG_CONFIG = 0x01
REG_TLOW = 0x02
REG_THIGH = 0x03
CONFIG_POWER_ON = 0x60A0
CONFIG_OS = 0x8000
CONFIG_SD = 0x0100
CONVERSION_S = 0.026


class Tmp102(RegisterDevice):
    address = 0x48
    addresses = (0x48, 0x49, 0x4A, 0x4B)  # ADD0 strapped to GND, V+, SDA, SCL
    name = "tmp102"

    def __init__(
        self, address: int | None = None, temperature: float = 23.5, *, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(address)
        self.words = {REG_TEMPERATURE: 0, REG_CONFIG: CONFIG_POWER_ON, REG_TLOW: 0x4B00, REG_THIGH: 0x5000}
        self.temperature = temperature
        self.conversion = Conversion(clock)  # the first one (continuous mode) or a one-shot
        self.conversion.start(CONVERSION_S)  # power-on
        self.conversions = 0

    @property
    def temperature(self) -> float:
        """The temperature the part senses (what its next conversion will report)."""
        raw = self._raw >> 4
        return (raw - 4096 if raw & 0x800 else raw) * 0.0625

    @temperature.setter
    def temperature(self, celsius: float) -> None:
        raw = max(-2048, min(2047, round(celsius / 0.0625)))
        self._raw = (raw & 0xFFF) << 4

    @property
    def shutdown(self) -> bool:
        return bool(self.words[REG_CONFIG] & CONFIG_SD)

    def _settle(self) -> None:
        """Brings the temperature register up to the part's clock."""
        if self.conversion.done():
            self.conversions += 1
            self.words[REG_TEMPERATURE] = self._raw
            if self.shutdown:
                self.words[REG_CONFIG] |= CONFIG_OS  # one-shot done
        elif not self.shutdown and not self.conversion.busy:
            self.words[REG_TEMPERATURE] = self._raw  # continuous conversions follow the temperature

    def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        self._settle()
        self.pointer = data[0] & 0x03
        if len(data) >= 3 and self.pointer != REG_TEMPERATURE:
            word = (data[1] << 8) | data[2]
            if self.pointer != REG_CONFIG:
                self.words[self.pointer] = word
                return
            was_shutdown = self.shutdown
            self.words[REG_CONFIG] = (word & ~CONFIG_OS) | (self.words[REG_CONFIG] & CONFIG_OS)
            if not self.shutdown:
                self.words[REG_CONFIG] &= ~CONFIG_OS  # OS reads 0 in continuous mode
                if was_shutdown:
                    self.conversion.start(CONVERSION_S)  # conversions start over
            elif word & CONFIG_OS and not self.conversion.busy:
                self.words[REG_CONFIG] &= ~CONFIG_OS  # reads 0 while converting
                self.conversion.start(CONVERSION_S)

    def read_bytes(self, n: int) -> bytes:
        self._settle()
        word = self.words[self.pointer]
        pair = bytes([(word >> 8) & 0xFF, word & 0xFF])
        return (pair * ((n + 1) // 2))[:n]
