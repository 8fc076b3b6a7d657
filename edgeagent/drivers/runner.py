"""Running a Wasm I2C driver: grant its devices, initialise it, take readings or write output.

The runner owns the mapping from what a guest returns to what a user sees: a negative result from ``init``,
``read`` or ``write`` becomes AccessDenied (a policy denial) or HardwareError (a bus failure), naming the
driver, the operation and the device; a trap or a limit becomes DriverError (from edgeagent.wasm.guest).
ABI 2 adds the driver's own verdicts: EA_ERR_DATA with a message (``ea_fail``) becomes DeviceDataError, and
EA_SKIP from ``read`` a Reading marked ``skipped`` (no values); drivers built for ABI 1 run unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from edgeagent.drivers.hosts.i2c import ERR_ACCESS, DelayHost, I2cGrant, I2cHost, describe_error
from edgeagent.errors import AccessDenied, DeviceDataError, DriverError, HardwareError
from edgeagent.hw.i2c import I2cBus
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.guest import Guest
from edgeagent.wasm.hosts.log import LogHost

ABI_VERSION = 2  # what drivers built against drivers/include/edgeagent_i2c.h now declare
SUPPORTED_ABI_VERSIONS = (1, 2)
ERR_DATA = -32  # EA_ERR_DATA (ABI 2): the message is NUL-terminated at the start of the exchange buffer
SKIP = -33  # EA_SKIP (ABI 2, read only)
MAX_MESSAGE = 256
REQUIRED_EXPORTS = ("memory", "ea_abi_version", "ea_buffer", "init")


@dataclasses.dataclass
class Reading:
    driver: str
    time: float
    values: dict[str, float]
    units: dict[str, str]
    skipped: bool = False  # the driver returned EA_SKIP: no reading this time

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.skipped:
            del d["skipped"]
        return d


class I2cDriver:
    """One Wasm I2C driver bound to one device (``bus``, ``address``) within what ``grant`` allows."""

    def __init__(
        self,
        name: str,
        module: wasmtime.Module,
        *,
        runtime: Runtime,
        bus: I2cBus,
        address: int,
        granted: frozenset[int],
        limits: Limits | None = None,
        sleep: Callable[[float], None] = time.sleep,
        policy_source: str = "",
    ) -> None:
        self.name = name
        self.bus = bus
        self.address = address
        self.policy_source = policy_source
        self.i2c = I2cHost()
        self.delay = DelayHost(sleep)
        self.log = LogHost(name, keep=20)
        bus_handle = self.i2c.grant(I2cGrant(bus, granted))
        delay_handle = self.delay.new_handle()
        self.guest = Guest(
            runtime,
            module,
            name=name,
            hosts=[self.i2c, self.delay, self.log],
            limits=limits,
            required_exports=REQUIRED_EXPORTS,
        )
        try:
            version = self.guest.call("ea_abi_version")
            if version not in SUPPORTED_ABI_VERSIONS:
                speaks = " and ".join(str(v) for v in SUPPORTED_ABI_VERSIONS)
                raise DriverError(f"driver {name}: ABI version {version}, this agent speaks {speaks}")
            self.abi_version = int(version or 0)
            self._buffer = int(self.guest.call("ea_buffer") or 0)
            exports = set(self.guest.export_names)
            self.kind = "sensor" if "read" in exports else "output" if "write" in exports else ""
            if not self.kind:
                raise DriverError(f"driver {name}: exports neither read (sensor) nor write (output)")
            self.channels: list[tuple[str, str]] = self._describe() if "describe" in exports else []
            self._check("init", self.guest.call("init", bus_handle, delay_handle, address))
            # The per-reading path, resolved once (read_values).
            self._read = self.guest.bind("read") if self.kind == "sensor" else None
            self._n_channels = len(self.channels)
        except BaseException:
            self.guest.close()
            raise

    def _describe(self) -> list[tuple[str, str]]:
        n = int(self.guest.call("describe") or 0)
        if not 0 <= n <= 4096:
            raise DriverError(f"driver {self.name}: describe returned {n}")
        text = self._mem.read(self._buffer, n).decode("utf-8", "replace")
        out = []
        for item in filter(None, text.split(",")):
            label, _, unit = item.partition(":")
            out.append((label.strip(), unit.strip()))
        return out

    @property
    def _mem(self) -> Any:
        mem = self.guest.memory
        if mem is None:  # pragma: no cover - required_exports includes memory
            raise DriverError(f"driver {self.name}: exports no memory")
        return mem

    def _check(self, op: str, rc: Any) -> int:
        rc = int(rc or 0)
        if rc >= 0:
            return rc
        rc = rc if rc < 0x80000000 else rc - (1 << 32)
        where = f"I2C address {self.address:#04x} on {self.bus.name}"
        if rc == ERR_DATA and self.abi_version >= 2:
            raw = self._mem.read(self._buffer, MAX_MESSAGE)
            message = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip() or "(no message)"
            raise DeviceDataError(f"driver {self.name}: {op}: data error: {message} at {where}")
        if rc == ERR_ACCESS:
            denied = self.i2c.denials[-1] if self.i2c.denials else None
            addr = denied.address if denied else self.address
            raise AccessDenied(
                f"driver {self.name}: {op}: I2C address {addr:#04x} on {self.bus.name} is not "
                f"granted by its policy{f' ({self.policy_source})' if self.policy_source else ''}"
            )
        detail = (
            f" ({self.i2c.last_error.detail})" if self.i2c.last_error and self.i2c.last_error.detail else ""
        )
        raise HardwareError(f"driver {self.name}: {op} failed: {describe_error(rc)}{detail} at {where}")

    def read(self) -> Reading:
        if self.kind != "sensor":
            raise DriverError(f"driver {self.name} is an output driver: it has no readings")
        self.i2c.last_error = None
        rc = int(self.guest.call("read") or 0)
        if rc in (SKIP, SKIP & 0xFFFFFFFF) and self.abi_version >= 2:
            return Reading(self.name, time.time(), {}, {}, skipped=True)
        n = self._check("read", rc)
        if n > len(self.channels) or n > 512:
            raise DriverError(
                f"driver {self.name}: read returned {n} values for {len(self.channels)} channels"
            )
        values = self._mem.read_f64_array(self._buffer, n)
        names = [c[0] for c in self.channels]
        return Reading(
            self.name,
            time.time(),
            dict(zip(names, values, strict=False)),
            {c[0]: c[1] for c in self.channels[:n]},
        )

    def read_values(self) -> list[float]:
        """The hot path of a read (no dict, no clock): what the benchmark times."""
        read = self._read
        if read is None:
            raise DriverError(f"driver {self.name} is an output driver: it has no readings")
        n = read()
        if not 0 <= n <= self._n_channels:  # type: ignore[operator]
            if n in (SKIP, SKIP & 0xFFFFFFFF) and self.abi_version >= 2:
                return []
            n = self._check("read", n)
            if n > self._n_channels:
                raise DriverError(
                    f"driver {self.name}: read returned {n} values for {len(self.channels)} channels"
                )
        return self.guest.memory.read_f64_array(self._buffer, n)  # type: ignore[arg-type,union-attr]

    def write(self, text: str) -> None:
        if self.kind != "output":
            raise DriverError(f"driver {self.name} is a sensor driver: it takes no output")
        data = text.encode("utf-8", "replace")[:4096]
        self._mem.write(self._buffer, data)
        self._check("write", self.guest.call("write", len(data)))

    def close(self) -> None:
        self.guest.close()

    def __enter__(self) -> I2cDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class I2cDevice:
    bus: int
    address: int


def parse_device(spec: str, default_bus: int | None = None) -> I2cDevice:
    """``0x48``, ``1:0x48``, ``i2c-1:0x48`` or ``/dev/i2c-1:0x48`` (addresses in hex or decimal)."""
    from edgeagent.hw.smbus2_bus import parse_bus

    bus_part, sep, addr_part = spec.rpartition(":")
    try:
        address = int(addr_part, 0)
    except ValueError:
        raise HardwareError(f"bad I2C device {spec!r}: expected [BUS:]ADDRESS, e.g. 1:0x48") from None
    if not 0 <= address <= 0x3FF:
        raise HardwareError(f"bad I2C device {spec!r}: address out of range")
    if sep:
        bus = parse_bus(bus_part)
    elif default_bus is not None:
        bus = default_bus
    else:
        raise HardwareError(f"bad I2C device {spec!r}: no bus given and the policy grants none")
    return I2cDevice(bus, address)
