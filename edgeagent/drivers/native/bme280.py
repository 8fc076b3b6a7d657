"""BME280, natively: the work of drivers/bme280.c, with the datasheet's integer compensation (4.2.3)."""

from __future__ import annotations

import struct

from edgeagent.drivers.native.base import NativeDriver


def _tdiv(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


class Bme280Native(NativeDriver):
    name = "bme280"
    channels = (("temperature", "C"), ("pressure", "hPa"), ("humidity", "%RH"))

    def init(self) -> None:
        if self.read_reg(0xD0) != 0x60:
            raise OSError(5, "BME280 chip id mismatch")
        self.write_reg(0xE0, 0xB6)
        self.sleep(0.002)
        for _ in range(10):
            if not self.read_reg(0xF3) & 0x01:
                break
            self.sleep(0.001)
        else:
            raise OSError(110, "BME280 NVM copy timed out")
        c = self.read_regs(0x88, 26)
        h = self.read_regs(0xE1, 7)
        (
            self.T1,
            self.T2,
            self.T3,
            self.P1,
            self.P2,
            self.P3,
            self.P4,
            self.P5,
            self.P6,
            self.P7,
            self.P8,
            self.P9,
        ) = struct.unpack("<HhhHhhhhhhhh", c[:24])
        self.H1 = c[25]
        self.H2 = struct.unpack("<h", h[0:2])[0]
        self.H3 = h[2]
        self.H4 = (struct.unpack("b", h[3:4])[0] * 16) | (h[4] & 0x0F)
        self.H5 = (struct.unpack("b", h[5:6])[0] * 16) | (h[4] >> 4)
        self.H6 = struct.unpack("b", h[6:7])[0]
        self.write_reg(0xF2, 0x01)

    def read(self) -> dict[str, float]:
        self.write_reg(0xF4, (1 << 5) | (1 << 2) | 1)
        self.sleep(0.0093)  # t_measure,max at x1/x1/x1
        for _ in range(51):
            if not self.read_reg(0xF3) & 0x08:
                break
            self.sleep(0.001)
        else:
            raise OSError(110, "BME280 measurement timed out")
        d = self.read_regs(0xF7, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        t = self._t(adc_t)
        return {
            "temperature": t / 100.0,
            "pressure": self._p(adc_p) / 256.0 / 100.0,
            "humidity": self._h(adc_h) / 1024.0,
        }

    def _t(self, adc_t: int) -> int:
        var1 = (((adc_t >> 3) - (self.T1 << 1)) * self.T2) >> 11
        var2 = (((((adc_t >> 4) - self.T1) * ((adc_t >> 4) - self.T1)) >> 12) * self.T3) >> 14
        self.t_fine = var1 + var2
        return (self.t_fine * 5 + 128) >> 8

    def _p(self, adc_p: int) -> int:
        var1 = self.t_fine - 128000
        var2 = var1 * var1 * self.P6
        var2 = var2 + ((var1 * self.P5) << 17)
        var2 = var2 + (self.P4 << 35)
        var1 = ((var1 * var1 * self.P3) >> 8) + ((var1 * self.P2) << 12)
        var1 = (((1 << 47) + var1) * self.P1) >> 33
        if var1 == 0:
            return 0
        p = 1048576 - adc_p
        p = _tdiv(((p << 31) - var2) * 3125, var1)
        var1 = (self.P9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (self.P8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (self.P7 << 4)

    def _h(self, adc_h: int) -> int:
        v = self.t_fine - 76800
        v = ((((adc_h << 14) - (self.H4 << 20) - (self.H5 * v)) + 16384) >> 15) * (
            ((((((v * self.H6) >> 10) * (((v * self.H3) >> 11) + 32768)) >> 10) + 2097152) * self.H2 + 8192)
            >> 14
        )
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self.H1) >> 4)
        v = min(max(v, 0), 419430400)
        return v >> 12
