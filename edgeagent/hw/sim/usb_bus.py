"""An in-process USB bus of simulated devices, implementing the `edgeagent.hw.usb` backend protocol.

For the embedded default (`--sim`), fast tests and the benchmark's null backend: no kernel, no libusb, every
transfer is a direct call into the device model. It keeps the host-visible rules that matter to a driver: an
unplugged device answers ``no-device``, a STALL is ``pipe`` until the halt is cleared, an interface bound to a
(simulated) kernel driver or claimed by another handle is ``busy``, and a NAKed transfer ends in ``timeout``
(in-process, nothing else can feed the endpoint while the caller waits, so the sim reports it at once rather
than sleeping out the timeout).
"""

from __future__ import annotations

import threading

from edgeagent.hw import usb
from edgeagent.hw.sim.usb_function import Stall, UsbFunction

E = usb.UsbErrorCode


class SimUsbBus:
    """Devices are plugged into numbered ports; addresses are assigned like a hub does, never reused."""

    def __init__(self, bus: int = 1) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._next_address = 2
        self._attached: dict[tuple[int, int], tuple[usb.UsbDeviceInfo, UsbFunction]] = {}
        self._events: list[usb.HotplugEvent] = []
        self._claims: dict[tuple[int, int], dict[int, SimUsbDevice]] = {}

    # ------------------------------------------------------------ the test / sim side
    def plug(self, model: UsbFunction) -> usb.UsbDeviceInfo:
        with self._lock:
            address = self._next_address
            self._next_address += 1
            info = usb.UsbDeviceInfo(
                self.bus, address, model.descriptor, model.configurations, port_numbers=(address - 1,)
            )
            model.reset()
            model.bound_drivers = dict(model.kernel_drivers)
            self._attached[info.key] = (info, model)
            self._claims[info.key] = {}
            self._events.append(usb.HotplugEvent(usb.HotplugKind.ARRIVED, info))
            return info

    def unplug(self, info: usb.UsbDeviceInfo) -> None:
        with self._lock:
            if self._attached.pop(info.key, None) is None:
                return
            self._claims.pop(info.key, None)
            self._events.append(usb.HotplugEvent(usb.HotplugKind.LEFT, info))

    def model(self, info: usb.UsbDeviceInfo) -> UsbFunction | None:
        entry = self._attached.get(info.key)
        return entry[1] if entry else None

    # ------------------------------------------------------------ UsbBackend
    def devices(self) -> list[usb.UsbDeviceInfo]:
        with self._lock:
            return [info for info, _ in self._attached.values()]

    def open(self, info: usb.UsbDeviceInfo) -> SimUsbDevice:
        entry = self._attached.get(info.key)
        if entry is None:
            raise usb.UsbError(E.NO_DEVICE, f"{info} is not attached")
        return SimUsbDevice(self, entry[0], entry[1])

    def poll_events(self, timeout_ms: int = 0) -> list[usb.HotplugEvent]:
        with self._lock:
            events, self._events = self._events, []
            return events

    def close(self) -> None:
        pass

    def attached(self, info: usb.UsbDeviceInfo, model: UsbFunction) -> bool:
        entry = self._attached.get(info.key)
        return entry is not None and entry[1] is model

    def claims(self, info: usb.UsbDeviceInfo) -> dict[int, SimUsbDevice]:
        return self._claims.setdefault(info.key, {})


