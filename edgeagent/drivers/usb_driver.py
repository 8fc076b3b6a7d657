"""Running the Wasm USB drivers (drivers/usb_echo.c, drivers/usb_storage.c) on a USB backend.

A driver gets a `UsbHost` whose grants come from its policy; this module turns the negative results of the
driver's exports into errors that name the driver, the operation and the cause (AccessDenied for a policy
denial, HardwareError for the device or bus, with the host's detail when it has one). A trap or a limit comes
out of the Guest as DriverError.
"""

from __future__ import annotations

from collections.abc import Iterable

import wasmtime

from edgeagent.drivers.hosts.usb import UsbGrant, UsbHost
from edgeagent.errors import AccessDenied, DriverError, EdgeAgentError, HardwareError
from edgeagent.hw import usb
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.guest import Guest
from edgeagent.wasm.hosts.log import LogHost

ABI_VERSION = 1
REQUIRED_EXPORTS = ("memory", "ea_abi_version", "ea_usb_driver", "init")
ECHO_ERR_MISMATCH = -1000
STORAGE_ERR_CHECK_CONDITION, STORAGE_ERR_PROTOCOL, STORAGE_ERR_NO_INTERFACE = -200, -201, -202
PING_KINDS = {"bulk": 0, "interrupt": 1, "control": 2}


def grants_from_policy(rules: Iterable[UsbGrant]) -> list[UsbGrant]:
    """The USB grants of a policy (its rules are grants already)."""
    return list(rules)


class UsbWasmDriver:
    """A Wasm USB driver instance bound to a backend within its grants."""

    def __init__(
        self,
        module: wasmtime.Module,
        *,
        name: str,
        runtime: Runtime,
        backend: usb.UsbBackend,
        grants: Iterable[UsbGrant],
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.usb = UsbHost(backend, grants)
        self.log = LogHost(name, keep=20)
        self.guest = Guest(
            runtime,
            module,
            name=name,
            hosts=[self.usb, self.log],
            limits=limits,
            required_exports=REQUIRED_EXPORTS,
        )
        version = self.guest.call("ea_abi_version")
        if version != ABI_VERSION:
            self.guest.close()
            raise DriverError(f"driver {name}: USB ABI version {version}, this agent speaks {ABI_VERSION}")

    def error(self, op: str, rc: int) -> EdgeAgentError:
        """The error for a negative result `rc` of operation `op`."""
        if rc == int(usb.UsbErrorCode.ACCESS):
            what = self.usb.denials[-1].what if self.usb.denials else "a device"
            return AccessDenied(f"driver {self.name}: {op}: access denied by policy to {what}")
        if rc == ECHO_ERR_MISMATCH:
            return HardwareError(f"driver {self.name}: {op}: the echo came back different")
        if rc == STORAGE_ERR_CHECK_CONDITION:
            sense = int(self.guest.call("sense") or 0) if "sense" in self.guest.export_names else 0
            return HardwareError(
                f"driver {self.name}: {op}: SCSI CHECK CONDITION, sense key {sense >> 16:#x}, "
                f"ASC {(sense >> 8) & 0xFF:#04x}"
            )
        if rc == STORAGE_ERR_PROTOCOL:
            return HardwareError(f"driver {self.name}: {op}: malformed bulk-only status (device reset)")
        if rc == STORAGE_ERR_NO_INTERFACE:
            return HardwareError(
                f"driver {self.name}: {op}: no bulk-only SCSI interface on the granted devices"
            )
        code = usb.UsbErrorCode.from_libusb(rc)
        last = self.usb.last_error
        detail = f" ({last.detail})" if last is not None and last.code == code else ""
        return HardwareError(f"driver {self.name}: {op}: usb {code.wit_name}{detail}")

    def check(self, op: str, rc: int | float | None) -> int:
        value = int(rc or 0)
        if value < 0:
            raise self.error(op, value)
        return value

    def init(self) -> None:
        self.check("init", self.guest.call("init"))

    def close(self) -> None:
        self.guest.close()  # closes the host too: devices the guest left open are released

    def __enter__(self) -> UsbWasmDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UsbEchoWasm(UsbWasmDriver):
    """drivers/usb_echo.c: `ping(kind, n)` sends n bytes and checks the echo."""

    def __init__(self, module: wasmtime.Module, *, name: str = "usb_echo", runtime: Runtime,
                 backend: usb.UsbBackend, grants: Iterable[UsbGrant], limits: Limits | None = None) -> None:
        super().__init__(module, name=name, runtime=runtime, backend=backend, grants=grants, limits=limits)
        self._ops = {k: f"{k} ping" for k in PING_KINDS}  # built once: ping is the latency hot path

    def ping(self, kind: str, size: int) -> int:
        rc = self.guest.call("ping", PING_KINDS[kind], size)
        # the hot path: an int result that is not negative is returned as is, without check()'s conversions
        return rc if isinstance(rc, int) and rc >= 0 else self.check(self._ops[kind], rc)

    def recover(self) -> None:
        self.check("clear halt", self.guest.call("recover"))

    def set_timeout(self, ms: int) -> None:
        self.guest.call("set_timeout", ms)

    def device_count(self) -> int:
        return self.check("enumerate", self.guest.call("device_count"))

    def try_open(self, vid: int, pid: int) -> None:
        self.check(f"open {vid:04x}:{pid:04x}", self.guest.call("try_open", vid, pid))

    def hotplug(self) -> tuple[int, int] | None:
        """The next hot-plug event the driver sees: (kind, address), or None."""
        rc = self.check("hot-plug update", self.guest.call("hotplug"))
        return (rc >> 8, rc & 0xFF) if rc else None


class UsbStorageWasm(UsbWasmDriver):
    """drivers/usb_storage.c: block reads and writes through BOT + SCSI into the guest's data buffer."""

    def __init__(self, module: wasmtime.Module, *, name: str = "usb_storage", runtime: Runtime,
                 backend: usb.UsbBackend, grants: Iterable[UsbGrant], limits: Limits | None = None) -> None:
        super().__init__(module, name=name, runtime=runtime, backend=backend, grants=grants, limits=limits)
        self._data = 0
        self.blocks = 0
        self.block_size = 0

    def init(self) -> None:
        super().init()
        self._data = int(self.guest.call("ea_data") or 0)
        self.blocks = int(self.guest.call("block_count") or 0)
        self.block_size = int(self.guest.call("block_size") or 0)

    @property
    def memory(self):
        if self.guest.memory is None:
            raise DriverError(f"driver {self.name}: exports no memory")
        return self.guest.memory

    def read_blocks(self, lba: int, count: int) -> int:
        """READ(10) into the guest's buffer; bytes read."""
        return self.check(f"read {count} blocks at {lba}", self.guest.call("read_blocks", lba, count))

    def write_blocks(self, lba: int, count: int) -> int:
        return self.check(f"write {count} blocks at {lba}", self.guest.call("write_blocks", lba, count))

    def read(self, lba: int, count: int) -> bytes:
        n = self.read_blocks(lba, count)
        return self.memory.read(self._data, n)

    def write(self, lba: int, data: bytes) -> None:
        count, rest = divmod(len(data), self.block_size)
        if rest:
            raise ValueError(f"write of {len(data)} bytes is not a whole number of blocks")
        self.memory.write(self._data, data)
        self.write_blocks(lba, count)

    def inquiry(self) -> bytes:
        n = self.check("inquiry", self.guest.call("inquiry"))
        return self.memory.read(self._data, n)
