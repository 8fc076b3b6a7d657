"""The drivers bundled with edgeagent: what they are, what they import, where their module and policy live.

Bundled modules are looked up in ``config.drivers.modules_dir`` (an installed system), then in the source
tree's ``drivers/build`` (a checkout after ``make``). Bundled policies:
``<policies_dir>/drivers/<name>.toml``,
then the source tree's ``policies/drivers``. Other modules (USB drivers) add themselves with ``register``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.config import AgentConfig
from edgeagent.errors import DriverError

if TYPE_CHECKING:
    from edgeagent.hw.sim.clock import Clock

SOURCE_TREE = Path(__file__).resolve().parents[2]
BUILD_DIR = SOURCE_TREE / "drivers" / "build"
POLICY_DIR = SOURCE_TREE / "policies" / "drivers"

I2C_INTERFACES = ("wasi:i2c/i2c", "wasi:i2c/delay", "edgeagent:driver/log")


@dataclasses.dataclass(frozen=True)
class DriverInfo:
    name: str
    kind: str  # "sensor" (read) or "output" (write)
    bus: str  # "i2c" or "usb"
    description: str
    interfaces: tuple[str, ...]
    default_address: int | None = None
    # i2c: address -> a simulated part (edgeagent.hw.sim) answering like the real one; the bundled ones take a
    # ``clock`` too (see edgeagent.hw.sim.clock.new_part).
    sim_model: Callable[[int], Any] | None = None
    module_file: str = ""

    @property
    def wasm_name(self) -> str:
        return self.module_file or f"{self.name}.wasm"


def _tmp102(address: int, *, clock: Clock = time.monotonic) -> Any:
    from edgeagent.hw.sim.tmp102 import Tmp102

    return Tmp102(address, clock=clock)


def _hts221(address: int, *, clock: Clock = time.monotonic) -> Any:
    from edgeagent.hw.sim.hts221 import Hts221

    return Hts221(address, clock=clock)


def _bme280(address: int, *, clock: Clock = time.monotonic) -> Any:
    from edgeagent.hw.sim.bme280 import Bme280

    return Bme280(address, clock=clock)


def _lcd(address: int, *, clock: Clock = time.monotonic) -> Any:
    from edgeagent.hw.sim.pcf8574_lcd import Pcf8574Lcd

    return Pcf8574Lcd(address, clock=clock)


REGISTRY: dict[str, DriverInfo] = {}


def register(info: DriverInfo) -> None:
    REGISTRY[info.name] = info


for _info in (
    DriverInfo("tmp102", "sensor", "i2c", "TI TMP102 temperature sensor", I2C_INTERFACES, 0x48, _tmp102),
    DriverInfo(
        "hts221",
        "sensor",
        "i2c",
        "ST HTS221 humidity and temperature sensor (Sense HAT)",
        I2C_INTERFACES,
        0x5F,
        _hts221,
    ),
    DriverInfo(
        "bme280",
        "sensor",
        "i2c",
        "Bosch BME280 temperature, pressure and humidity sensor",
        I2C_INTERFACES,
        0x76,
        _bme280,
    ),
    DriverInfo(
        "hd44780_pcf8574",
        "output",
        "i2c",
        "HD44780 16x2 character LCD on a PCF8574 backpack",
        I2C_INTERFACES,
        0x27,
        _lcd,
    ),
):
    register(_info)


def get(name: str) -> DriverInfo:
    _load_extensions()
    try:
        return REGISTRY[name]
    except KeyError:
        raise DriverError(
            f"unknown driver {name!r} (bundled: {', '.join(sorted(REGISTRY))}; "
            "or give a path to a .wasm file)"
        ) from None


def all_drivers() -> list[DriverInfo]:
    _load_extensions()
    return [REGISTRY[n] for n in sorted(REGISTRY)]


def module_path(info: DriverInfo, config: AgentConfig) -> Path:
    for d in (config.drivers.modules_dir, BUILD_DIR):
        p = d / info.wasm_name
        if p.is_file():
            return p
    raise DriverError(
        f"driver {info.name}: module {info.wasm_name} not found in {config.drivers.modules_dir} "
        f"or {BUILD_DIR} (run `make -C drivers`)"
    )


def policy_path(info: DriverInfo, config: AgentConfig) -> Path | None:
    for d in (config.policies_dir / "drivers", POLICY_DIR):
        p = d / f"{info.name}.toml"
        if p.is_file():
            return p
    return None


_extensions_loaded = False


def _load_extensions() -> None:
    """Registers drivers defined elsewhere (the USB drivers' module), if present."""
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True
    import importlib
    import importlib.util

    for mod in ("edgeagent.drivers.registry_usb", "edgeagent.drivers.registry_components"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
