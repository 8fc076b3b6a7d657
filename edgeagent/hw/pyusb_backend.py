"""The USB backend on pyusb (libusb-1.0 by default): real devices, or umockdev-emulated ones.

pyusb is used as is; what it lacks is added at the edges, not patched in:
- hot-plug: pyusb has no hot-plug API, so when the backend is libusb-1.0 with the hot-plug capability the
  arrived/left callbacks are registered on pyusb's own libusb context through ctypes and pumped by
  `poll_events`; any other pyusb backend (e.g. the simulator's) gets events by comparing enumerations;
- errors: pyusb raises USBError with libusb's code in ``backend_error_code``; it is kept as the
  `UsbErrorCode`;
- transfer type: pyusb picks bulk or interrupt from the endpoint descriptor, so a bulk call on an interrupt
  endpoint is refused here with ``invalid-param`` (what usbdevfs answers for a URB of the wrong type);
- the Wasm host's data path (``raw_read``, ``raw_write``, ``raw_control_*``; `edgeagent.hw.usb.RawTransfers`):
  pyusb's ``Device.read/write`` re-resolve the endpoint's interface, re-check the claim and allocate a buffer
  on every call, behind four lock-taking wrappers. Here that resolution is done once per endpoint (through
  pyusb's own ``setup_request``, so pyusb's claim bookkeeping stays right) and cached until the configuration,
  an alternate setting or a claim changes. With pyusb's libusb-1.0 backend the transfer is then one call of
  libusb's synchronous API on pyusb's own device handle, moving the data straight between libusb and the
  caller's memory (the guest's, already bounds-checked); with any other pyusb backend it is one call of the
  backend's IBackend method with a reused buffer. Without pyusb's internals (another pyusb version), the
  public ``Device.read/write`` path is used.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
from typing import Any

import usb.backend
import usb.backend.libusb1
import usb.core
import usb.util

from edgeagent.hw import usb as hw
from edgeagent.hw.usb import UsbError, UsbErrorCode

E = UsbErrorCode

_ERRNO = {
    errno.EIO: E.IO,
    errno.EINVAL: E.INVALID_PARAM,
    errno.EACCES: E.ACCESS,
    errno.EPERM: E.ACCESS,
    errno.ENODEV: E.NO_DEVICE,
    errno.ENOENT: E.NOT_FOUND,
    errno.EBUSY: E.BUSY,
    errno.ETIMEDOUT: E.TIMEOUT,
    errno.EOVERFLOW: E.OVERFLOW,
    errno.EPIPE: E.PIPE,
    errno.EINTR: E.INTERRUPTED,
    errno.ENOMEM: E.NO_MEM,
    errno.ENOSYS: E.NOT_SUPPORTED,
}

LIBUSB_CAP_HAS_HOTPLUG = 0x0001
LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED, LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT = 0x01, 0x02
LIBUSB_HOTPLUG_MATCH_ANY = -1
_HOTPLUG_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


def usb_error(exc: Exception, what: str) -> UsbError:
    """Maps what pyusb raised to a UsbError naming `what` failed."""
    if isinstance(exc, UsbError):
        return exc
    if isinstance(exc, NotImplementedError):
        return UsbError(E.NOT_SUPPORTED, f"{what}: not supported by this backend")
    if isinstance(exc, usb.core.USBError):
        if exc.backend_error_code is not None:
            code = E.from_libusb(exc.backend_error_code)
        else:
            code = _ERRNO.get(exc.errno or 0, E.OTHER)
        return UsbError(code, f"{what}: {exc.strerror or exc}")
    if isinstance(exc, ValueError):
        return UsbError(E.INVALID_PARAM, f"{what}: {exc}")
    return UsbError(E.OTHER, f"{what}: {exc}")


def describe(dev: Any) -> hw.UsbDeviceInfo:
    """Our descriptor view of a pyusb Device (reads only what libusb cached from sysfs)."""
    d = hw.DeviceDescriptor(
        int(dev.idVendor),
        int(dev.idProduct),
        int(dev.bcdDevice),
        int(dev.bcdUSB),
        int(dev.bDeviceClass),
        int(dev.bDeviceSubClass),
        int(dev.bDeviceProtocol),
        int(dev.bMaxPacketSize0),
        int(dev.iManufacturer),
        int(dev.iProduct),
        int(dev.iSerialNumber),
        int(dev.bNumConfigurations),
    )
    configs = []
    for cfg in dev:
        interfaces = tuple(
            hw.InterfaceDescriptor(
                int(i.bInterfaceNumber),
                int(i.bAlternateSetting),
                int(i.bInterfaceClass),
                int(i.bInterfaceSubClass),
                int(i.bInterfaceProtocol),
                tuple(
                    hw.EndpointDescriptor(
                        int(e.bEndpointAddress), int(e.bmAttributes), int(e.wMaxPacketSize), int(e.bInterval)
                    )
                    for e in i
                ),
                int(i.iInterface),
            )
            for i in cfg
        )
        configs.append(
            hw.ConfigurationDescriptor(
                int(cfg.bConfigurationValue),
                interfaces,
                int(cfg.bmAttributes),
                int(cfg.bMaxPower),
                int(cfg.iConfiguration),
            )
        )
    ports = tuple(dev.port_numbers or ()) if hasattr(dev, "port_numbers") else ()
    return hw.UsbDeviceInfo(
        int(dev.bus or 0), int(dev.address or 0), d, tuple(configs), int(dev.speed or 0), ports
    )


class PyUsbBackend:
    """Enumerates and opens devices through pyusb; `backend` defaults to pyusb's libusb-1.0 backend."""

    def __init__(self, backend: usb.backend.IBackend | None = None) -> None:
        self._backend = backend if backend is not None else usb.backend.libusb1.get_backend()
        if self._backend is None:
            raise UsbError(E.NOT_SUPPORTED, "libusb-1.0 is not available")
        self._known: dict[tuple[int, int], hw.UsbDeviceInfo] = {}
        self._pending: list[tuple[int, int, int]] = []  # (event, bus, address) from libusb callbacks
        self._callback: Any = None
        self._handle = ctypes.c_int(0)
        self._lib: Any = None
        self._ctx: Any = None
        self._refresh()
        self._start_hotplug()

    # ------------------------------------------------------------ enumeration
    def _find_all(self) -> list[Any]:
        try:
            return list(usb.core.find(find_all=True, backend=self._backend))
        except usb.core.USBError as e:
            raise usb_error(e, "enumerate") from None

    def _refresh(self) -> dict[tuple[int, int], hw.UsbDeviceInfo]:
        current: dict[tuple[int, int], hw.UsbDeviceInfo] = {}
        for dev in self._find_all():
            key = (int(dev.bus or 0), int(dev.address or 0))
            current[key] = self._known.get(key) or describe(dev)
        self._known = current
        return current

    def devices(self) -> list[hw.UsbDeviceInfo]:
        return list(self._refresh().values())

    def open(self, info: hw.UsbDeviceInfo) -> PyUsbDevice:
        try:
            dev = usb.core.find(backend=self._backend, bus=info.bus, address=info.address)
        except usb.core.USBError as e:
            raise usb_error(e, f"open {info}") from None
        if dev is None or (int(dev.idVendor), int(dev.idProduct)) != info.vid_pid:
            raise UsbError(E.NO_DEVICE, f"{info} is not attached")
        return PyUsbDevice(dev, info)

    # ------------------------------------------------------------ hot-plug
    def _start_hotplug(self) -> None:
        lib = getattr(self._backend, "lib", None)
        ctx = getattr(self._backend, "ctx", None)
        if lib is None or ctx is None or not lib.libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG):
            return
        lib.libusb_hotplug_register_callback.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            _HOTPLUG_CB,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.libusb_hotplug_deregister_callback.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.libusb_handle_events_timeout_completed.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_Timeval),
            ctypes.c_void_p,
        ]
        lib.libusb_get_bus_number.argtypes = [ctypes.c_void_p]
        lib.libusb_get_bus_number.restype = ctypes.c_uint8
        lib.libusb_get_device_address.argtypes = [ctypes.c_void_p]
        lib.libusb_get_device_address.restype = ctypes.c_uint8

        def on_event(_ctx: Any, device: Any, event: int, _user: Any) -> int:
            self._pending.append(
                (event, lib.libusb_get_bus_number(device), lib.libusb_get_device_address(device))
            )
            return 0

        self._callback = _HOTPLUG_CB(on_event)
        rc = lib.libusb_hotplug_register_callback(
            ctx,
            LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT,
            0,
            LIBUSB_HOTPLUG_MATCH_ANY,
            LIBUSB_HOTPLUG_MATCH_ANY,
            LIBUSB_HOTPLUG_MATCH_ANY,
            self._callback,
            None,
            ctypes.byref(self._handle),
        )
        if rc != 0:
            self._callback = None
            return
        self._lib, self._ctx = lib, ctx

    def poll_events(self, timeout_ms: int = 0) -> list[hw.HotplugEvent]:
        """Events since the last call; waits up to `timeout_ms` for libusb to deliver one."""
        if self._callback is None:
            return self._diff_events()
        tv = _Timeval(timeout_ms // 1000, (timeout_ms % 1000) * 1000)
        self._lib.libusb_handle_events_timeout_completed(self._ctx, ctypes.byref(tv), None)
        pending, self._pending = self._pending, []
        events: list[hw.HotplugEvent] = []
        for event, bus, address in pending:
            key = (bus, address)
            if event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED:
                info = self._refresh().get(key)
                if info is not None:
                    events.append(hw.HotplugEvent(hw.HotplugKind.ARRIVED, info))
            else:
                gone = self._known.pop(key, None)
                if gone is not None:
                    events.append(hw.HotplugEvent(hw.HotplugKind.LEFT, gone))
        return events

    def _diff_events(self) -> list[hw.HotplugEvent]:
        before = self._known
        after = self._refresh()
        return [hw.HotplugEvent(hw.HotplugKind.LEFT, i) for k, i in before.items() if k not in after] + [
            hw.HotplugEvent(hw.HotplugKind.ARRIVED, i) for k, i in after.items() if k not in before
        ]

    def close(self) -> None:
        if self._callback is not None:
            self._lib.libusb_hotplug_deregister_callback(self._ctx, self._handle)
            self._callback = None


_TRANSFER_PROTO = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_ubyte,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_uint,
)
_CONTROL_PROTO = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint8,
    ctypes.c_uint8,
    ctypes.c_uint16,
    ctypes.c_uint16,
    ctypes.c_void_p,
    ctypes.c_uint16,
    ctypes.c_uint,
)
_STRERROR_PROTO = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_int)
LIBUSB_ERROR_TIMEOUT = -7
_LABEL = {hw.TRANSFER_BULK: "bulk", hw.TRANSFER_INTERRUPT: "interrupt"}


