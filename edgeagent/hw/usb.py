"""The USB device protocol every backend implements (pyusb/libusb, the in-process simulator).

Why a protocol of our own instead of pyusb's objects: the Wasm host needs one small, typed surface whose
errors are libusb's codes (the `component:usb` WIT `libusb-error` enum), whatever sits underneath. The
descriptor types use the USB 2.0 specification's field names (chapter 9.6) so they can be held against the
spec and against pyusb, and they pack to / parse from the wire format, which is what the umockdev emulation
serves from sysfs and what a guest receives.

Errors: every failure is a `UsbError` carrying a `UsbErrorCode` whose value is the libusb number
(LIBUSB_ERROR_IO = -1 ... LIBUSB_ERROR_OTHER = -99), so the code crosses into a guest unchanged.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import struct
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from edgeagent.errors import HardwareError


class UsbErrorCode(enum.IntEnum):
    """libusb's error numbers; `wit_name` is the matching case of the WIT `libusb-error` enum."""

    IO = -1
    INVALID_PARAM = -2
    ACCESS = -3
    NO_DEVICE = -4
    NOT_FOUND = -5
    BUSY = -6
    TIMEOUT = -7
    OVERFLOW = -8
    PIPE = -9
    INTERRUPTED = -10
    NO_MEM = -11
    NOT_SUPPORTED = -12
    OTHER = -99

    @property
    def wit_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_libusb(cls, value: int) -> UsbErrorCode:
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


class UsbError(HardwareError):
    """A USB operation failed; `code` says how, in libusb's terms."""

    def __init__(self, code: UsbErrorCode, message: str) -> None:
        super().__init__(f"usb {code.wit_name}: {message}")
        self.code = code
        self.detail = message


# ---------------------------------------------------------------- descriptors (USB 2.0 §9.6)
DT_DEVICE, DT_CONFIG, DT_STRING, DT_INTERFACE, DT_ENDPOINT = 1, 2, 3, 4, 5
ENDPOINT_IN = 0x80
TRANSFER_CONTROL, TRANSFER_ISOCHRONOUS, TRANSFER_BULK, TRANSFER_INTERRUPT = 0, 1, 2, 3

_DEVICE_FMT = "<BBHBBBBHHHBBBB"
_CONFIG_FMT = "<BBHBBBBB"
_INTERFACE_FMT = "<BBBBBBBBB"
_ENDPOINT_FMT = "<BBBBHB"


@dataclasses.dataclass(frozen=True)
class EndpointDescriptor:
    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int = 0

    @property
    def direction_in(self) -> bool:
        return bool(self.bEndpointAddress & ENDPOINT_IN)

    @property
    def transfer_type(self) -> int:
        return self.bmAttributes & 0x03

    def pack(self) -> bytes:
        return struct.pack(
            _ENDPOINT_FMT,
            7,
            DT_ENDPOINT,
            self.bEndpointAddress,
            self.bmAttributes,
            self.wMaxPacketSize,
            self.bInterval,
        )


@dataclasses.dataclass(frozen=True)
class InterfaceDescriptor:
    bInterfaceNumber: int
    bAlternateSetting: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    endpoints: tuple[EndpointDescriptor, ...] = ()
    iInterface: int = 0

    def pack(self) -> bytes:
        head = struct.pack(
            _INTERFACE_FMT,
            9,
            DT_INTERFACE,
            self.bInterfaceNumber,
            self.bAlternateSetting,
            len(self.endpoints),
            self.bInterfaceClass,
            self.bInterfaceSubClass,
            self.bInterfaceProtocol,
            self.iInterface,
        )
        return head + b"".join(e.pack() for e in self.endpoints)


@dataclasses.dataclass(frozen=True)
class ConfigurationDescriptor:
    bConfigurationValue: int
    interfaces: tuple[InterfaceDescriptor, ...]
    bmAttributes: int = 0x80
    bMaxPower: int = 50  # units of 2 mA
    iConfiguration: int = 0

    @property
    def bNumInterfaces(self) -> int:
        return len({i.bInterfaceNumber for i in self.interfaces})

    def pack(self) -> bytes:
        body = b"".join(i.pack() for i in self.interfaces)
        return (
            struct.pack(
                _CONFIG_FMT,
                9,
                DT_CONFIG,
                9 + len(body),
                self.bNumInterfaces,
                self.bConfigurationValue,
                self.iConfiguration,
                self.bmAttributes,
                self.bMaxPower,
            )
            + body
        )

    def interface(self, number: int, alternate: int = 0) -> InterfaceDescriptor | None:
        for i in self.interfaces:
            if i.bInterfaceNumber == number and i.bAlternateSetting == alternate:
                return i
        return None

    def endpoint(self, address: int) -> EndpointDescriptor | None:
        for i in self.interfaces:
            for e in i.endpoints:
                if e.bEndpointAddress == address:
                    return e
        return None


