"""BME280 humidity/pressure/temperature sensor (Bosch BST-BME280-DS002) at 0x76 (or 0x77).

The calibration image is a real part's (the datasheet's worked example for T and P, a typical humidity set),
and the ADC values for ``temperature``/``pressure``/``humidity`` are found by inverting the datasheet's
floating-point compensation (section 8.1) by bisection, so any driver applying the datasheet's integer
compensation (section 4.2.3) reads back the set values to within the part's resolution.
Timing (datasheet 9.1, 3.3.3): a forced-mode write to ctrl_meas starts a conversion lasting t_measure,max for
the oversampling settings (1.25 ms + 2.3 ms per temperature sample + 2.3 ms + 0.575 ms per pressure and per
humidity sample: 9.3 ms at x1/x1/x1) on the part's clock (edgeagent.hw.sim.clock). Until it ends, status bit 3
(measuring) reads 1, ctrl_meas still reads forced mode, and the data registers hold the previous results: the
reset values 0x80000 (pressure, temperature) and 0x8000 (humidity) after power-on or a soft reset.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from edgeagent.hw.sim.clock import Clock, Conversion
from edgeagent.hw.sim.i2c_device import RegisterDevice

CHIP_ID = 0xD0
RESET = 0xE0
CTRL_HUM = 0xF2
STATUS = 0xF3
CTRL_MEAS = 0xF4
CONFIG = 0xF5
PRESS_MSB = 0xF7
STATUS_MEASURING = 0x08
DATA_RESET = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # press, temp, hum after reset
OVERSAMPLING = (0, 1, 2, 4, 8, 16, 16, 16)  # osrs_x field -> samples (0: measurement skipped)

CALIBRATION = {
    "T1": 27504,
    "T2": 26435,
    "T3": -1000,
    "P1": 36477,
    "P2": -10685,
    "P3": 3024,
    "P4": 2855,
    "P5": 140,
    "P6": -7,
    "P7": 15500,
    "P8": -14600,
    "P9": 6000,
    "H1": 75,
    "H2": 362,
    "H3": 0,
    "H4": 313,
    "H5": 50,
    "H6": 30,
}


def calibration_image(c: dict[str, int]) -> tuple[bytes, bytes]:
    """Registers 0x88-0xa1 and 0xe1-0xe7 for a calibration set (the layout of datasheet table 16)."""
    lo = struct.pack(
        "<HhhHhhhhhhhh",
        c["T1"],
        c["T2"],
        c["T3"],
        c["P1"],
        c["P2"],
        c["P3"],
        c["P4"],
        c["P5"],
        c["P6"],
        c["P7"],
        c["P8"],
        c["P9"],
    ) + bytes([0, c["H1"]])
    h4, h5 = c["H4"] & 0xFFF, c["H5"] & 0xFFF
    hi = struct.pack("<hB", c["H2"], c["H3"]) + bytes(
        [h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4, c["H6"] & 0xFF]
    )
    return lo, hi


def t_fine_float(adc_t: int, c: dict[str, int]) -> float:
    var1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    d = adc_t / 131072.0 - c["T1"] / 8192.0
    return var1 + d * d * c["T3"]


def pressure_float(adc_p: int, t_fine: float, c: dict[str, int]) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c["P6"] / 32768.0
    var2 = var2 + var1 * c["P5"] * 2.0
    var2 = var2 / 4.0 + c["P4"] * 65536.0
    var1 = (c["P3"] * var1 * var1 / 524288.0 + c["P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c["P1"]
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c["P9"] * p * p / 2147483648.0
    var2 = p * c["P8"] / 32768.0
    return p + (var1 + var2 + c["P7"]) / 16.0


def humidity_float(adc_h: int, t_fine: float, c: dict[str, int]) -> float:
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h))
    )
    return h * (1.0 - c["H1"] * h / 524288.0)


def _bisect(f: Callable[[int], float], target: float, lo: int, hi: int, increasing: bool) -> int:
    while lo < hi:
        mid = (lo + hi) // 2
        v = f(mid)
        if (v < target) if increasing else (v > target):
            lo = mid + 1
        else:
            hi = mid
    return lo


class Bme280(RegisterDevice):
    address = 0x76
    addresses = (0x76, 0x77)  # SDO to GND or VDDIO
    name = "bme280"
    read_only = frozenset({CHIP_ID, STATUS, *range(0x88, 0xA2), *range(0xE1, 0xE8), *range(0xF7, 0xFF)})

    def __init__(
        self,
        address: int | None = None,
        temperature: float = 21.5,
        pressure_hpa: float = 1013.25,
        humidity: float = 40.0,
        calibration: dict[str, int] | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(address)
        self.calibration = dict(calibration or CALIBRATION)
        lo, hi = calibration_image(self.calibration)
        self.regs[0x88 : 0x88 + len(lo)] = lo
        self.regs[0xE1 : 0xE1 + len(hi)] = hi
        self.regs[CHIP_ID] = 0x60
        self.regs[PRESS_MSB : PRESS_MSB + 8] = DATA_RESET
        self.conversion = Conversion(clock)
        self._result = DATA_RESET
        self.temperature = temperature
        self.pressure_hpa = pressure_hpa
        self.humidity = humidity
        self.conversions = 0
        self.resets = 0

    def on_write(self, reg: int, value: int) -> None:
        if reg == RESET and value == 0xB6:
            self.resets += 1
            self.conversion.cancel()
            for r in (CTRL_HUM, CTRL_MEAS, CONFIG):
                self.regs[r] = 0
            self.regs[PRESS_MSB : PRESS_MSB + 8] = DATA_RESET
        elif reg == CTRL_MEAS and value & 0x03 in (1, 2):  # forced mode
            self._settle()
            self.regs[CTRL_MEAS] = value  # _settle put the previous conversion's mode back to sleep
            self._result = self._convert()
            self.conversion.start(self.measure_time())

    def measure_time(self) -> float:
        """t_measure,max (datasheet 9.1) in seconds for the oversampling in ctrl_meas and ctrl_hum."""
        t = OVERSAMPLING[self.regs[CTRL_MEAS] >> 5]
        p = OVERSAMPLING[(self.regs[CTRL_MEAS] >> 2) & 7]
        h = OVERSAMPLING[self.regs[CTRL_HUM] & 7]
        ms = 1.25 + 2.3 * t + (2.3 * p + 0.575 if p else 0.0) + (2.3 * h + 0.575 if h else 0.0)
        return ms / 1000.0

    def _settle(self) -> None:
        """A forced conversion whose time is up: results into the data registers, back to sleep mode."""
        if self.conversion.done():
            self.regs[PRESS_MSB : PRESS_MSB + 8] = self._result
            self.regs[CTRL_MEAS] &= ~0x03
            self.conversions += 1

    def read_register(self, reg: int) -> int:
        self._settle()
        if reg == STATUS:
            return (self.regs[STATUS] & ~STATUS_MEASURING) | (STATUS_MEASURING if self.conversion.busy else 0)
        return self.regs[reg]

    def raw_values(self) -> tuple[int, int, int]:
        """(adc_T, adc_P, adc_H) for the current physical values."""
        c = self.calibration
        adc_t = _bisect(lambda a: t_fine_float(a, c) / 5120.0, self.temperature, 0, (1 << 20) - 1, True)
        t_fine = t_fine_float(adc_t, c)
        adc_p = _bisect(
            lambda a: pressure_float(a, t_fine, c), self.pressure_hpa * 100.0, 0, (1 << 20) - 1, False
        )
        adc_h = _bisect(lambda a: humidity_float(a, t_fine, c), self.humidity, 0, (1 << 16) - 1, True)
        return adc_t, adc_p, adc_h

    def _convert(self) -> bytes:
        """The data registers' contents at the end of a conversion started now."""
        adc_t, adc_p, adc_h = self.raw_values()
        osrs_t, osrs_p, osrs_h = (
            self.regs[CTRL_MEAS] >> 5,
            (self.regs[CTRL_MEAS] >> 2) & 7,
            self.regs[CTRL_HUM] & 7,
        )
        data = bytearray(8)
        data[0:3] = _adc20(adc_p) if osrs_p else b"\x80\x00\x00"  # skipped measurement: 0x80000
        data[3:6] = _adc20(adc_t) if osrs_t else b"\x80\x00\x00"
        data[6:8] = adc_h.to_bytes(2, "big") if osrs_h else b"\x80\x00"
        return bytes(data)


def _adc20(v: int) -> bytes:
    return bytes([(v >> 12) & 0xFF, (v >> 4) & 0xFF, (v & 0x0F) << 4])
