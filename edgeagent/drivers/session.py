"""Opening a driver end to end: resolve module + policy, pick the device, open the bus, start the guest.

Shared by ``edgeagent run-driver`` and the benchmark, so both exercise the same path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.config import AgentConfig
from edgeagent.drivers import loader
from edgeagent.drivers.runner import I2cDevice, I2cDriver, parse_device
from edgeagent.errors import DriverError, PolicyError
from edgeagent.hw.i2c import I2cBus
from edgeagent.hw.sim.clock import Clock, SimClock, new_part
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.wasm.cache import ModuleCache, is_component_file
from edgeagent.wasm.engine import Limits, Runtime

if TYPE_CHECKING:
    from edgeagent.drivers.components.i2c_driver import ComponentI2cDriver
    from edgeagent.drivers.usb_session import UsbSession


@dataclasses.dataclass
class DriverSession:
    driver: I2cDriver | ComponentI2cDriver
    bus: I2cBus
    device: I2cDevice
    sim: bool
    source: loader.DriverSource

    def close(self) -> None:
        self.driver.close()
        self.bus.close()


def choose_device(source: loader.DriverSource, device: str | None) -> I2cDevice:
    policy = source.policy
    if not policy.i2c:
        raise PolicyError(f"driver {source.name}: policy {policy.source} grants no I2C bus")
    first = policy.i2c[0]
    if device is not None:
        return parse_device(device, default_bus=first.bus)
    if source.info is not None and source.info.default_address in first.addresses:
        return I2cDevice(first.bus, source.info.default_address)
    return I2cDevice(first.bus, min(first.addresses))


def sim_bus_for(source: loader.DriverSource, device: I2cDevice, clock: Clock | None = None) -> SimI2cBus:
    """A simulated bus with the driver's part (granted or not: the policy decides).

    The part sits at the chosen address when it can (a model's straps allow it), else at its own, so a driver
    pointed at the wrong address gets no acknowledge, as on hardware. A driver without a simulated part is
    refused in one line instead of failing later with a misleading NACK. ``clock``: the part's clock, for
    the parts that take one (edgeagent.hw.sim.clock).
    """
    if source.info is None or source.info.sim_model is None:
        where = "its bundle names no model" if source.info else "a module outside a bundle has none"
        raise DriverError(
            f"driver {source.name} has no simulated part ({where}); add one (a model.toml in its bundle, see "
            "docs/simulate.md) or run it with --hardware"
        )
    bus = SimI2cBus(name=f"sim:/dev/i2c-{device.bus}")
    part = new_part(source.info.sim_model, device.address, clock)
    straps = getattr(part, "addresses", None)  # where the part's address pins let it be
    if straps and device.address not in straps:
        part = new_part(source.info.sim_model, type(part).address, clock)
    bus.attach(part)
    return bus


def open_session(
    driver: str,
    config: AgentConfig,
    *,
    policy_file: Path | None = None,
    device: str | None = None,
    sim: bool,
    runtime: Runtime | None = None,
    cache: ModuleCache | None = None,
    sleep: Callable[[float], None] = time.sleep,
    bus: I2cBus | None = None,
    source: loader.DriverSource | None = None,
) -> DriverSession:
    source = source or loader.resolve(driver, config, policy_file)
    if source.info is not None and source.info.bus != "i2c":
        raise DriverError(f"driver {source.name} is a {source.info.bus} driver; open it with open_driver()")
    dev = choose_device(source, device)
    runtime = runtime or Runtime.default()
    cache = cache or loader.cache_for(config)
    # A WASI 0.2 component (edgeagent:driver/i2c-driver) or a core module (the C ABI): the same session.
    component = is_component_file(source.path)
    if component:
        from edgeagent.wasm.component import ComponentCache  # wasmtime's component bindings: only for these

        loaded = ComponentCache(cache).load_file(runtime, source.path, name=f"driver {source.name}")
    else:
        module = loader.load_module(source, runtime, cache)
    if bus is None:
        if sim:
            # The part's clock sees the driver's waits pass even where ``sleep`` skips them (tests, bench).
            sim_clock = SimClock(sleep)
            bus = sim_bus_for(source, dev, sim_clock.now)
            sleep = sim_clock.sleep
        else:
            from edgeagent.hw.smbus2_bus import Smbus2Bus

            bus = Smbus2Bus(dev.bus)
    mem = source.policy.memory_limit_mib
    limits = Limits(memory_bytes=mem << 20) if mem else None
    drv: I2cDriver | ComponentI2cDriver
    try:
        if component:
            from edgeagent.drivers.components.i2c_driver import ComponentI2cDriver

            drv = ComponentI2cDriver(
                source.name,
                loaded,
                runtime=runtime,
                bus=bus,
                address=dev.address,
                granted=source.policy.i2c_addresses(dev.bus),
                limits=limits,
                sleep=sleep,
                policy_source=source.policy.source,
                kind=source.info.kind if source.info is not None else None,
            )
        else:
            drv = I2cDriver(
                source.name,
                module,
                runtime=runtime,
                bus=bus,
                address=dev.address,
                granted=source.policy.i2c_addresses(dev.bus),
                limits=limits,
                sleep=sleep,
                policy_source=source.policy.source,
            )
    except BaseException:
        bus.close()
        raise
    return DriverSession(drv, bus, dev, sim, source)


def open_driver(
    driver: str,
    config: AgentConfig,
    *,
    policy_file: Path | None = None,
    device: str | None = None,
    sim: bool | None = None,
    size: int | None = None,
) -> DriverSession | UsbSession:
    """``edgeagent run-driver``: an I2C or a USB driver session, whichever the driver is.

    ``sim=None``: the simulator when the machine has no I2C bus (I2C drivers) or no device the policy grants
    (USB drivers). ``size`` (USB only): bytes per ping or per block check.
    """
    source = loader.resolve(driver, config, policy_file)
    if loader.is_usb(source):
        from edgeagent.drivers.usb_session import open_usb_session  # hw.usb, components: only for USB

        return open_usb_session(source, config, device=device, sim=sim, size=size)
    if size is not None:
        raise DriverError(f"driver {source.name}: --size applies to USB drivers only")
    if sim is None:
        from edgeagent.hw.smbus2_bus import present_buses

        sim = not present_buses()
    return open_session(driver, config, device=device, sim=sim, source=source)