@dataclasses.dataclass(frozen=True)
class DeviceDescriptor:
    idVendor: int
    idProduct: int
    bcdDevice: int = 0x0100
    bcdUSB: int = 0x0200
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    iManufacturer: int = 0
    iProduct: int = 0
    iSerialNumber: int = 0
    bNumConfigurations: int = 1

    def pack(self) -> bytes:
        return struct.pack(
            _DEVICE_FMT,
            18,
            DT_DEVICE,
            self.bcdUSB,
            self.bDeviceClass,
            self.bDeviceSubClass,
            self.bDeviceProtocol,
            self.bMaxPacketSize0,
            self.idVendor,
            self.idProduct,
            self.bcdDevice,
            self.iManufacturer,
            self.iProduct,
            self.iSerialNumber,
            self.bNumConfigurations,
        )

    @classmethod
    def parse(cls, raw: bytes) -> DeviceDescriptor:
        if len(raw) < 18 or raw[1] != DT_DEVICE:
            raise UsbError(UsbErrorCode.IO, f"malformed device descriptor ({len(raw)} bytes)")
        (_, _, bcd_usb, cls_, sub, proto, mps0, vid, pid, bcd_dev, i_man, i_prod, i_ser, n_cfg) = (
            struct.unpack_from(_DEVICE_FMT, raw)
        )
        return cls(vid, pid, bcd_dev, bcd_usb, cls_, sub, proto, mps0, i_man, i_prod, i_ser, n_cfg)


