"""``component:usb`` for core-module guests.

The ABI is drivers/include/edgeagent_usb.h, the WIT drivers/wit/usb.wit.

Capabilities: the host owns the backend; a guest only ever sees devices its grants allow (VID:PID, optionally
one interface). Enumeration and hot-plug events skip everything else, opening a device that is not granted
(by VID:PID or by a guessed handle) fails with ``access``, and so does claiming an interface outside the
grant, a transfer on an endpoint of such an interface, or a control request addressed to one (pyusb and
usbdevfs claim an unclaimed interface implicitly on its first transfer, so checking claims alone would not
do). Grants are resolved once, when a handle is opened; a transfer then costs one dict lookup and one set
test on the host side, and the backend moves the data straight between the device and guest memory
(`edgeagent.hw.usb.RawTransfers`). Denials are recorded in ``denials`` for the caller to report.

Core ABI (all i32; lists are guest (ptr, len); results are a count/value >= 0 or a negative libusb error, the
WIT ``libusb-error`` enum as libusb numbers it: io -1 ... not-supported -12, other -99):

module ``component:usb/device``
- ``list-devices(buf, cap) -> n``: writes up to ``cap`` 32-byte ``ea_usb_device_info``
records,   returns how many granted devices there are (may exceed ``cap``).
- ``[static]usb-device.find(vid, pid) -> device``: the device handle of the first such device.
- ``[method]usb-device.get-configuration-descriptor(device, index, buf, cap) -> len``: raw descriptor bytes.
- ``[method]usb-device.open(device) -> handle``; ``[resource-drop]device-handle(handle)`` closes.
- ``[method]device-handle.{get-configuration, set-configuration, claim-interface, release-interface,
  set-interface-altsetting, clear-halt, reset-device, kernel-driver-active, detach-kernel-driver, string}``.
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
from edgeagent.wasm.host import I32, HandleTable, HostModule, HostTrap, hostfunc

log = logging.getLogger(__name__)

E = UsbErrorCode
DEVICE_INFO_FMT = "<IBBBB18s6x"  # struct ea_usb_device_info
DEVICE_INFO_SIZE = struct.calcsize(DEVICE_INFO_FMT)
MAX_TRANSFER = 1 << 20
HOTPLUG_PENDING = 0
ERR_INVALID_PARAM = int(E.INVALID_PARAM)


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


class _Opened:
    """An open device handle with what its transfers need, resolved once at open time.

    ``interfaces``: the interfaces the grants allow (None: all); ``denied``: the endpoint addresses of the
    other interfaces, so the per-transfer policy check is one set lookup.
    """

    __slots__ = ("denied", "dev", "info", "interfaces", "raw")

    def __init__(
        self, dev: usb.UsbDevice, info: usb.UsbDeviceInfo, interfaces: frozenset[int] | None
    ) -> None:
        self.dev = dev
        self.info = info
        self.interfaces = interfaces
        self.raw = usb.RawTransfers(dev)
        allowed: set[int] = set()
        other: set[int] = set()
        for cfg in info.configurations:
            for i in cfg.interfaces:
                ok = interfaces is None or i.bInterfaceNumber in interfaces
                (allowed if ok else other).update(e.bEndpointAddress for e in i.endpoints)
        self.denied = frozenset(other - allowed)


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
        self.handles: HandleTable[_Opened] = HandleTable()
        self._open = self.handles.mapping  # the transfers' lookup: a plain dict.get, no exception machinery
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
        # INFO, not WARNING: the denial is recorded and the caller turns the guest's error into the user's one
        # line (a warning would print a second line before it).
        log.info("%s: denied %s (not in its policy)", name, what)
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
    @hostfunc("list-devices", params=(I32, I32), results=(I32,))
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

    @hostfunc("[method]usb-device.get-configuration-descriptor", params=(I32, I32, I32, I32), results=(I32,))
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
            dev = self.backend.open(d.info)
        except UsbError as e:
            return self._error(e)
        return self.handles.add(_Opened(dev, d.info, self._granted_interfaces(d.info)))

    def _granted_interfaces(self, info: usb.UsbDeviceInfo) -> frozenset[int] | None:
        """The interfaces the grants allow on this device; None when a grant allows all of them."""
        rules = [g for g in self.grants if g.allows(*info.vid_pid)]
        if any(g.interface is None for g in rules):
            return None
        return frozenset(g.interface for g in rules if g.interface is not None)

    @hostfunc("[resource-drop]device-handle", params=(I32,))
    def drop_handle(self, handle: int) -> None:
        self.handles.remove(handle).dev.close()

    def opened(self) -> list[usb.UsbDeviceInfo]:
        """The devices the guest has open now."""
        return [o.info for o in self.handles.values()]

    # ------------------------------------------------------------ component:usb/device: device-handle
    def _call(self, handle: int, fn: Callable[[usb.UsbDevice], Any]) -> int:
        dev = self._opened(handle).dev
        try:
            result = fn(dev)
        except UsbError as e:
            return self._error(e)
        return int(result or 0)

    @hostfunc("[method]device-handle.get-configuration", params=(I32,), results=(I32,), blocking=True)
    def active_configuration(self, handle: int) -> int:
        return self._call(handle, lambda d: d.get_configuration())

    @hostfunc("[method]device-handle.set-configuration", params=(I32, I32), results=(I32,), blocking=True)
    def select_configuration(self, handle: int, value: int) -> int:
        return self._call(handle, lambda d: d.set_configuration(value))

    @hostfunc("[method]device-handle.claim-interface", params=(I32, I32), results=(I32,), blocking=True)
    def claim_interface(self, handle: int, interface: int) -> int:
        o = self._opened(handle)
        if o.interfaces is not None and interface not in o.interfaces:
            return self._deny(f"interface {interface} of {o.info}")
        return self._call(handle, lambda d: d.claim_interface(interface))

    @hostfunc("[method]device-handle.release-interface", params=(I32, I32), results=(I32,), blocking=True)
    def release_interface(self, handle: int, interface: int) -> int:
        return self._call(handle, lambda d: d.release_interface(interface))

    @hostfunc(
        "[method]device-handle.set-interface-altsetting",
        params=(I32, I32, I32),
        results=(I32,),
        blocking=True,
    )
    def select_alternate_interface(self, handle: int, interface: int, alternate: int) -> int:
        return self._call(handle, lambda d: d.set_interface_alt_setting(interface, alternate))

    @hostfunc("[method]device-handle.clear-halt", params=(I32, I32), results=(I32,), blocking=True)
    def clear_halt(self, handle: int, endpoint: int) -> int:
        return self._call(handle, lambda d: d.clear_halt(endpoint))

    @hostfunc("[method]device-handle.reset-device", params=(I32,), results=(I32,), blocking=True)
    def reset(self, handle: int) -> int:
        return self._call(handle, lambda d: d.reset())

    @hostfunc("[method]device-handle.kernel-driver-active", params=(I32, I32), results=(I32,), blocking=True)
    def kernel_driver_active(self, handle: int, interface: int) -> int:
        return self._call(handle, lambda d: 1 if d.kernel_driver_active(interface) else 0)

    @hostfunc("[method]device-handle.detach-kernel-driver", params=(I32, I32), results=(I32,), blocking=True)
    def detach_kernel_driver(self, handle: int, interface: int) -> int:
        o = self._opened(handle)
        if o.interfaces is not None and interface not in o.interfaces:
            return self._deny(f"interface {interface} of {o.info}")
        return self._call(handle, lambda d: d.detach_kernel_driver(interface))

    @hostfunc("[method]device-handle.string", params=(I32, I32, I32, I32), results=(I32,), blocking=True)
    def string(self, handle: int, index: int, buf: int, cap: int) -> int:
        dev = self._opened(handle).dev
        try:
            text = dev.get_string(index).encode()
        except UsbError as e:
            return self._error(e)
        self.memory.write(buf, text[:cap])
        return len(text)

    # ------------------------------------------------------------ component:usb/transfers
    # The hot path. What a transfer needs was resolved when the handle was opened (_Opened): the device's
    # raw transfer functions and the endpoints of interfaces the policy does not grant. Per call: one dict
    # lookup, one set test, one bounds check, and the device moves the data straight to/from guest memory.
    def _opened(self, handle: int) -> _Opened:
        o = self._open.get(handle)
        if o is None:
            raise HostTrap(f"invalid device handle {handle}")
        return o

    def _deny_endpoint(self, o: _Opened, endpoint: int) -> int:
        return self._deny(f"endpoint 0x{endpoint:02x} of {o.info} (its interface is not granted)")

    def _deny_control(self, o: _Opened, request_type: int, index: int) -> int | None:
        recipient = request_type & 0x1F
        if recipient == usb.RECIPIENT_INTERFACE and (index & 0xFF) not in o.interfaces:  # type: ignore[operator]
            return self._deny(f"control request to interface {index & 0xFF} of {o.info}")
        if recipient == usb.RECIPIENT_ENDPOINT and (index & 0xFF) in o.denied:
            return self._deny_endpoint(o, index & 0xFF)
        return None

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
        o = self._open.get(handle) or self._opened(handle)
        # Only interface- and endpoint-recipient requests (recipient 1, 2) can reach an ungranted interface.
        if request_type & 0x03 and o.interfaces is not None:
            denied = self._deny_control(o, request_type, index)
            if denied is not None:
                return denied
        if length > 0xFFFF:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.control_in(request_type, request, value, index, address, length, timeout_ms)
        except UsbError as e:
            return self._error(e)

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
        o = self._open.get(handle) or self._opened(handle)
        # Only interface- and endpoint-recipient requests (recipient 1, 2) can reach an ungranted interface.
        if request_type & 0x03 and o.interfaces is not None:
            denied = self._deny_control(o, request_type, index)
            if denied is not None:
                return denied
        if length > 0xFFFF:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.control_out(request_type, request, value, index, address, length, timeout_ms)
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
        o = self._open.get(handle) or self._opened(handle)
        endpoint |= 0x80
        if endpoint in o.denied:
            return self._deny_endpoint(o, endpoint)
        if length > MAX_TRANSFER:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.read(endpoint, address, length, timeout_ms, usb.TRANSFER_BULK)
        except UsbError as e:
            return self._error(e)

    @hostfunc(
        "[method]device-handle.bulk-out",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def bulk_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        o = self._open.get(handle) or self._opened(handle)
        endpoint &= 0x7F
        if endpoint in o.denied:
            return self._deny_endpoint(o, endpoint)
        if length > MAX_TRANSFER:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.write(endpoint, address, length, timeout_ms, usb.TRANSFER_BULK)
        except UsbError as e:
            return self._error(e)

    @hostfunc(
        "[method]device-handle.interrupt-in",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def interrupt_in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        o = self._open.get(handle) or self._opened(handle)
        endpoint |= 0x80
        if endpoint in o.denied:
            return self._deny_endpoint(o, endpoint)
        if length > MAX_TRANSFER:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.read(endpoint, address, length, timeout_ms, usb.TRANSFER_INTERRUPT)
        except UsbError as e:
            return self._error(e)

    @hostfunc(
        "[method]device-handle.interrupt-out",
        params=(I32,) * 5,
        results=(I32,),
        blocking=True,
        module="component:usb/transfers",
    )
    def interrupt_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        o = self._open.get(handle) or self._opened(handle)
        endpoint &= 0x7F
        if endpoint in o.denied:
            return self._deny_endpoint(o, endpoint)
        if length > MAX_TRANSFER:
            return ERR_INVALID_PARAM
        address = (self._memory or self.memory).address(buf, length)
        try:
            return o.raw.write(endpoint, address, length, timeout_ms, usb.TRANSFER_INTERRUPT)
        except UsbError as e:
            return self._error(e)

    @hostfunc(
        "[method]device-handle.isochronous-in",
        params=(I32,) * 5,
        results=(I32,),
        module="component:usb/transfers",
    )
    def isochronous_in(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        self._opened(handle)
        return int(E.NOT_SUPPORTED)

    @hostfunc(
        "[method]device-handle.isochronous-out",
        params=(I32,) * 5,
        results=(I32,),
        module="component:usb/transfers",
    )
    def isochronous_out(self, handle: int, endpoint: int, buf: int, length: int, timeout_ms: int) -> int:
        self._opened(handle)
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
        for o in self.handles.values():
            o.dev.close()
        self.handles = HandleTable()
        self._open = self.handles.mapping
