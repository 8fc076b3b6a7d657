"""``component:usb@0.2.1`` for components, in the shape WebAssembly/wasi-usb has at HEAD (the WIT:
drivers/components/wit/deps/usb/usb.wit): ``device`` (resources ``usb-device`` and ``device-handle``,
``list-devices``), ``transfers`` (resource ``transfer``, ``await-transfer``), ``usb-hotplug`` and the
type-only ``errors``, ``configuration`` and ``descriptors``.

The capability model is the core host's (edgeagent.drivers.hosts.usb): the guest sees only devices its grants
allow; opening anything else, claiming an interface outside the grant, or a transfer on an endpoint of such an
interface (or a control request addressed to one) is ``access``, recorded in ``denials``. The checks happen
when the guest asks (``open``, ``claim-interface``, ``new-transfer``), before any I/O.

Transfers: the proposal's are asynchronous (new, submit, await). Here ``new-transfer`` checks the grant and
records the request, ``submit-transfer`` takes the OUT data, and ``await-transfer`` performs the transfer
synchronously (a blocking host call: its time counts against the call limit, not the compute limit).

One ``ComponentUsb`` holds the state; its ``hosts()`` are the per-interface host objects a ComponentGuest
serves. Which threads: the guest's (one at a time), like every host function.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

from wasmtime.component import Record

from edgeagent.drivers.hosts.usb import MAX_TRANSFER, Denial, UsbGrant
from edgeagent.hw import usb
from edgeagent.hw.usb import UsbError, UsbErrorCode
from edgeagent.wasm.component import ComponentHost, Err, componentfunc, resource_type_id
from edgeagent.wasm.host import HandleTable, HostTrap

log = logging.getLogger(__name__)

VERSION = "0.2.1"
DEVICE = f"component:usb/device@{VERSION}"
TRANSFERS = f"component:usb/transfers@{VERSION}"
HOTPLUG = f"component:usb/usb-hotplug@{VERSION}"
TYPE_ONLY = tuple(f"component:usb/{i}@{VERSION}" for i in ("errors", "configuration", "descriptors"))
SPEEDS = ("unknown", "low", "full", "high", "super", "super-plus", "super-plus-X2")
CONTROL_MAX = 0xFFFF


def _err(code: UsbErrorCode) -> Err:
    return Err(code.wit_name)


def _record(**fields: Any) -> Record:
    """A WIT record value: wasmtime-py reads its fields by their WIT (kebab-case) names."""
    r = Record()
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def _field(record: Any, name: str) -> int:
    return int(getattr(record, name))


def device_descriptor(d: usb.DeviceDescriptor) -> Record:
    return _record(
        length=18,
        descriptor_type=usb.DT_DEVICE,
        usb_version_bcd=d.bcdUSB,
        device_class=d.bDeviceClass,
        device_subclass=d.bDeviceSubClass,
        device_protocol=d.bDeviceProtocol,
        max_packet_size0=d.bMaxPacketSize0,
        vendor_id=d.idVendor,
        product_id=d.idProduct,
        device_version_bcd=d.bcdDevice,
        manufacturer_index=d.iManufacturer,
        product_index=d.iProduct,
        serial_number_index=d.iSerialNumber,
        num_configurations=d.bNumConfigurations,
    )


def configuration_descriptor(c: usb.ConfigurationDescriptor, index: int) -> Record:
    return _record(
        length=9,
        descriptor_type=usb.DT_CONFIG,
        total_length=len(c.pack()),
        interfaces=[
            _record(
                length=9,
                descriptor_type=usb.DT_INTERFACE,
                interface_number=i.bInterfaceNumber,
                alternate_setting=i.bAlternateSetting,
                endpoints=[
                    _record(
                        length=7,
                        descriptor_type=usb.DT_ENDPOINT,
                        endpoint_address=e.bEndpointAddress,
                        attributes=e.bmAttributes,
                        max_packet_size=e.wMaxPacketSize,
                        interval=e.bInterval,
                        refresh=0,
                        synch_address=0,
                    )
                    for e in i.endpoints
                ],
                interface_class=i.bInterfaceClass,
                interface_subclass=i.bInterfaceSubClass,
                interface_protocol=i.bInterfaceProtocol,
                interface_index=i.iInterface,
            )
            for i in c.interfaces
        ],
        configuration_value=c.bConfigurationValue,
        configuration_index=c.iConfiguration,
        attributes=c.bmAttributes,
        max_power=min(c.bMaxPower, 0xFF),
    )


class _Opened:
    """An open device handle, with the endpoints of interfaces the grant does not cover."""

    def __init__(
        self, dev: usb.UsbDevice, info: usb.UsbDeviceInfo, interfaces: frozenset[int] | None
    ) -> None:
        self.dev = dev
        self.info = info
        self.interfaces = interfaces
        allowed: set[int] = set()
        other: set[int] = set()
        for cfg in info.configurations:
            for i in cfg.interfaces:
                ok = interfaces is None or i.bInterfaceNumber in interfaces
                (allowed if ok else other).update(e.bEndpointAddress for e in i.endpoints)
        self.denied = frozenset(other - allowed)
        self.closed = False


@dataclasses.dataclass
class _Transfer:
    opened: _Opened
    kind: str  # transfer-type
    endpoint: int
    setup: tuple[int, int, int, int]  # bm-request-type, b-request, w-value, w-index
    length: int
    timeout_ms: int
    data: bytes | None = None


class ComponentUsb:
    """The USB state one component driver sees: its granted devices, open handles and transfers."""

    def __init__(
        self,
        backend: usb.UsbBackend,
        grants: Iterable[UsbGrant],
        *,
        name: str = "?",
        on_error: Callable[[UsbError], None] | None = None,
    ) -> None:
        self.backend = backend
        self.grants = tuple(grants)
        self.name = name
        self.devices: HandleTable[usb.UsbDeviceInfo] = HandleTable()
        self._by_key: dict[tuple[int, int], int] = {}
        self.handles: HandleTable[_Opened] = HandleTable()
        self.transfers: HandleTable[_Transfer] = HandleTable()
        self.denials: list[Denial] = []
        self.last_error: UsbError | None = None
        self._on_error = on_error
        self._events: list[tuple[str, int]] = []
        self.device_host = UsbDeviceHost(self)
        self.transfers_host = UsbTransfersHost(self)
        self.hotplug_host = UsbHotplugHost(self)
        self._scan(backend.devices(), announce=False)

    def hosts(self) -> list[ComponentHost]:
        return [
            self.device_host,
            self.transfers_host,
            self.hotplug_host,
            *(TypesHost.for_interface(i) for i in TYPE_ONLY),
        ]

    # ------------------------------------------------------------ grants
    def granted(self, info: usb.UsbDeviceInfo) -> bool:
        return any(g.allows(*info.vid_pid) for g in self.grants)

    def interfaces_for(self, info: usb.UsbDeviceInfo) -> frozenset[int] | None:
        rules = [g for g in self.grants if g.allows(*info.vid_pid)]
        if any(g.interface is None for g in rules):
            return None
        return frozenset(g.interface for g in rules if g.interface is not None)

    def deny(self, what: str) -> Err:
        self.denials.append(Denial(what))
        log.info("%s: denied %s (not in its policy)", self.name, what)
        return _err(UsbErrorCode.ACCESS)

    def error(self, e: UsbError) -> Err:
        self.last_error = e
        if self._on_error is not None:
            self._on_error(e)
        return _err(e.code)

    def _scan(self, infos: Iterable[usb.UsbDeviceInfo], *, announce: bool) -> None:
        for info in infos:
            if not self.granted(info) or info.key in self._by_key:
                continue
            rep = self.devices.add(info)
            self._by_key[info.key] = rep
            if announce:
                self._events.append(("arrived", rep))

    def poll(self) -> None:
        try:
            events = self.backend.poll_events(0)
        except UsbError as e:
            self.error(e)
            return
        for ev in events:
            if ev.kind == usb.HotplugKind.ARRIVED:
                self._scan([ev.device], announce=True)
            else:
                rep = self._by_key.pop(ev.device.key, None)
                if rep is not None:
                    self._events.append(("left", rep))

    def present(self) -> list[tuple[int, usb.UsbDeviceInfo]]:
        return [(rep, self.devices.get(rep)) for rep in self._by_key.values()]

    def opened(self, rep: int) -> _Opened:
        o = self.handles.mapping.get(rep)
        if o is None or o.closed:
            raise HostTrap(f"device-handle {rep} is not open")
        return o

    def close(self) -> None:
        for o in self.handles.values():
            if not o.closed:
                o.closed = True
                o.dev.close()
        self.handles = HandleTable()


class TypesHost(ComponentHost):
    """An interface of types only (errors, configuration, descriptors): nothing to serve but its name."""

    @classmethod
    def for_interface(cls, name: str) -> TypesHost:
        sub = type(f"TypesHost_{name.split('/')[1].split('@')[0]}", (cls,), {"interface": name})
        return sub()


class UsbDeviceHost(ComponentHost):
    interface = DEVICE
    resources = ("usb-device", "device-handle")

    def __init__(self, state: ComponentUsb) -> None:
        super().__init__()
        self.s = state
        self._transfer_type = resource_type_id(TRANSFERS, "transfer")

    def drop(self, resource: str, rep: int) -> None:
        if resource == "device-handle":
            o = self.s.handles.mapping.pop(rep, None)
            if o is not None and not o.closed:
                o.closed = True
                o.dev.close()

    @componentfunc("init")
    def init(self) -> None:
        return None

    @componentfunc("list-devices", blocking=True)
    def list_devices(self) -> list[tuple[Any, Record, Record]]:
        self.s.poll()
        return [
            (
                self.own("usb-device", rep),
                device_descriptor(info.descriptor),
                _record(
                    bus_number=info.bus,
                    device_address=info.address,
                    port_number=info.port_numbers[-1] if info.port_numbers else 0,
                    speed=SPEEDS[info.speed] if 0 <= info.speed < len(SPEEDS) else "unknown",
                ),
            )
            for rep, info in self.s.present()
        ]

    def _info(self, rep: int) -> usb.UsbDeviceInfo:
        if rep not in self.s.devices:
            raise HostTrap(f"usb-device {rep} is not one this host handed out")
        return self.s.devices.get(rep)

    @componentfunc("[method]usb-device.open", blocking=True)
    def open(self, rep: int) -> Any:
        info = self._info(rep)
        if not self.s.granted(info):  # cannot happen for listed devices; kept as the policy's last word
            return self.s.deny(f"USB device {info}")
        if info.key not in self.s._by_key:
            return _err(UsbErrorCode.NO_DEVICE)
        try:
            dev = self.s.backend.open(info)
        except UsbError as e:
            return self.s.error(e)
        return self.own("device-handle", self.s.handles.add(_Opened(dev, info, self.s.interfaces_for(info))))

    @componentfunc("[method]usb-device.get-configuration-descriptor")
    def get_configuration_descriptor(self, rep: int, index: int) -> Any:
        info = self._info(rep)
        if index >= len(info.configurations):
            return _err(UsbErrorCode.NOT_FOUND)
        return configuration_descriptor(info.configurations[index], index)

    @componentfunc("[method]usb-device.get-configuration-descriptor-by-value")
    def get_configuration_descriptor_by_value(self, rep: int, value: int) -> Any:
        info = self._info(rep)
        for i, c in enumerate(info.configurations):
            if c.bConfigurationValue == value:
                return configuration_descriptor(c, i)
        return _err(UsbErrorCode.NOT_FOUND)

    @componentfunc("[method]usb-device.get-active-configuration-descriptor")
    def get_active_configuration_descriptor(self, rep: int) -> Any:
        info = self._info(rep)
        if not info.configurations:
            return _err(UsbErrorCode.NOT_FOUND)
        return configuration_descriptor(info.configurations[0], 0)

    # ------------------------------------------------------------ device-handle
    def _do(self, rep: int, fn: Callable[[usb.UsbDevice], Any]) -> Any:
        o = self.s.opened(rep)
        try:
            return fn(o.dev)
        except UsbError as e:
            return self.s.error(e)

    @componentfunc("[method]device-handle.get-configuration", blocking=True)
    def get_configuration(self, rep: int) -> Any:
        return self._do(rep, lambda d: d.get_configuration())

    @componentfunc("[method]device-handle.set-configuration", blocking=True)
    def set_configuration(self, rep: int, config: Any) -> Any:
        value = config.payload if getattr(config, "tag", "") == "value" else 0
        if isinstance(config, int):  # wasmtime-py may hand an untagged payload
            value = config
        return self._do(rep, lambda d: d.set_configuration(value))

    def _interface_denied(self, rep: int, interface: int) -> Err | None:
        o = self.s.opened(rep)
        if o.interfaces is not None and interface not in o.interfaces:
            return self.s.deny(f"interface {interface} of {o.info}")
        return None

    @componentfunc("[method]device-handle.claim-interface", blocking=True)
    def claim_interface(self, rep: int, interface: int) -> Any:
        return self._interface_denied(rep, interface) or self._do(rep, lambda d: d.claim_interface(interface))

    @componentfunc("[method]device-handle.release-interface", blocking=True)
    def release_interface(self, rep: int, interface: int) -> Any:
        return self._do(rep, lambda d: d.release_interface(interface))

    @componentfunc("[method]device-handle.set-interface-altsetting", blocking=True)
    def set_interface_altsetting(self, rep: int, interface: int, alternate: int) -> Any:
        return self._interface_denied(rep, interface) or self._do(
            rep, lambda d: d.set_interface_alt_setting(interface, alternate)
        )

    @componentfunc("[method]device-handle.clear-halt", blocking=True)
    def clear_halt(self, rep: int, endpoint: int) -> Any:
        if endpoint in self.s.opened(rep).denied:
            return self.s.deny(f"endpoint 0x{endpoint:02x} of {self.s.opened(rep).info}")
        return self._do(rep, lambda d: d.clear_halt(endpoint))

    @componentfunc("[method]device-handle.reset-device", blocking=True)
    def reset_device(self, rep: int) -> Any:
        return self._do(rep, lambda d: d.reset())

    @componentfunc("[method]device-handle.alloc-streams")
    def alloc_streams(self, rep: int, n: int, endpoints: bytes) -> Any:
        self.s.opened(rep)
        return _err(UsbErrorCode.NOT_SUPPORTED)

    @componentfunc("[method]device-handle.free-streams")
    def free_streams(self, rep: int, endpoints: bytes) -> Any:
        self.s.opened(rep)
        return _err(UsbErrorCode.NOT_SUPPORTED)

    @componentfunc("[method]device-handle.kernel-driver-active", blocking=True)
    def kernel_driver_active(self, rep: int, interface: int) -> Any:
        return self._do(rep, lambda d: bool(d.kernel_driver_active(interface)))

    @componentfunc("[method]device-handle.detach-kernel-driver", blocking=True)
    def detach_kernel_driver(self, rep: int, interface: int) -> Any:
        return self._interface_denied(rep, interface) or self._do(
            rep, lambda d: d.detach_kernel_driver(interface)
        )

    @componentfunc("[method]device-handle.attach-kernel-driver")
    def attach_kernel_driver(self, rep: int, interface: int) -> Any:
        self.s.opened(rep)
        return _err(UsbErrorCode.NOT_SUPPORTED)

    @componentfunc("[method]device-handle.new-transfer")
    def new_transfer(self, rep: int, kind: str, setup: Record, buf_size: int, opts: Record) -> Any:
        o = self.s.opened(rep)
        endpoint = _field(opts, "endpoint")
        request_type, request = _field(setup, "bm-request-type"), _field(setup, "b-request")
        value, index = _field(setup, "w-value"), _field(setup, "w-index")
        if kind == "isochronous":
            return _err(UsbErrorCode.NOT_SUPPORTED)  # pyusb has no isochronous API
        if kind == "control":
            if buf_size > CONTROL_MAX:
                return _err(UsbErrorCode.INVALID_PARAM)
            recipient = request_type & 0x1F
            if (
                recipient == usb.RECIPIENT_INTERFACE
                and o.interfaces is not None
                and (index & 0xFF) not in o.interfaces
            ):
                return self.s.deny(f"control request to interface {index & 0xFF} of {o.info}")
            if recipient == usb.RECIPIENT_ENDPOINT and (index & 0xFF) in o.denied:
                return self.s.deny(
                    f"endpoint 0x{index & 0xFF:02x} of {o.info} (its interface is not granted)"
                )
        else:
            if buf_size > MAX_TRANSFER:
                return _err(UsbErrorCode.INVALID_PARAM)
            if endpoint in o.denied:
                return self.s.deny(f"endpoint 0x{endpoint:02x} of {o.info} (its interface is not granted)")
        xfer = _Transfer(
            o, kind, endpoint, (request_type, request, value, index), buf_size, _field(opts, "timeout-ms")
        )
        rep_t = self.s.transfers.add(xfer)
        from wasmtime.component import ResourceHost

        return ResourceHost.own(rep_t, self._transfer_type)

    @componentfunc("[method]device-handle.close")
    def close_handle(self, rep: int) -> None:
        o = self.s.opened(rep)
        o.closed = True
        o.dev.close()


class UsbTransfersHost(ComponentHost):
    interface = TRANSFERS
    resources = ("transfer",)

    def __init__(self, state: ComponentUsb) -> None:
        super().__init__()
        self.s = state

    def drop(self, resource: str, rep: int) -> None:
        self.s.transfers.mapping.pop(rep, None)

    def _xfer(self, rep: int) -> _Transfer:
        x = self.s.transfers.mapping.get(rep)
        if x is None:
            raise HostTrap(f"transfer {rep} is not one this host handed out")
        return x

    @componentfunc("[method]transfer.submit-transfer")
    def submit_transfer(self, rep: int, data: bytes) -> Any:
        x = self._xfer(rep)
        out = x.endpoint & 0x80 == 0 if x.kind != "control" else x.setup[0] & 0x80 == 0
        if out and len(data) > x.length:
            return _err(UsbErrorCode.OVERFLOW)
        x.data = bytes(data)
        return None

    @componentfunc("[method]transfer.cancel-transfer")
    def cancel_transfer(self, rep: int) -> Any:
        self._xfer(rep)
        return _err(UsbErrorCode.NOT_FOUND)

    @componentfunc("await-transfer", blocking=True)
    def await_transfer(self, rep: int) -> Any:
        x = self.s.transfers.mapping.pop(rep, None)
        if x is None:
            raise HostTrap(f"transfer {rep} is not one this host handed out")
        if x.data is None:
            return _err(UsbErrorCode.INVALID_PARAM)  # awaited before it was submitted
        o = x.opened
        if o.closed:
            return _err(UsbErrorCode.NO_DEVICE)
        dev, t = o.dev, x.timeout_ms
        try:
            if x.kind == "control":
                rt, req, value, index = x.setup
                if rt & 0x80:
                    return bytes(dev.control_in(rt, req, value, index, x.length, t))
                dev.control_out(rt, req, value, index, x.data, t)
                return b""
            if x.endpoint & 0x80:
                read = dev.interrupt_in if x.kind == "interrupt" else dev.bulk_in
                return bytes(read(x.endpoint, x.length, t))
            write = dev.interrupt_out if x.kind == "interrupt" else dev.bulk_out
            write(x.endpoint, x.data, t)
            return b""
        except UsbError as e:
            return self.s.error(e)


class UsbHotplugHost(ComponentHost):
    interface = HOTPLUG

    def __init__(self, state: ComponentUsb) -> None:
        super().__init__()
        self.s = state
        self._device_type = resource_type_id(DEVICE, "usb-device")

    @componentfunc("enable-hotplug")
    def enable_hotplug(self) -> None:
        return None

    @componentfunc("poll-events", blocking=True)
    def poll_events(self) -> list[tuple[set[str], Record, Any]]:
        from wasmtime.component import ResourceHost

        self.s.poll()
        events, self.s._events = self.s._events, []
        out = []
        for kind, rep in events:
            info = self.s.devices.get(rep)
            vid, pid = info.vid_pid
            out.append(
                (
                    {kind},
                    _record(bus=info.bus, address=info.address, vendor=vid, product=pid),
                    ResourceHost.own(rep, self._device_type),
                )
            )
        return out