def _walk(raw: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 2 <= len(raw):
        length = raw[pos]
        if length < 2 or pos + length > len(raw):
            raise UsbError(UsbErrorCode.IO, f"malformed descriptor at offset {pos}")
        yield raw[pos + 1], raw[pos : pos + length]
        pos += length


def parse_configuration(raw: bytes) -> ConfigurationDescriptor:
    """Parses a whole configuration descriptor (wTotalLength bytes); class descriptors are skipped."""
    if len(raw) < 9 or raw[1] != DT_CONFIG:
        raise UsbError(UsbErrorCode.IO, "malformed configuration descriptor")
    _, _, total, _, value, i_cfg, attrs, power = struct.unpack_from(_CONFIG_FMT, raw)
    interfaces: list[InterfaceDescriptor] = []
    current: dict[str, object] | None = None
    endpoints: list[EndpointDescriptor] = []

    def flush() -> None:
        if current is not None:
            interfaces.append(InterfaceDescriptor(endpoints=tuple(endpoints), **current))  # type: ignore[arg-type]

    for dtype, d in _walk(raw[9:total]):
        if dtype == DT_INTERFACE and len(d) >= 9:
            flush()
            _, _, num, alt, _, icls, isub, iproto, istr = struct.unpack_from(_INTERFACE_FMT, d)
            current = {
                "bInterfaceNumber": num,
                "bAlternateSetting": alt,
                "bInterfaceClass": icls,
                "bInterfaceSubClass": isub,
                "bInterfaceProtocol": iproto,
                "iInterface": istr,
            }
            endpoints = []
        elif dtype == DT_ENDPOINT and len(d) >= 7 and current is not None:
            _, _, addr, attrs_e, mps, interval = struct.unpack_from(_ENDPOINT_FMT, d)
            endpoints.append(EndpointDescriptor(addr, attrs_e, mps, interval))
    flush()
    return ConfigurationDescriptor(value, tuple(interfaces), attrs, power, i_cfg)


@dataclasses.dataclass(frozen=True)
class UsbDeviceInfo:
    """What enumeration tells about a device before it is opened."""

    bus: int
    address: int
    descriptor: DeviceDescriptor
    configurations: tuple[ConfigurationDescriptor, ...]
    speed: int = 3  # libusb_speed: 1 low, 2 full, 3 high, 4 super
    port_numbers: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        return (self.bus, self.address)

    @property
    def vid_pid(self) -> tuple[int, int]:
        return (self.descriptor.idVendor, self.descriptor.idProduct)

    def __str__(self) -> str:
        d = self.descriptor
        return f"{d.idVendor:04x}:{d.idProduct:04x} on bus {self.bus} addr {self.address}"


class HotplugKind(enum.IntEnum):
    """The WIT `device-connection-event` cases (0 is `pending`: nothing happened)."""

    ARRIVED = 1
    LEFT = 2


@dataclasses.dataclass(frozen=True)
class HotplugEvent:
    kind: HotplugKind
    device: UsbDeviceInfo


@runtime_checkable
class UsbDevice(Protocol):
    """An opened device. Every method raises `UsbError`; timeouts are in milliseconds (0 = wait forever)."""

    info: UsbDeviceInfo

    def get_configuration(self) -> int: ...
    def set_configuration(self, value: int) -> None: ...
    def claim_interface(self, interface: int) -> None: ...
    def release_interface(self, interface: int) -> None: ...
    def set_interface_alt_setting(self, interface: int, alternate: int) -> None: ...
    def clear_halt(self, endpoint: int) -> None: ...
    def reset(self) -> None: ...
    def kernel_driver_active(self, interface: int) -> bool: ...
    def detach_kernel_driver(self, interface: int) -> None: ...
    def get_string(self, index: int) -> str: ...

    def control_in(
        self, request_type: int, request: int, value: int, index: int, length: int, timeout_ms: int
    ) -> bytes: ...
    def control_out(
        self, request_type: int, request: int, value: int, index: int, data: bytes, timeout_ms: int
    ) -> int: ...
    def bulk_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes: ...
    def bulk_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int: ...
    def interrupt_in(self, endpoint: int, length: int, timeout_ms: int) -> bytes: ...
    def interrupt_out(self, endpoint: int, data: bytes, timeout_ms: int) -> int: ...
    def close(self) -> None: ...


class RawTransfers:
    """Transfers between a device and raw memory, for the Wasm host: guest buffers move without Python copies.

    ``address`` is the start of ``length`` bytes the caller has bounds-checked and keeps valid for the call.
    A device may implement ``raw_read(endpoint, address, length, timeout_ms, kind)``, ``raw_write(...)``,
    ``raw_control_in(request_type, request, value, index, address, length, timeout_ms)`` and
    ``raw_control_out(...)`` itself (the pyusb backend does, straight into libusb); otherwise they are built
    here on its bytes methods with one copy each way. ``kind`` is TRANSFER_BULK or TRANSFER_INTERRUPT.
    All return the bytes moved and raise `UsbError`.
    """

    __slots__ = ("control_in", "control_out", "read", "write")

    def __init__(self, dev: UsbDevice) -> None:
        self.read: Callable[[int, int, int, int, int], int] = getattr(dev, "raw_read", None) or _read_via(dev)
        self.write: Callable[[int, int, int, int, int], int] = getattr(dev, "raw_write", None) or _write_via(
            dev
        )
        self.control_in: Callable[[int, int, int, int, int, int, int], int] = getattr(
            dev, "raw_control_in", None
        ) or _control_in_via(dev)
        self.control_out: Callable[[int, int, int, int, int, int, int], int] = getattr(
            dev, "raw_control_out", None
        ) or _control_out_via(dev)


def _read_via(dev: UsbDevice) -> Callable[[int, int, int, int, int], int]:
    bulk, interrupt, memmove = dev.bulk_in, dev.interrupt_in, ctypes.memmove

    def read(endpoint: int, address: int, length: int, timeout_ms: int, kind: int) -> int:
        data = (interrupt if kind == TRANSFER_INTERRUPT else bulk)(endpoint, length, timeout_ms)
        n = min(len(data), length)
        if n:
            memmove(address, data, n)
        return n

    return read


def _write_via(dev: UsbDevice) -> Callable[[int, int, int, int, int], int]:
    bulk, interrupt, string_at = dev.bulk_out, dev.interrupt_out, ctypes.string_at

    def write(endpoint: int, address: int, length: int, timeout_ms: int, kind: int) -> int:
        return (interrupt if kind == TRANSFER_INTERRUPT else bulk)(
            endpoint, string_at(address, length), timeout_ms
        )

    return write


def _control_in_via(dev: UsbDevice) -> Callable[[int, int, int, int, int, int, int], int]:
    control_in, memmove = dev.control_in, ctypes.memmove

    def read(rtype: int, request: int, value: int, index: int, address: int, length: int, t: int) -> int:
        data = control_in(rtype, request, value, index, length, t)
        n = min(len(data), length)
        if n:
            memmove(address, data, n)
        return n

    return read


def _control_out_via(dev: UsbDevice) -> Callable[[int, int, int, int, int, int, int], int]:
    control_out, string_at = dev.control_out, ctypes.string_at

    def write(rtype: int, request: int, value: int, index: int, address: int, length: int, t: int) -> int:
        return control_out(rtype, request, value, index, string_at(address, length) if length else b"", t)

    return write


@runtime_checkable
class UsbBackend(Protocol):
    """A source of devices: enumerate, open, and report hot-plug events since the last call."""

    def devices(self) -> list[UsbDeviceInfo]: ...
    def open(self, info: UsbDeviceInfo) -> UsbDevice: ...
    def poll_events(self, timeout_ms: int = 0) -> list[HotplugEvent]: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------- standard requests (USB 2.0 §9.4)
REQ_GET_STATUS, REQ_CLEAR_FEATURE, REQ_SET_FEATURE = 0x00, 0x01, 0x03
REQ_GET_DESCRIPTOR, REQ_GET_CONFIGURATION, REQ_SET_CONFIGURATION = 0x06, 0x08, 0x09
REQ_GET_INTERFACE, REQ_SET_INTERFACE = 0x0A, 0x0B
FEATURE_ENDPOINT_HALT = 0
RECIPIENT_DEVICE, RECIPIENT_INTERFACE, RECIPIENT_ENDPOINT = 0, 1, 2
TYPE_STANDARD, TYPE_CLASS, TYPE_VENDOR = 0x00, 0x20, 0x40


def string_descriptor(text: str) -> bytes:
    body = text.encode("utf-16-le")
    return bytes([2 + len(body), DT_STRING]) + body


LANGID_EN_US = b"\x04\x03\x09\x04"
