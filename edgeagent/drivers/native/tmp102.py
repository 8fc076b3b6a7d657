"""TMP102, natively: the work of drivers/tmp102.c."""

from __future__ import annotations

from edgeagent.drivers.native.base import NativeDriver


class Tmp102Native(NativeDriver):
    name = "tmp102"
    channels = (("temperature", "C"),)

    def init(self) -> None:
        self.read_regs(0x01, 2)
        self.sleep(0.035)  # the first conversion after power-on (0 degC until it is done)

    def read(self) -> dict[str, float]:
        msb, lsb = self.read_regs(0x00, 2)
        raw = ((msb << 8) | lsb) >> 4
        if raw & 0x800:
            raw -= 4096
        return {"temperature": raw * 0.0625}
