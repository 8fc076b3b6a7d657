"""``component:usb`` for core-module guests.

The ABI is drivers/include/edgeagent_usb.h, the WIT drivers/wit/usb.wit.

Capabilities: the host owns the backend; a guest only ever sees devices its grants allow (VID:PID, optionally
one interface). Enumeration and hot-plug events skip everything else, opening a device that is not granted
(by VID:PID or by a guessed handle) fails with ``access``, and so does claiming an interface outside the
grant. Denials are recorded in ``denials`` for the caller to report.

Core ABI (all i32; lists are guest (ptr, len); results are a count/value >= 0 or a negative libusb error, the
WIT ``libusb-error`` enum as libusb numbers it: io -1 ... not-supported -12, other -99):

module ``component:usb/device``
- ``[static]usb-device.enumerate(buf, cap) -> n``: writes up to ``cap`` 32-byte ``ea_usb_device_info``
records,   returns how many granted devices there are (may exceed ``cap``).
- ``[static]usb-device.find(vid, pid) -> device``: the device handle of the first such device.
- ``[method]usb-device.configuration-descriptor(device, index, buf, cap) -> len``: raw descriptor bytes.
- ``[method]usb-device.open(device) -> handle``; ``[resource-drop]device-handle(handle)`` closes.
- ``[method]device-handle.{active-configuration, select-configuration, claim-interface, release-interface,
  select-alternate-interface, clear-halt, reset, kernel-driver-active, detach-kernel-driver, string}``.
module ``component:usb/transfers``
- ``[method]device-handle.control-in(h, request-type, request, value, index, buf, len, timeout-ms) -> n``
  and ``control-out`` (same parameters), ``bulk-in/-out`` and ``interrupt-in/-out`` ``(h, endpoint, buf, len,
  timeout-ms) -> n``; ``isochronous-in/-out`` answer ``not-supported`` (pyusb has no isochronous API).
module ``component:usb/usb-hotplug``
- ``update(buf) -> kind``: 0 = pending (nothing happened), 1 = connected, 2 = disconnected; the device record
is   written to ``buf``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import struct
from collections.abc import Callable, Iterable
from typing import Any

from edgeagent.hw import usb
from edgeagent.hw.usb import UsbError, UsbErrorCode
from edgeagent.wasm.host import I32, HandleTable, HostModule, hostfunc

log = logging.getLogger(__name__)

E = UsbErrorCode
DEVICE_INFO_FMT = "<IBBBB18s6x"  # struct ea_usb_device_info
DEVICE_INFO_SIZE = struct.calcsize(DEVICE_INFO_FMT)
MAX_TRANSFER = 1 << 20
HOTPLUG_PENDING = 0


@dataclasses.dataclass(frozen=True)
class UsbGrant:
    """One policy rule: a VID:PID the guest may use, optionally only one of its interfaces."""

    vid: int
    pid: int
    interface: int | None = None

    def allows(self, vid: int, pid: int, interface: int | None = None) -> bool:
        if (vid, pid) != (self.vid, self.pid):
            return False
        return self.interface is None or interface is None or interface == self.interface


@dataclasses.dataclass(frozen=True)
class Denial:
    what: str


class _Device:
    """A granted device as the guest knows it; `present` goes false when it leaves."""

    def __init__(self, info: usb.UsbDeviceInfo) -> None:
        self.info = info
        self.present = True


class UsbHost(HostModule):
    interface = "component:usb/device"

    def __init__(
        self,
        backend: usb.UsbBackend,
        grants: Iterable[UsbGrant],
        on_error: Callable[[UsbError], None] | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.grants = tuple(grants)
        self.devices: HandleTable[_Device] = HandleTable()
        self.handles: HandleTable[usb.UsbDevice] = HandleTable()
        self._by_key: dict[tuple[int, int], int] = {}
        self._events: collections.deque[tuple[int, int]] = collections.deque()
        self.denials: list[Denial] = []
        self.last_error: UsbError | None = None
        self._on_error = on_error
        self._scan(self.backend.devices(), announce=False)

    # ------------------------------------------------------------ grants and bookkeeping
    def granted(self, info: usb.UsbDeviceInfo, interface: int | None = None) -> bool:
        vid, pid = info.vid_pid
        return any(g.allows(vid, pid, interface) for g in self.grants)

    def _deny(self, what: str) -> int:
        self.denials.append(Denial(what))
        name = self._guest.name if self._guest is not None else "?"
        log.warning("%s: denied %s (not in its policy)", name, what)
        return int(E.ACCESS)

    def _scan(self, infos: Iterable[usb.UsbDeviceInfo], *, announce: bool) -> None:
        for info in infos:
            if not self.granted(info) or info.key in self._by_key:
                continue
            handle = self.devices.add(_Device(info))
            self._by_key[info.key] = handle
            if announce:
                self._events.append((int(usb.HotplugKind.ARRIVED), handle))

    def _device(self, handle: int) -> _Device | None:
        return self.devices.get(handle) if handle in self.devices else None

    def _error(self, e: UsbError) -> int:
        self.last_error = e
        if self._on_error is not None:
            self._on_error(e)
        return int(e.code)

    def _record(self, handle: int, info: usb.UsbDeviceInfo) -> bytes:
        return struct.pack(
            DEVICE_INFO_FMT,
            handle,
            info.bus,
            info.address,
            info.speed,
            len(info.configurations),
            info.descriptor.pack(),
        )

    # ------------------------------------------------------------ component:usb/device: usb-device
    @hostfunc("[static]usb-device.enumerate", params=(I32, I32), results=(I32,))
    def enumerate(self, buf: int, cap: int) -> int:
        self._poll()
        present = [(h, d) for h, d in self._live()]
        records = b"".join(self._record(h, d.info) for h, d in present[:cap])
        if records:
            self.memory.write(buf, records)
        return len(present)

    def _live(self) -> list[tuple[int, _Device]]:
        return [(h, self.devices.get(h)) for h in self._by_key.values() if self.devices.get(h).present]

    @hostfunc("[static]usb-device.find", params=(I32, I32), results=(I32,))
    def find(self, vid: int, pid: int) -> int:
        if not any(g.allows(vid, pid) for g in self.grants):
            return self._deny(f"USB device {vid:04x}:{pid:04x}")
        self._poll()
        for h, d in self._live():
            if d.info.vid_pid == (vid, pid):
                return h
        return int(E.NOT_FOUND)

    @hostfunc("[method]usb-device.configuration-descriptor", params=(I32, I32, I32, I32), results=(I32,))
    def configuration_descriptor(self, device: int, index: int, buf: int, cap: int) -> int:
        d = self._device(device)
        if d is None:
            return self._deny(f"USB device handle {device}")
        if index >= len(d.info.configurations):
            return int(E.NOT_FOUND)
        raw = d.info.configurations[index].pack()
        self.memory.write(buf, raw[:cap])
        return len(raw)

    @hostfunc("[method]usb-device.open", params=(I32,), results=(I32,), blocking=True)
    def open(self, device: int) -> int:
        d = self._device(device)
        if d is None:
            return self._deny(f"USB device handle {device}")
        if not d.present:
            return int(E.NO_DEVICE)
        try:
            return self.handles.add(self.backend.open(d.info))
        except UsbError as e:
            return self._error(e)

    @hostfunc("[resource-drop]device-handle", params=(I32,))
    def drop_handle(self, handle: int) -> None:
        self.handles.remove(handle).close()

    # ------------------------------------------------------------ component:usb/device: device-handle
    def _call(self, handle: int, fn: Callable[[usb.UsbDevice], Any]) -> int:
        dev = self.handles.get(handle)
        try:
            result = fn(dev)
        except UsbError as e:
            return self._error(e)
        return int(result or 0)

    @hostfunc("[method]device-handle.active-configuration", params=(I32,), results=(I32,), blocking=True)
    def active_configuration(self, handle: int) -> int:
        return self._call(handle, lambda d: d.get_configuration())

    @hostfunc("[method]device-handle.select-configuration", params=(I32, I32), results=(I32,), blocking=True)
    def select_configuration(self, handle: int, value: int) -> int:
        return self._call(handle, lambda d: d.set_configuration(value))

    @hostfunc("[method]device-handle.claim-interface", params=(I32, I32), results=(I32,), blocking=True)
    def claim_interface(self, handle: int, interface: int) -> int:
        dev = self.handles.get(handle)
        if not self.granted(dev.info, interface):
            return self._deny(f"interface {interface} of {dev.info}")
        return self._call(handle, lambda d: d.claim_interface(interface))

    @hostfunc("[method]device-handle.release-interface", params=(I32, I32), results=(I32,), blocking=True)
    def release_interface(self, handle: int, interface: int) -> int:
        return self._call(handle, lambda d: d.release_interface(interface))

    @hostfunc(
        "[method]device-handle.select-alternate-interface",
        params=(I32, I32, I32),
        results=(I32,),
        blocking=True,
    )
    def select_alternate_interface(self, handle: int, interface: int, alternate: int) -> int:
        return self._call(handle, lambda d: d.set_interface_alt_setting(interface, alternate))

    @hostfunc("[method]device-handle.clear-halt", params=(I32, I32), results=(I32,), blocking=True)
    def clear_halt(self, handle: int, endpoint: int) -> int:
        return self._call(handle, lambda d: d.clear_halt(endpoint))

    @hostfunc("[method]device-handle.reset", params=(I32,), results=(I32,), blocking=True)
    def reset(self, handle: int) -> int:
        return self._call(handle, lambda d: d.reset())

    @hostfunc("[method]device-handle.kernel-driver-active", params=(I32, I32), results=(I32,), blocking=True)
    def kernel_driver_active(self, handle: int, interface: int) -> int:
        return self._call(handle, lambda d: 1 if d.kernel_driver_active(interface) else 0)

    @hostfunc("[method]device-handle.detach-kernel-driver", params=(I32, I32), results=(I32,), blocking=True)
    def detach_kernel_driver(self, handle: int, interface: int) -> int:
        dev = self.handles.get(handle)
        if not self.granted(dev.info, interface):
            return self._deny(f"interface {interface} of {dev.info}")
        return self._call(handle, lambda d: d.detach_kernel_driver(interface))

    @hostfunc("[method]device-handle.string", params=(I32, I32, I32, I32), results=(I32,), blocking=True)
    def string(self, handle: int, index: int, buf: int, cap: int) -> int:
        dev = self.handles.get(handle)
        try:
            text = dev.get_string(index).encode()
        except UsbError as e:
            return self._error(e)
        self.memory.write(buf, text[:cap])
        return len(text)

    # ------------------------------------------------------------ component:usb/transfers
    @hostfunc(
        "[method]device-handle.control-in",
        params=(I32,) * 8,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def control_in(
        self,
        handle: int,
        request_type: int,
        request: int,
        value: int,
        index: int,
        buf: int,
        length: int,
        timeout_ms: int,
    ) -> int:
        if length > 0xFFFF:
            return int(E.INVALID_PARAM)
        self.memory.check(buf, length)
        dev = self.handles.get(handle)
        try:
            data = dev.control_in(request_type, request, value, index, length, timeout_ms)
        except UsbError as e:
            return self._error(e)
        if data:
            self.memory.write(buf, data)
        return len(data)

    @hostfunc(
        "[method]device-handle.control-out",
        params=(I32,) * 8,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def control_out(
        self,
        handle: int,
        request_type: int,
        request: int,
        value: int,
        index: int,
        buf: int,
        length: int,
        timeout_ms: int,
    ) -> int:
        if length > 0xFFFF:
            return int(E.INVALID_PARAM)
        data = self.memory.read(buf, length)
        dev = self.handles.get(handle)
        try:
            return dev.control_out(request_type, request, value, index, data, timeout_ms)
        except UsbError as e:
            return self._error(e)

    def _in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int, interrupt: bool) -> int:
        if length > MAX_TRANSFER:
            return int(E.INVALID_PARAM)
        self.memory.check(buf, length)
        dev = self.handles.get(handle)
        try:
            data = (dev.interrupt_in if interrupt else dev.bulk_in)(endpoint, length, timeout_ms)
        except UsbError as e:
            return self._error(e)
        if data:
            self.memory.write(buf, data)
        return len(data)

    def _out(
        self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int, interrupt: bool
    ) -> int:
        if length > MAX_TRANSFER:
            return int(E.INVALID_PARAM)
        data = self.memory.read(buf, length)
        dev = self.handles.get(handle)
        try:
            return (dev.interrupt_out if interrupt else dev.bulk_out)(endpoint, data, timeout_ms)
        except UsbError as e:
            return self._error(e)

    @hostfunc(
        "[method]device-handle.bulk-in",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def bulk_in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        return self._in(handle, endpoint, buf, length, timeout_ms, False)

    @hostfunc(
        "[method]device-handle.bulk-out",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def bulk_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        return self._out(handle, endpoint, buf, length, timeout_ms, False)

    @hostfunc(
        "[method]device-handle.interrupt-in",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def interrupt_in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        return self._in(handle, endpoint, buf, length, timeout_ms, True)

    @hostfunc(
        "[method]device-handle.interrupt-out",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def interrupt_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        return self._out(handle, endpoint, buf, length, timeout_ms, True)

    @hostfunc(
        "[method]device-handle.isochronous-in",
        params=(I32,) * 5,
        results=(I32,),
        module="component:usb/transfers",
    )
    def isochronous_in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        self.handles.get(handle)
        return int(E.NOT_SUPPORTED)

    @hostfunc(
        "[method]device-handle.isochronous-out",
        params=(I32,) * 5,
        results=(I32,),
        module="component:usb/transfers",
    )
    def isochronous_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        self.handles.get(handle)
        return int(E.NOT_SUPPORTED)

    # ------------------------------------------------------------ component:usb/usb-hotplug
    def _poll(self) -> None:
        try:
            events = self.backend.poll_events(0)
        except UsbError as e:
            self._error(e)
            return
        for ev in events:
            if ev.kind == usb.HotplugKind.ARRIVED:
                self._scan([ev.device], announce=True)
            else:
                handle = self._by_key.pop(ev.device.key, None)
                if handle is not None:
                    self.devices.get(handle).present = False
                    self._events.append((int(usb.HotplugKind.LEFT), handle))

    @hostfunc("update", params=(I32,), results=(I32,), blocking=True, module="component:usb/usb-hotplug")
    def update(self, buf: int) -> int:
        if not self._events:
            self._poll()
        if not self._events:
            return HOTPLUG_PENDING
        kind, handle = self._events.popleft()
        self.memory.write(buf, self._record(handle, self.devices.get(handle).info))
        return kind

    def close(self) -> None:
        """Closes every device the guest left open (the Guest calls this when it is closed)."""
        for dev in self.handles.values():
            dev.close()
        self.handles = HandleTable()
