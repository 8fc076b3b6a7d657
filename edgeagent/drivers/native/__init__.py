"""Native Python twins of the bundled I2C drivers: the same register work through smbus2-style calls.

They are the benchmark's baseline (what a driver costs without Wasm) and a cross-check of the C drivers'
arithmetic. Each takes an SMBus-like object: ``smbus2.SMBus`` on real or emulated hardware, or
``edgeagent.drivers.native.simbus.SimSMBus`` over an in-process bus.
"""

from __future__ import annotations

from edgeagent.drivers.native.base import NativeDriver
from edgeagent.drivers.native.bme280 import Bme280Native
from edgeagent.drivers.native.hd44780_pcf8574 import Hd44780Pcf8574Native
from edgeagent.drivers.native.hts221 import Hts221Native
from edgeagent.drivers.native.tmp102 import Tmp102Native

NATIVE_DRIVERS: dict[str, type[NativeDriver]] = {
    "tmp102": Tmp102Native,
    "hts221": Hts221Native,
    "bme280": Bme280Native,
    "hd44780_pcf8574": Hd44780Pcf8574Native,
}

__all__ = [
    "NATIVE_DRIVERS",
    "Bme280Native",
    "Hd44780Pcf8574Native",
    "Hts221Native",
    "NativeDriver",
    "Tmp102Native",
]