class SimUsbDevice:
    """An open handle on a simulated device."""

    def __init__(self, bus: SimUsbBus, info: usb.UsbDeviceInfo, model: UsbFunction) -> None:
        self.info = info
        self._bus = bus
        self._model = model
        self._claimed: set[int] = set()
        self._closed = False

    def _live(self) -> UsbFunction:
        if self._closed:
            raise usb.UsbError(E.INVALID_PARAM, f"{self.info}: handle is closed")
        if not self._bus.attached(self.info, self._model):
            raise usb.UsbError(E.NO_DEVICE, f"{self.info} was unplugged")
        return self._model

    def _interfaces(self) -> set[int]:
        cfg = self._live().active()
        return {i.bInterfaceNumber for i in cfg.interfaces} if cfg else set()

    # ------------------------------------------------------------ configuration
    def get_configuration(self) -> int:
        return self._live().configuration

    def set_configuration(self, value: int) -> None:
        model = self._live()
        if self._bus.claims(self.info):
            raise usb.UsbError(E.BUSY, f"{self.info}: interfaces are claimed")
        self._std_out(model, 0x00, usb.REQ_SET_CONFIGURATION, value, 0)

    def claim_interface(self, interface: int) -> None:
        model = self._live()
        if interface not in self._interfaces():
            raise usb.UsbError(E.NOT_FOUND, f"{self.info}: no interface {interface}")
        owner = self._bus.claims(self.info).get(interface)
        if owner is not None and owner is not self:
            raise usb.UsbError(E.BUSY, f"{self.info}: interface {interface} is claimed by another handle")
        if interface in model.bound_drivers:
            raise usb.UsbError(
                E.BUSY,
                f"{self.info}: interface {interface} is bound to kernel driver "
                f"{model.bound_drivers[interface]}",
            )
        self._bus.claims(self.info)[interface] = self
        self._claimed.add(interface)

    def release_interface(self, interface: int) -> None:
        self._live()
        if interface not in self._claimed:
            raise usb.UsbError(E.NOT_FOUND, f"{self.info}: interface {interface} is not claimed")
        self._claimed.discard(interface)
        self._bus.claims(self.info).pop(interface, None)

    def set_interface_alt_setting(self, interface: int, alternate: int) -> None:
        model = self._live()
        if interface not in self._claimed:
            raise usb.UsbError(E.NOT_FOUND, f"{self.info}: interface {interface} is not claimed")
        self._std_out(model, usb.RECIPIENT_INTERFACE, usb.REQ_SET_INTERFACE, alternate, interface)

    def clear_halt(self, endpoint: int) -> None:
        self._std_out(
            self._live(), usb.RECIPIENT_ENDPOINT, usb.REQ_CLEAR_FEATURE, usb.FEATURE_ENDPOINT_HALT, endpoint
        )

    def reset(self) -> None:
        model = self._live()
        configuration = model.configuration
        model.reset()
        if configuration:  # the kernel restores the configuration after a reset (usbdevfs semantics)
            model.configuration = configuration

    def kernel_driver_active(self, interface: int) -> bool:
        return interface in self._live().bound_drivers

    def detach_kernel_driver(self, interface: int) -> None:
        model = self._live()
        if model.bound_drivers.pop(interface, None) is None:
            raise usb.UsbError(E.NOT_FOUND, f"{self.info}: no kernel driver on interface {interface}")

    def get_string(self, index: int) -> str:
        raw = self.control_in(0x80, usb.REQ_GET_DESCRIPTOR, (usb.DT_STRING << 8) | index, 0x0409, 255, 1000)
        return raw[2 : raw[0]].decode("utf-16-le")

    def _std_out(self, model: UsbFunction, request_type: int, request: int, value: int, index: int) -> None:
        try:
            model.control(request_type, request, value, index, b"", 0)
        except Stall:
            raise usb.UsbError(E.PIPE, f"{self.info}: request 0x{request:02x} stalled") from None

    # ------------------------------------------------------------ transfers
    def control_in(
        self, request_type: int, request: int, value: int, index: int, length: int, timeout_ms: int
    ) -> bytes:
        try:
            return self._live().control(request_type | usb.ENDPOINT_IN, request, value, index, b"", length)
        except Stall:
            raise usb.UsbError(E.PIPE, f"{self.info}: control request 0x{request:02x} stalled") from None

    def control_out(
        self, request_type: int, request: int, value: int, index: int, data: bytes, timeout_ms: int
    ) -> int:
        try:
            self._live().control(request_type & 0x7F, request, value, index, data, len(data))
        except Stall:
            raise usb.UsbError(E.PIPE, f"{self.info}: control request 0x{request:02x} stalled") from None
        return len(data)

    def _in(self, endpoint: int, length: int) -> bytes:
        try:
            data = self._live().transfer_in(endpoint | usb.ENDPOINT_IN, length)
        except Stall:
            raise usb.UsbError(E.PIPE, f"{self.info}: endpoint 0x{endpoint:02x} stalled") from None
        if data is None:
            raise usb.UsbError(E.TIMEOUT, f"{self.info}: endpoint 0x{endpoint:02x} has no data")
        return data

    def _out(self, endpoint: int, data: bytes) -> int:
        try:
            n = self._live().transfer_out(endpoint & 0x7F, data)
        except Stall:
            raise usb.UsbError(E.PIPE, f"{self.info}: endpoint 0x{endpoint:02x} stalled") from None
        if n is None:
            raise usb.UsbError(E.TIMEOUT, f"{self.info}: endpoint 0x{endpoint:02x} is not accepting data")
        return n

    def bulk_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        return self._in(endpoint, length)

    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int:
        return self._out(endpoint, data)

    def interrupt_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        return self._in(endpoint, length)

    def interrupt_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int:
        return self._out(endpoint, data)

    def close(self) -> None:
        if self._closed:
            return
        claims = self._bus.claims(self.info)
        for i in self._claimed:
            if claims.get(i) is self:
                del claims[i]
        self._claimed.clear()
        self._closed = True
