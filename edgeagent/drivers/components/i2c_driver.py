"""A component I2C driver: a component exporting ``edgeagent:driver/i2c-driver@0.1.0``
(drivers/wit/driver.wit, world ``i2c-sensor``), driven exactly like a core-module ``I2cDriver`` (same
attributes and methods), so ``run-driver``, the agent's driver instances and the benchmark take either.

The host hands the guest an owned ``wasi:i2c/i2c`` resource for the policy's bus (``init``'s ``bus``) and an
owned ``wasi:i2c/delay``; the guest's errors come back as the WIT ``error-code`` and are reported like the
core driver's: a policy denial as AccessDenied, a bus fault as HardwareError, a trap or a limit as
DriverError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wasmtime.component import Component, Variant

from edgeagent.drivers.components.i2c import ComponentDelayHost, ComponentI2cHost, error_code
from edgeagent.drivers.hosts.i2c import I2cGrant
from edgeagent.drivers.runner import Reading
from edgeagent.errors import AccessDenied, DriverError, HardwareError
from edgeagent.hw.i2c import I2cBus
from edgeagent.wasm.component import ComponentGuest
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.hosts.component_log import ComponentLogHost

DRIVER_INTERFACE = "edgeagent:driver/i2c-driver@0.1.0"
REQUIRED_EXPORTS = ("init", "describe", "read", "write")


class ComponentI2cDriver:
    """One component I2C driver bound to one device (``bus``, ``address``) within ``granted``."""

    def __init__(
        self,
        name: str,
        component: Component,
        *,
        runtime: Runtime,
        bus: I2cBus,
        address: int,
        granted: frozenset[int],
        limits: Limits | None = None,
        sleep: Callable[[float], None] = time.sleep,
        policy_source: str = "",
        kind: str | None = None,
    ) -> None:
        self.name = name
        self.bus = bus
        self.address = address
        self.policy_source = policy_source
        self.i2c = ComponentI2cHost()
        self.delay = ComponentDelayHost(sleep)
        self.log = ComponentLogHost(name, keep=20)
        self.guest = ComponentGuest(
            runtime,
            component,
            name=name,
            hosts=[self.i2c, self.delay, self.log],
            limits=limits,
            exports=DRIVER_INTERFACE,
            required_exports=REQUIRED_EXPORTS,
        )
        try:
            self.channels: list[tuple[str, str]] = [
                (str(c.name), str(c.unit)) for c in self.guest.call("describe") or []
            ]
            # The world has both read and write; a sensor describes channels, an output device none.
            self.kind = kind or ("sensor" if self.channels else "output")
            self._check(
                "init",
                self.guest.call(
                    "init", self.i2c.grant(I2cGrant(bus, granted)), self.delay.new_delay(), address
                ),
            )
            self._n_channels = len(self.channels)
        except BaseException:
            self.guest.close()
            raise

    def _check(self, op: str, result: Any) -> Any:
        if not isinstance(result, Variant):
            return result
        code = error_code(result)
        if self.i2c.denials and code.value == "other":
            denied = self.i2c.denials[-1]
            self.i2c.denials.clear()
            raise AccessDenied(
                f"driver {self.name}: {op}: I2C address {denied.address:#04x} on {self.bus.name} is not "
                f"granted by its policy{f' ({self.policy_source})' if self.policy_source else ''}"
            )
        last = self.i2c.last_error
        detail = f" ({last.detail})" if last is not None and last.detail else ""
        where = f"I2C address {self.address:#04x} on {self.bus.name}"
        raise HardwareError(f"driver {self.name}: {op} failed: {code.value}{detail} at {where}")

    def read_values(self) -> list[float]:
        """The hot path of a read (no dict, no clock): what the benchmark times."""
        if self.kind != "sensor":
            raise DriverError(f"driver {self.name} is an output driver: it has no readings")
        values = self.guest.call("read")
        if values.__class__ is not list:
            self.i2c.last_error = None
            values = self._check("read", values)
        if len(values) > self._n_channels:
            raise DriverError(
                f"driver {self.name}: read returned {len(values)} values for {self._n_channels} channels"
            )
        return values

    def read(self) -> Reading:
        values = self.read_values()
        names = [c[0] for c in self.channels]
        return Reading(
            self.name,
            time.time(),
            dict(zip(names, values, strict=False)),
            {c[0]: c[1] for c in self.channels[: len(values)]},
        )

    def write(self, text: str) -> None:
        if self.kind != "output":
            raise DriverError(f"driver {self.name} is a sensor driver: it takes no output")
        self._check("write", self.guest.call("write", text[:4096]))

    def close(self) -> None:
        self.guest.close()

    def __enter__(self) -> ComponentI2cDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
