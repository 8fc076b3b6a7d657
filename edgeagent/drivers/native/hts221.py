"""HTS221, natively: the work of drivers/hts221.c."""

from __future__ import annotations

from edgeagent.drivers.native.base import NativeDriver

AUTO_INCREMENT = 0x80


def _s16(lo: int, hi: int) -> int:
    v = lo | (hi << 8)
    return v - 65536 if v & 0x8000 else v


class Hts221Native(NativeDriver):
    name = "hts221"
    channels = (("temperature", "C"), ("humidity", "%RH"))

    def init(self) -> None:
        if self.read_reg(0x0F) != 0xBC:
            raise OSError(5, "HTS221 WHO_AM_I mismatch")
        c = self.read_regs(0x30 | AUTO_INCREMENT, 16)
        self.h0, self.h1 = c[0] / 2, c[1] / 2
        self.t0 = (c[2] | ((c[5] & 0x03) << 8)) / 8
        self.t1 = (c[3] | ((c[5] & 0x0C) << 6)) / 8
        self.h0_out, self.h1_out = _s16(c[6], c[7]), _s16(c[10], c[11])
        self.t0_out, self.t1_out = _s16(c[12], c[13]), _s16(c[14], c[15])
        self.write_reg(0x20, 0x84)

    def read(self) -> dict[str, float]:
        self.write_reg(0x21, 0x01)
        for _ in range(101):
            if self.read_reg(0x27) & 0x03 == 0x03:
                break
            self.sleep(0.001)
        else:
            raise OSError(110, "HTS221 conversion timed out")
        d = self.read_regs(0x28 | AUTO_INCREMENT, 4)
        h_out, t_out = _s16(d[0], d[1]), _s16(d[2], d[3])
        t = self.t0 + (t_out - self.t0_out) * (self.t1 - self.t0) / (self.t1_out - self.t0_out)
        h = self.h0 + (h_out - self.h0_out) * (self.h1 - self.h0) / (self.h1_out - self.h0_out)
        return {"temperature": t, "humidity": min(100.0, max(0.0, h))}
