"""Running a Wasm USB driver from the command line: pick the device, grant it, take readings.

Shared by ``edgeagent run-driver`` for the USB drivers (drivers/usb_echo.c, drivers/usb_storage.c, or a module
given by path that exports the same operations). The policy decides what may be granted; ``--device`` only
narrows the choice among the devices plugged in: the host of a session sees exactly one device, the selected
one, and a selected device the policy does not grant is refused before the guest starts.

Readings (one dict per reading, the shape of the I2C drivers' ``Reading``: driver, time, values, units):
- echo driver: one ping round, bulk + interrupt + control, each a round trip of ``size`` bytes in microseconds
  (timed around the guest call: what an application calling the driver waits);
- storage driver: a header with INQUIRY vendor/product/revision and READ CAPACITY at start, then per reading
  one block check at the next LBA: read the blocks, write a pattern, read it back and compare, write the
  original content back; the write and the read-back give MB/s. The original data is restored before the next
  reading (one interrupted by a power cut can leave the pattern behind: do not point it at a disk in use).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from typing import Any

from edgeagent.config import AgentConfig
from edgeagent.drivers import loader
from edgeagent.drivers.components.usb_driver import ComponentUsbEcho
from edgeagent.drivers.usb_driver import UsbEchoWasm, UsbStorageWasm, UsbWasmDriver, grants_from_policy
from edgeagent.errors import AccessDenied, DriverError, HardwareError, PolicyError
from edgeagent.hw import usb
from edgeagent.wasm.cache import ModuleCache, is_component_file
from edgeagent.wasm.component import ComponentCache
from edgeagent.wasm.engine import Limits, Runtime

ECHO_SIZE = 64  # bytes per ping
ECHO_MAX = 4096  # drivers/usb_echo.c's buffers
STORAGE_SIZE = 64 << 10  # bytes per block check
STORAGE_MAX = 64 << 10  # drivers/usb_storage.c's data buffer
PING_ROUND = ("bulk", "interrupt", "control")


# ---------------------------------------------------------------- choosing a device
@dataclasses.dataclass(frozen=True)
class UsbSelector:
    """What ``--device`` names: VID:PID (hex, as ``lsusb -d``) or bus/address (as in /dev/bus/usb/BBB/DDD)."""

    vid_pid: tuple[int, int] | None = None
    bus_address: tuple[int, int] | None = None

    def matches(self, info: usb.UsbDeviceInfo) -> bool:
        if self.vid_pid is not None:
            return info.vid_pid == self.vid_pid
        return info.key == self.bus_address

    def __str__(self) -> str:
        if self.vid_pid is not None:
            return f"{self.vid_pid[0]:04x}:{self.vid_pid[1]:04x}"
        assert self.bus_address is not None
        return f"{self.bus_address[0]:03d}/{self.bus_address[1]:03d}"


_VID_PID = re.compile(r"([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})")
_BUS_ADDR = re.compile(r"(?:/dev/bus/usb/)?(\d{1,3})/(\d{1,3})")


def parse_usb_device(spec: str) -> UsbSelector:
    """``1209:0001`` (VID:PID in hex), ``1/5``, ``001/005`` or ``/dev/bus/usb/001/005`` (bus/address)."""
    text = spec.strip()
    m = _VID_PID.fullmatch(text)
    if m:
        return UsbSelector(vid_pid=(int(m.group(1), 16), int(m.group(2), 16)))
    m = _BUS_ADDR.fullmatch(text)
    if m and 1 <= int(m.group(2)) <= 127:
        return UsbSelector(bus_address=(int(m.group(1)), int(m.group(2))))
    raise HardwareError(
        f"bad USB device {spec!r}: expected VID:PID (e.g. 1209:0001) or BUS/ADDRESS (e.g. 1/5, "
        "/dev/bus/usb/001/005)"
    )


class OnlyDevices:
    """A backend showing only the devices ``keep`` accepts (enumeration, opening, hot-plug alike)."""

    def __init__(self, backend: usb.UsbBackend, keep: Callable[[usb.UsbDeviceInfo], bool]) -> None:
        self.backend = backend
        self._keep = keep

    def devices(self) -> list[usb.UsbDeviceInfo]:
        return [i for i in self.backend.devices() if self._keep(i)]

    def open(self, info: usb.UsbDeviceInfo) -> usb.UsbDevice:
        if not self._keep(info):
            raise usb.UsbError(usb.UsbErrorCode.NOT_FOUND, f"{info} is not selected")
        return self.backend.open(info)

    def poll_events(self, timeout_ms: int = 0) -> list[usb.HotplugEvent]:
        return [e for e in self.backend.poll_events(timeout_ms) if self._keep(e.device)]

    def close(self) -> None:
        self.backend.close()


def sim_backend() -> usb.UsbBackend:
    """The simulated bus of ``--sim``: an echo device and a 4 MiB disk, as if both were plugged in."""
    from edgeagent.hw.sim.usb_bus import SimUsbBus
    from edgeagent.hw.sim.usb_echo import EchoDevice
    from edgeagent.hw.sim.usb_storage import MassStorageDevice

    bus = SimUsbBus()
    bus.plug(EchoDevice())
    bus.plug(MassStorageDevice(size=4 << 20))
    return bus


def hardware_backend() -> usb.UsbBackend:
    from edgeagent.hw.pyusb_backend import PyUsbBackend

    return PyUsbBackend()


def select(
    backend: usb.UsbBackend, policy: Any, selector: UsbSelector | None, *, name: str
) -> usb.UsbDeviceInfo:
    """The device the session will use: the first one plugged in that matches ``selector`` and the policy.

    HardwareError when nothing matching is attached; AccessDenied when what matches is not granted.
    """
    present = sorted(backend.devices(), key=lambda i: i.key)
    candidates = [i for i in present if selector is None or selector.matches(i)]
    granted = [i for i in candidates if policy.allows_usb(*i.vid_pid)]
    if granted:
        return granted[0]
    if selector is not None and candidates:
        raise AccessDenied(
            f"driver {name}: USB device {candidates[0]} is not granted by its policy ({policy.source})"
        )
    if selector is not None:
        raise HardwareError(f"driver {name}: no USB device {selector} is attached")
    wanted = ", ".join(f"{r.vid:04x}:{r.pid:04x}" for r in policy.usb)
    raise HardwareError(f"driver {name}: no USB device its policy grants ({wanted}) is attached")


# ---------------------------------------------------------------- the session
@dataclasses.dataclass
class UsbSession:
    """One USB driver on one device; ``read()`` takes the next reading."""

    driver: UsbWasmDriver | ComponentUsbEcho
    backend: usb.UsbBackend
    device: usb.UsbDeviceInfo
    sim: bool
    source: loader.DriverSource
    kind: str  # "echo" or "storage"
    size: int
    header: dict[str, Any] = dataclasses.field(default_factory=dict)
    channels: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    _next_lba: int = 0

    @property
    def where(self) -> str:
        return f"{self.device}{' (simulated)' if self.sim else ''}"

    def _row(self, values: dict[str, float]) -> dict[str, Any]:
        return {
            "driver": self.driver.name,
            "time": time.time(),
            "device": str(self.device),
            "values": values,
            "units": {n: u for n, u in self.channels if n in values},
        }

    def read(self) -> dict[str, Any]:
        if self.kind == "echo":
            return self._ping_round()
        return self._block_check()

    def _ping_round(self) -> dict[str, Any]:
        drv = self.driver
        assert isinstance(drv, UsbEchoWasm | ComponentUsbEcho)
        values: dict[str, float] = {"size": self.size}
        for kind in PING_ROUND:
            t0 = time.perf_counter_ns()
            drv.ping(kind, self.size)
            values[kind] = (time.perf_counter_ns() - t0) / 1000
        return self._row(values)

    def _block_check(self) -> dict[str, Any]:
        drv = self.driver
        assert isinstance(drv, UsbStorageWasm)
        count = self.size // drv.block_size
        lba = self._next_lba if self._next_lba + count <= drv.blocks else 0
        self._next_lba = lba + count
        original = drv.read(lba, count)
        pattern = os.urandom(count * drv.block_size)
        t0 = time.perf_counter_ns()
        drv.write(lba, pattern)
        t1 = time.perf_counter_ns()
        back = drv.read(lba, count)
        t2 = time.perf_counter_ns()
        drv.write(lba, original)
        if back != pattern:
            raise HardwareError(
                f"driver {drv.name}: block check at LBA {lba}: the data read back is not what was written"
            )
        n = len(pattern)
        return self._row(
            {
                "lba": lba,
                "bytes": n,
                "write": n / max(t1 - t0, 1) * 1e3,  # bytes/ns * 1e3 = MB/s
                "read": n / max(t2 - t1, 1) * 1e3,
            }
        )

    def close(self) -> None:
        self.driver.close()
        self.backend.close()


def _inquiry(raw: bytes) -> dict[str, str]:
    """Standard INQUIRY data (SPC-2 table 46): T10 vendor 8-15, product 16-31, revision 32-35."""

    def text(a: int, b: int) -> str:
        return raw[a:b].decode("ascii", "replace").strip()

    return {"vendor": text(8, 16), "product": text(16, 32), "revision": text(32, 36)}


def driver_kind(exports: set[str], name: str) -> str:
    if "ping" in exports:
        return "echo"
    if {"read_blocks", "write_blocks", "inquiry", "ea_data"} <= exports:
        return "storage"
    raise DriverError(
        f"driver {name}: run-driver takes readings from USB drivers exporting ping (echo) or "
        "read_blocks/write_blocks/inquiry/ea_data (storage); this one exports neither"
    )


def open_usb_session(
    source: loader.DriverSource,
    config: AgentConfig,
    *,
    device: str | None = None,
    sim: bool | None,
    size: int | None = None,
    runtime: Runtime | None = None,
    cache: ModuleCache | None = None,
    backend: usb.UsbBackend | None = None,
) -> UsbSession:
    """Selects the device, starts the guest on it and runs its ``init``.

    ``sim=None`` picks the simulator when no device the policy grants is attached (or libusb is missing), as
    the I2C drivers do when the machine has no I2C bus. ``backend`` overrides both (tests).
    """
    name, policy = source.name, source.policy
    if not policy.usb:
        raise PolicyError(f"driver {name}: policy {policy.source} grants no USB device")
    selector = parse_usb_device(device) if device is not None else None
    runtime = runtime or Runtime.default()
    cache = cache or loader.cache_for(config)
    # A component (component:usb@0.2.1, world usb-echo-driver) or a core module (the C ABI).
    component = (
        ComponentCache(cache).load_file(runtime, source.path, name=f"driver {name}")
        if is_component_file(source.path)
        else None
    )
    module = loader.load_module(source, runtime, cache) if component is None else None
    if backend is None:
        backend, sim = _backend(policy, sim)
    assert sim is not None
    try:
        info = select(backend, policy, selector, name=name)
        key = info.key
        only = OnlyDevices(backend, lambda i: i.key == key)
        mem = policy.memory_limit_mib
        limits = Limits(memory_bytes=mem << 20) if mem else None
        kwargs: dict[str, Any] = {
            "name": name,
            "runtime": runtime,
            "backend": only,
            "grants": grants_from_policy(policy.usb),
            "limits": limits,
        }
        drv: UsbWasmDriver | ComponentUsbEcho
        if component is not None:
            kind = "echo"  # the one component USB world there is (usb-echo-driver)
            drv = ComponentUsbEcho(component, **kwargs)
        else:
            assert module is not None
            exports = {e.name for e in module.exports}
            kind = driver_kind(exports, name)
            cls: type[UsbWasmDriver] = UsbEchoWasm if kind == "echo" else UsbStorageWasm
            drv = cls(module, **kwargs)
    except BaseException:
        backend.close()
        raise
    try:
        session = _start(drv, only, info, sim, source, kind, size)
    except BaseException:
        drv.close()
        backend.close()
        raise
    return session


def _backend(policy: Any, sim: bool | None) -> tuple[usb.UsbBackend, bool]:
    if sim:
        return sim_backend(), True
    try:
        hw = hardware_backend()
    except usb.UsbError:
        if sim is None:
            return sim_backend(), True
        raise HardwareError("USB: libusb-1.0 is not available (install libusb-1.0-0, or use --sim)") from None
    if sim is None and not any(policy.allows_usb(*i.vid_pid) for i in hw.devices()):
        hw.close()
        return sim_backend(), True
    return hw, False


def _start(
    drv: UsbWasmDriver | ComponentUsbEcho,
    backend: usb.UsbBackend,
    info: usb.UsbDeviceInfo,
    sim: bool,
    source: loader.DriverSource,
    kind: str,
    size: int | None,
) -> UsbSession:
    drv.init()
    if kind == "echo":
        size = ECHO_SIZE if size is None else size
        if not 1 <= size <= ECHO_MAX:
            raise HardwareError(f"driver {drv.name}: ping size {size} is outside 1-{ECHO_MAX} bytes")
        assert isinstance(drv, UsbEchoWasm | ComponentUsbEcho)
        for ping in PING_ROUND:  # one untimed round: the first transfers pay for lazy set-up on both sides
            drv.ping(ping, size)
        return UsbSession(
            drv,
            backend,
            info,
            sim,
            source,
            kind,
            size,
            channels=[("size", "B"), *((k, "us") for k in PING_ROUND)],
        )
    assert isinstance(drv, UsbStorageWasm)
    block = drv.block_size
    size = STORAGE_SIZE if size is None else size
    if block <= 0 or drv.blocks <= 0:
        raise HardwareError(f"driver {drv.name}: the device reports no capacity")
    if size < block or size % block or size > STORAGE_MAX or size // block > drv.blocks:
        raise HardwareError(
            f"driver {drv.name}: check size {size} must be a multiple of the {block}-byte block, at most "
            f"{min(STORAGE_MAX, drv.blocks * block)} bytes"
        )
    header = {
        "driver": drv.name,
        "time": time.time(),
        "device": str(info),
        "inquiry": _inquiry(drv.inquiry()),
        "capacity": {"blocks": drv.blocks, "block_size": block, "bytes": drv.blocks * block},
    }
    return UsbSession(
        drv,
        backend,
        info,
        sim,
        source,
        kind,
        size,
        header=header,
        channels=[("lba", ""), ("bytes", "B"), ("write", "MB/s"), ("read", "MB/s")],
    )


is_usb = loader.is_usb  # where it was first defined; callers that only ask need not import this module
