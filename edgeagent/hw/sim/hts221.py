"""HTS221 humidity/temperature sensor (ST DocID026921) at 0x5f, as on the Raspberry Pi Sense HAT.

Outputs are the raw 16-bit counts a real part would produce for ``temperature``/``humidity``, derived by
inverting the datasheet's two-point calibration stored in 0x30-0x3f (values typical of a factory-trimmed
part). A multi-byte access auto-increments only when the sub-address has its MSB set, as on the part.

Timing: setting ONE_SHOT (CTRL_REG2 bit 0) while powered starts a conversion on the part's clock
(edgeagent.hw.sim.clock). Until it ends ONE_SHOT reads 1, STATUS_REG's H_DA/T_DA stay as they were (0 once
the previous outputs were read) and the output registers hold the previous conversion's counts (0 after
power-on). The datasheet gives no one-shot conversion time; ``CONVERSION_S`` is this model's assumption for
the reset averaging (AV_CONF 0x1B), long enough that a driver not waiting for H_DA/T_DA reads stale data.
"""

from __future__ import annotations

import time

from edgeagent.hw.sim.clock import Clock, Conversion
from edgeagent.hw.sim.i2c_device import RegisterDevice

WHO_AM_I = 0x0F
CTRL_REG1 = 0x20
CTRL_REG2 = 0x21
STATUS_REG = 0x27
HUMIDITY_OUT_L = 0x28
TEMP_OUT_L = 0x2A
CALIB = 0x30
AUTO_INCREMENT = 0x80
CONVERSION_S = 0.004

# Calibration (registers 0x30-0x3f): H0 = 20 %RH at -6000 counts, H1 = 75 %RH at 4500; T0 = 19.25 C at
# -20 counts, T1 = 37.5 C at 700 counts.
H0_RH_X2, H1_RH_X2 = 40, 150
T0_DEGC_X8, T1_DEGC_X8 = 154, 300
H0_T0_OUT, H1_T0_OUT = -6000, 4500
T0_OUT, T1_OUT = -20, 700


class Hts221(RegisterDevice):
    address = 0x5F
    addresses = (0x5F,)  # fixed
    name = "hts221"
    read_only = frozenset({WHO_AM_I, STATUS_REG, *range(0x28, 0x2C), *range(0x30, 0x40)})

    def __init__(
        self,
        address: int | None = None,
        temperature: float = 22.0,
        humidity: float = 45.0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(address)
        self.conversion = Conversion(clock)
        self._result = (0, 0)
        self.regs[WHO_AM_I] = 0xBC
        self.regs[0x10] = 0x1B  # AV_CONF reset value
        calib = [
            H0_RH_X2,
            H1_RH_X2,
            T0_DEGC_X8 & 0xFF,
            T1_DEGC_X8 & 0xFF,
            0,
            ((T1_DEGC_X8 >> 8) << 2) | (T0_DEGC_X8 >> 8),
        ]
        self.regs[CALIB : CALIB + 6] = bytes(calib)
        for reg, value in ((0x36, H0_T0_OUT), (0x3A, H1_T0_OUT), (0x3C, T0_OUT), (0x3E, T1_OUT)):
            self.set_u16_le(reg, value & 0xFFFF)
        self.temperature = temperature
        self.humidity = humidity
        self.conversions = 0

    @property
    def powered(self) -> bool:
        return bool(self.regs[CTRL_REG1] & 0x80)

    def write_bytes(self, data: bytes) -> None:
        if data:
            self._auto = bool(data[0] & AUTO_INCREMENT)
            data = bytes([data[0] & 0x7F]) + data[1:]
        super().write_bytes(data)

    def read_bytes(self, n: int) -> bytes:
        if getattr(self, "_auto", False) or n == 1:
            return super().read_bytes(n)
        return bytes([self.read_register(self.pointer)]) * n

    def on_write(self, reg: int, value: int) -> None:
        if reg == CTRL_REG2 and value & 0x01:
            if not self.powered:
                self.regs[CTRL_REG2] &= ~0x01  # powered down: no conversion
            elif not self.conversion.busy:
                self._settle()
                self.regs[CTRL_REG2] |= 0x01
                self._result = self._convert()
                self.conversion.start(CONVERSION_S)

    def _settle(self) -> None:
        """A conversion whose time is up: counts into the outputs, data-available bits, ONE_SHOT cleared."""
        if self.conversion.done():
            h_out, t_out = self._result
            self.set_u16_le(HUMIDITY_OUT_L, h_out)
            self.set_u16_le(TEMP_OUT_L, t_out)
            self.regs[STATUS_REG] = 0x03
            self.regs[CTRL_REG2] &= ~0x01  # ONE_SHOT self-clears when the conversion is done
            self.conversions += 1

    def _convert(self) -> tuple[int, int]:
        """(H_OUT, T_OUT) as unsigned 16-bit words for the current temperature and humidity."""
        t0, t1 = T0_DEGC_X8 / 8, T1_DEGC_X8 / 8
        h0, h1 = H0_RH_X2 / 2, H1_RH_X2 / 2
        t_out = round(T0_OUT + (self.temperature - t0) * (T1_OUT - T0_OUT) / (t1 - t0))
        h_out = round(H0_T0_OUT + (self.humidity - h0) * (H1_T0_OUT - H0_T0_OUT) / (h1 - h0))
        return max(-32768, min(32767, h_out)) & 0xFFFF, max(-32768, min(32767, t_out)) & 0xFFFF

    def read_register(self, reg: int) -> int:
        self._settle()
        value = self.regs[reg]
        if reg in (0x29, 0x2B):  # reading the MSB of an output clears its data-available bit
            self.regs[STATUS_REG] &= ~(0x02 if reg == 0x29 else 0x01)
        return value