class _Libusb:
    """libusb's synchronous transfer API with pointer arguments (pyusb's prototypes want ctypes arrays)."""

    _cache: dict[int, _Libusb] = {}  # noqa: RUF012 - one per loaded libusb

    def __init__(self, lib: Any) -> None:
        self.bulk = _TRANSFER_PROTO(("libusb_bulk_transfer", lib))
        self.interrupt = _TRANSFER_PROTO(("libusb_interrupt_transfer", lib))
        self.control = _CONTROL_PROTO(("libusb_control_transfer", lib))
        self.strerror = _STRERROR_PROTO(("libusb_strerror", lib))

    @classmethod
    def of(cls, backend: Any) -> _Libusb | None:
        lib = getattr(backend, "lib", None)
        if not isinstance(backend, usb.backend.libusb1._LibUSB) or lib is None:
            return None
        found = cls._cache.get(id(lib))
        if found is None:
            found = cls._cache[id(lib)] = cls(lib)
        return found

    def error(self, rc: int, what: str) -> UsbError:
        text = self.strerror(rc)
        return UsbError(E.from_libusb(rc), f"{what}: {text.decode() if text else rc}")


class PyUsbDevice:
    """An opened pyusb device; every failure is a UsbError."""

    def __init__(self, dev: Any, info: hw.UsbDeviceInfo) -> None:
        self.info = info
        self._dev = dev
        self._types: dict[int, int] = {}
        for cfg in info.configurations:
            for i in cfg.interfaces:
                for e in i.endpoints:
                    self._types[e.bEndpointAddress] = e.transfer_type
        # The data path (module docstring): (transfer type << 8 | endpoint) -> interface number, checked and
        # claimed once; reusable buffers by size.
        self._ctx = getattr(dev, "_ctx", None)
        if not all(hasattr(self._ctx, a) for a in ("setup_request", "managed_open", "backend")):
            self._ctx = None
        self._libusb = _Libusb.of(self._ctx.backend) if self._ctx is not None else None
        self._routes: dict[int, int] = {}
        self._buffers: dict[int, array.array[int]] = {}
        self._transferred = ctypes.c_int(0)
        self._transferred_ref = ctypes.byref(self._transferred)

    def _fail(self, exc: Exception, what: str) -> UsbError:
        return usb_error(exc, f"{self.info}: {what}")

    def get_configuration(self) -> int:
        try:
            return int(self._dev.get_active_configuration().bConfigurationValue)
        except usb.core.USBError as e:
            if e.backend_error_code is None and e.errno is None:  # pyusb's "Configuration not set"
                return 0
            raise self._fail(e, "get configuration") from None

    def set_configuration(self, value: int) -> None:
        try:
            self._routes.clear()
            self._dev.set_configuration(value)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"set configuration {value}") from None

    def claim_interface(self, interface: int) -> None:
        try:
            usb.util.claim_interface(self._dev, interface)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"claim interface {interface}") from None

    def release_interface(self, interface: int) -> None:
        try:
            self._routes.clear()
            usb.util.release_interface(self._dev, interface)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"release interface {interface}") from None

    def set_interface_alt_setting(self, interface: int, alternate: int) -> None:
        try:
            self._routes.clear()
            self._dev.set_interface_altsetting(interface=interface, alternate_setting=alternate)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"interface {interface} alternate setting {alternate}") from None

    def clear_halt(self, endpoint: int) -> None:
        try:
            self._dev.clear_halt(endpoint)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"clear halt 0x{endpoint:02x}") from None

    def reset(self) -> None:
        try:
            self._routes.clear()
            self._dev.reset()
        except usb.core.USBError as e:
            raise self._fail(e, "reset") from None

    def kernel_driver_active(self, interface: int) -> bool:
        try:
            return bool(self._dev.is_kernel_driver_active(interface))
        except (usb.core.USBError, NotImplementedError) as e:
            raise self._fail(e, f"kernel driver query on interface {interface}") from None

    def detach_kernel_driver(self, interface: int) -> None:
        try:
            self._dev.detach_kernel_driver(interface)
        except (usb.core.USBError, NotImplementedError) as e:
            raise self._fail(e, f"detach kernel driver from interface {interface}") from None

    def get_string(self, index: int) -> str:
        try:
            return str(usb.util.get_string(self._dev, index))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"string {index}") from None

    # ------------------------------------------------------------ transfers
    def control_in(
        self, request_type: int, request: int, value: int, index: int, length: int, timeout_ms: int
    ) -> bytes:
        try:
            return self._dev.ctrl_transfer(
                request_type | 0x80, request, value, index, length, timeout_ms
            ).tobytes()
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"control IN 0x{request:02x}") from None

    def control_out(
        self, request_type: int, request: int, value: int, index: int, data: bytes, timeout_ms: int
    ) -> int:
        try:
            return int(self._dev.ctrl_transfer(request_type & 0x7F, request, value, index, data, timeout_ms))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"control OUT 0x{request:02x}") from None

    def _check(self, endpoint: int, kind: int, what: str) -> None:
        if self._types.get(endpoint) != kind:
            raise UsbError(
                E.INVALID_PARAM, f"{self.info}: endpoint 0x{endpoint:02x} is not a {what} endpoint"
            )

    def _read(self, endpoint: int, length: int, timeout_ms: int, kind: int, what: str) -> bytes:
        endpoint |= 0x80
        self._check(endpoint, kind, what)
        try:
            data = self._dev.read(endpoint, length, timeout_ms)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"{what} IN 0x{endpoint:02x}") from None
        return data.tobytes() if isinstance(data, array.array) else bytes(data)

    def _write(self, endpoint: int, data: bytes, timeout_ms: int, kind: int, what: str) -> int:
        endpoint &= 0x7F
        self._check(endpoint, kind, what)
        try:
            return int(self._dev.write(endpoint, data, timeout_ms))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"{what} OUT 0x{endpoint:02x}") from None

    def bulk_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        return self._read(endpoint, length, timeout_ms, hw.TRANSFER_BULK, "bulk")

    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int:
        return self._write(endpoint, data, timeout_ms, hw.TRANSFER_BULK, "bulk")

    def interrupt_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        return self._read(endpoint, length, timeout_ms, hw.TRANSFER_INTERRUPT, "interrupt")

    def interrupt_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int:
        return self._write(endpoint, data, timeout_ms, hw.TRANSFER_INTERRUPT, "interrupt")

    # ------------------------------------------------------------ the Wasm host's data path
    def _route(self, endpoint: int, kind: int, what: str) -> int:
        """The interface of `endpoint`, checked to be of transfer type `kind`; claims it as pyusb would."""
        self._check(endpoint, kind, what)
        assert self._ctx is not None
        try:
            interface, _ = self._ctx.setup_request(self._dev, endpoint)
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"{what} 0x{endpoint:02x}") from None
        intf = self._routes[endpoint | kind << 8] = int(interface.bInterfaceNumber)
        return intf

    def _buffer(self, length: int) -> array.array[int]:
        buf = self._buffers.get(length)
        if buf is None:
            if len(self._buffers) > 8:
                self._buffers.clear()
            buf = self._buffers[length] = array.array("B", bytes(length))
        return buf

    def raw_read(self, endpoint: int, address: int, length: int, timeout_ms: int, kind: int) -> int:
        label = _LABEL[kind]
        if self._ctx is None:
            data = self._read(endpoint, length, timeout_ms, kind, label)
            ctypes.memmove(address, data, len(data))
            return len(data)
        endpoint |= 0x80
        intf = self._routes.get(endpoint | kind << 8)  # keyed by type too: the type check is cached with it
        if intf is None:
            intf = self._route(endpoint, kind, label)
        lib = self._libusb
        if lib is not None:
            fn = lib.interrupt if kind == hw.TRANSFER_INTERRUPT else lib.bulk
            rc = fn(self._ctx.handle.handle, endpoint, address, length, self._transferred_ref, timeout_ms)
            n = self._transferred.value
            if rc and (rc != LIBUSB_ERROR_TIMEOUT or n == 0):  # a timeout after some data is a short read
                raise lib.error(rc, f"{self.info}: {label} IN 0x{endpoint:02x}")
            return n
        backend = self._ctx.backend
        fn = backend.intr_read if kind == hw.TRANSFER_INTERRUPT else backend.bulk_read
        buf = self._buffer(length)
        try:
            n = int(fn(self._ctx.handle, endpoint, intf, buf, timeout_ms))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"{label} IN 0x{endpoint:02x}") from None
        ctypes.memmove(address, buf.buffer_info()[0], min(n, length))
        return n

    def raw_write(self, endpoint: int, address: int, length: int, timeout_ms: int, kind: int) -> int:
        label = _LABEL[kind]
        if self._ctx is None:
            return self._write(endpoint, ctypes.string_at(address, length), timeout_ms, kind, label)
        endpoint &= 0x7F
        intf = self._routes.get(endpoint | kind << 8)  # keyed by type too: the type check is cached with it
        if intf is None:
            intf = self._route(endpoint, kind, label)
        lib = self._libusb
        if lib is not None:
            fn = lib.interrupt if kind == hw.TRANSFER_INTERRUPT else lib.bulk
            rc = fn(self._ctx.handle.handle, endpoint, address, length, self._transferred_ref, timeout_ms)
            n = self._transferred.value
            if rc and (rc != LIBUSB_ERROR_TIMEOUT or n == 0):
                raise lib.error(rc, f"{self.info}: {label} OUT 0x{endpoint:02x}")
            return n
        backend = self._ctx.backend
        fn = backend.intr_write if kind == hw.TRANSFER_INTERRUPT else backend.bulk_write
        data = array.array("B", ctypes.string_at(address, length))
        try:
            return int(fn(self._ctx.handle, endpoint, intf, data, timeout_ms))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"{label} OUT 0x{endpoint:02x}") from None

    def _control_handle(self, request_type: int) -> Any:
        """pyusb's device handle for a control request the fast path may send; None: take pyusb's path.

        An interface-recipient request goes through pyusb, which claims the interface first."""
        ctx = self._ctx
        if ctx is None or request_type & 0x1F == hw.RECIPIENT_INTERFACE:
            return None
        if ctx.handle is None:
            try:
                ctx.managed_open()
            except usb.core.USBError as e:
                raise self._fail(e, "open") from None
        return ctx.handle

    def raw_control_in(
        self, request_type: int, request: int, value: int, index: int, address: int, length: int, t: int
    ) -> int:
        request_type |= 0x80
        handle = self._control_handle(request_type)
        if handle is None:
            data = self.control_in(request_type, request, value, index, length, t)
            ctypes.memmove(address, data, min(len(data), length))
            return len(data)
        lib = self._libusb
        if lib is not None:
            rc = lib.control(handle.handle, request_type, request, value, index, address, length, t)
            if rc < 0:
                raise lib.error(rc, f"{self.info}: control IN 0x{request:02x}")
            return int(rc)
        buf = self._buffer(length)
        ctx = self._ctx
        assert ctx is not None  # a handle comes from the context (_control_handle)
        try:
            n = int(ctx.backend.ctrl_transfer(handle, request_type, request, value, index, buf, t))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"control IN 0x{request:02x}") from None
        ctypes.memmove(address, buf.buffer_info()[0], min(n, length))
        return n

    def raw_control_out(
        self, request_type: int, request: int, value: int, index: int, address: int, length: int, t: int
    ) -> int:
        request_type &= 0x7F
        handle = self._control_handle(request_type)
        if handle is None:
            data = ctypes.string_at(address, length) if length else b""
            return self.control_out(request_type, request, value, index, data, t)
        lib = self._libusb
        if lib is not None:
            rc = lib.control(handle.handle, request_type, request, value, index, address, length, t)
            if rc < 0:
                raise lib.error(rc, f"{self.info}: control OUT 0x{request:02x}")
            return int(rc)
        out = array.array("B", ctypes.string_at(address, length))
        ctx = self._ctx
        assert ctx is not None  # a handle comes from the context (_control_handle)
        try:
            return int(ctx.backend.ctrl_transfer(handle, request_type, request, value, index, out, t))
        except (usb.core.USBError, ValueError) as e:
            raise self._fail(e, f"control OUT 0x{request:02x}") from None

    def close(self) -> None:
        self._routes.clear()
        # An unplugged device cannot release its interfaces; the handle is gone either way.
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(self._dev)
