"""A usbdevfs (``/dev/bus/usb/BBB/DDD``) ioctl handler for umockdev, driving a simulated USB device model.

It implements what libusb 1.0's Linux backend uses (see the kernel's include/uapi/linux/usbdevice_fs.h and
drivers/usb/core/devio.c): capabilities, claim/release interface, set configuration/interface, clear halt,
reset, the kernel-driver query and disconnect, and asynchronous URBs (submit, reap, discard).

URB life cycle, as in the kernel: a submitted URB the device ACKs completes at once; a NAKed one stays pending
(libusb polls and reaps with REAPURBNDELAY, getting EAGAIN) until the device can serve it, libusb discards it
on timeout (status -ENOENT), or the device is unplugged (status -ESHUTDOWN, libusb's NO_DEVICE; later ioctls
fail with ENODEV). A STALL completes the URB with -EPIPE.
"""

from __future__ import annotations

import errno
import struct
import threading
import traceback
from typing import Any

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402 - gi.require_version must come first

from edgeagent.hw import usb  # noqa: E402
from edgeagent.hw.sim.usb_function import Stall, UsbFunction  # noqa: E402


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("U") << 8) | nr


_NONE, _WRITE, _READ, _RW = 0, 1, 2, 3
URB_FMT = "<BBxxiIxxxxQiiiiiIQ"  # struct usbdevfs_urb (64-bit)
URB_SIZE = struct.calcsize(URB_FMT)
URB_BUFFER_OFFSET = 16

USBDEVFS_CONTROL = _ioc(_RW, 0, 24)
USBDEVFS_BULK = _ioc(_RW, 2, 24)
USBDEVFS_SETINTERFACE = _ioc(_READ, 4, 8)
USBDEVFS_SETCONFIGURATION = _ioc(_READ, 5, 4)
USBDEVFS_GETDRIVER = _ioc(_WRITE, 8, 260)
USBDEVFS_SUBMITURB = _ioc(_READ, 10, URB_SIZE)
USBDEVFS_DISCARDURB = _ioc(_NONE, 11, 0)
USBDEVFS_REAPURB = _ioc(_WRITE, 12, 8)
USBDEVFS_REAPURBNDELAY = _ioc(_WRITE, 13, 8)
USBDEVFS_CLAIMINTERFACE = _ioc(_READ, 15, 4)
USBDEVFS_RELEASEINTERFACE = _ioc(_READ, 16, 4)
USBDEVFS_CONNECTINFO = _ioc(_WRITE, 17, 8)
USBDEVFS_IOCTL = _ioc(_RW, 18, 16)
USBDEVFS_RESET = _ioc(_NONE, 20, 0)
USBDEVFS_CLEAR_HALT = _ioc(_READ, 21, 4)
USBDEVFS_DISCONNECT = _ioc(_NONE, 22, 0)
USBDEVFS_CONNECT = _ioc(_NONE, 23, 0)
USBDEVFS_GET_CAPABILITIES = _ioc(_READ, 26, 4)
USBDEVFS_DISCONNECT_CLAIM = _ioc(_READ, 27, 264)
USBDEVFS_GET_SPEED = _ioc(_NONE, 31, 0)

URB_TYPE_ISO, URB_TYPE_INTERRUPT, URB_TYPE_CONTROL, URB_TYPE_BULK = 0, 1, 2, 3
CAP_ZERO_PACKET, CAP_BULK_CONTINUATION, CAP_NO_PACKET_SIZE_LIM = 0x01, 0x02, 0x04
CAP_BULK_SCATTER_GATHER, CAP_REAP_AFTER_DISCONNECT = 0x08, 0x10
CAPABILITIES = CAP_ZERO_PACKET | CAP_BULK_CONTINUATION | CAP_NO_PACKET_SIZE_LIM | CAP_REAP_AFTER_DISCONNECT
SPEED_HIGH = 3


def _pointer(arg: Any) -> int:
    """The ioctl's argument as a number (GI's ``data`` drops trailing NUL bytes; ``retrieve`` does not)."""
    return int(struct.unpack("<Q", bytes(arg.retrieve()))[0])


class _Urb:
    __slots__ = ("addr", "buffer", "data", "fields")

    def __init__(self, data: Any, fields: list[Any], buffer: Any, addr: int) -> None:
        self.data, self.fields, self.buffer, self.addr = data, fields, buffer, addr


class _Client:
    """Per open file: its URBs and claimed interfaces (usbdevfs state is per file descriptor)."""

    def __init__(self, client: Any) -> None:
        self.client = client  # held so GI keeps one Python wrapper (and so one hash) per connection
        self.pending: list[_Urb] = []
        self.completed: list[_Urb] = []
        self.claimed: set[int] = set()


class UsbdevfsHandler(UMockdev.IoctlBase):
    """One emulated device node. `unplug()` is called from another thread when the device is removed."""

    def __init__(self, model: UsbFunction, *, on_configuration: Any = None) -> None:
        super().__init__()
        self.model = model
        self.on_configuration = on_configuration  # callback(value): keeps sysfs bConfigurationValue true
        self.lock = threading.Lock()
        self.clients: dict[int, _Client] = {}
        self.claims: dict[int, int] = {}  # interface -> client key
        self.unplugged = False
        self.stats: dict[str, int] = {"ioctls": 0, "urbs": 0, "pending": 0}
        self.pending_event = threading.Condition(self.lock)

    # ------------------------------------------------------------ control side (other threads)
    def unplug(self) -> None:
        with self.lock:
            self.unplugged = True
            self.pending_event.notify_all()

    def pending_in(self, endpoint: int | None = None) -> int:
        with self.lock:
            return sum(
                1
                for c in self.clients.values()
                for u in c.pending
                if endpoint is None or u.fields[1] == endpoint
            )

    # ------------------------------------------------------------ umockdev entry points
    def do_client_vanished(self, client: Any) -> None:
        with self.lock:
            key = hash(client)
            self.clients.pop(key, None)
            for interface in [i for i, k in self.claims.items() if k == key]:
                del self.claims[interface]

    def do_handle_ioctl(self, client: Any) -> bool:
        request = client.get_request()
        with self.lock:
            self.stats["ioctls"] += 1
            state = self.clients.get(hash(client))
            if state is None:
                state = self.clients[hash(client)] = _Client(client)
            try:
                result = self._dispatch(request, client, state)
            except OSError as e:
                client.complete(-1, e.errno)
                return True
            except (
                Exception
            ):  # a handler bug: fail the ioctl loudly instead of hanging the program under test
                traceback.print_exc()
                client.complete(-1, errno.EIO)
                return True
        client.complete(result, 0)
        return True

    # ------------------------------------------------------------ ioctls
    def _dispatch(self, request: int, client: Any, state: _Client) -> int:
        arg = client.get_arg()
        if request in (USBDEVFS_REAPURB, USBDEVFS_REAPURBNDELAY):
            return self._reap(arg, state)
        if self.unplugged:
            raise OSError(errno.ENODEV, "unplugged")
        if request == USBDEVFS_SUBMITURB:
            return self._submit(arg, state)
        if request == USBDEVFS_DISCARDURB:
            return self._discard(arg, state)
        if request == USBDEVFS_GET_CAPABILITIES:
            arg.resolve(0, 4).update(0, struct.pack("<I", CAPABILITIES))
            return 0
        if request == USBDEVFS_GET_SPEED:
            return SPEED_HIGH
        if request == USBDEVFS_CLAIMINTERFACE:
            return self._claim(self._u32(arg), client, state)
        if request == USBDEVFS_RELEASEINTERFACE:
            interface = self._u32(arg)
            if interface not in state.claimed:
                raise OSError(errno.EINVAL, "not claimed")
            state.claimed.discard(interface)
            self.claims.pop(interface, None)
            return 0
        if request == USBDEVFS_SETCONFIGURATION:
            return self._set_configuration(self._u32(arg), client)
        if request == USBDEVFS_SETINTERFACE:
            interface, alternate = struct.unpack("<II", bytes(arg.resolve(0, 8).retrieve()))
            self._standard(usb.RECIPIENT_INTERFACE, usb.REQ_SET_INTERFACE, alternate, interface, errno.EINVAL)
            return 0
        if request == USBDEVFS_CLEAR_HALT:
            endpoint = self._u32(arg)
            self._standard(
                usb.RECIPIENT_ENDPOINT,
                usb.REQ_CLEAR_FEATURE,
                usb.FEATURE_ENDPOINT_HALT,
                endpoint,
                errno.EINVAL,
            )
            return 0
        if request == USBDEVFS_RESET:
            configuration = self.model.configuration
            self.model.reset()
            self.model.configuration = configuration  # usbdevfs re-applies the configuration after a reset
            return 0
        if request == USBDEVFS_GETDRIVER:
            data = arg.resolve(0, 260)
            interface = struct.unpack_from("<I", bytes(data.retrieve()))[0]
            driver = self.model.bound_drivers.get(interface)
            if driver is None:
                raise OSError(errno.ENODATA, "no driver")
            data.update(4, driver.encode().ljust(256, b"\0"))
            return 0
        if request == USBDEVFS_IOCTL:
            interface, code = struct.unpack_from("<iI", bytes(arg.resolve(0, 16).retrieve()))
            if code == USBDEVFS_DISCONNECT:
                if self.model.bound_drivers.pop(interface, None) is None:
                    raise OSError(errno.ENODATA, "no driver")
                return 0
            if code == USBDEVFS_CONNECT:
                return 0
            raise OSError(errno.ENOTTY, "unsupported driver ioctl")
        if request == USBDEVFS_DISCONNECT_CLAIM:
            interface = struct.unpack_from("<I", bytes(arg.resolve(0, 264).retrieve()))[0]
            self.model.bound_drivers.pop(interface, None)
            return self._claim(interface, client, state)
        if request == USBDEVFS_CONNECTINFO:
            arg.resolve(0, 8).update(0, struct.pack("<IB3x", 0, 0))
            return 0
        raise OSError(errno.ENOTTY, f"unsupported ioctl {request:#x}")

    @staticmethod
    def _u32(arg: Any) -> int:
        return int(struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0])

    def _standard(self, request_type: int, request: int, value: int, index: int, err: int) -> None:
        try:
            self.model.control(request_type, request, value, index, b"", 0)
        except Stall:
            raise OSError(err, "stalled") from None

    def _claim(self, interface: int, client: Any, state: _Client) -> int:
        cfg = self.model.active()
        if cfg is None or cfg.interface(interface) is None:
            raise OSError(errno.ENOENT, "no such interface")
        if interface in self.model.bound_drivers:
            raise OSError(errno.EBUSY, "bound to a kernel driver")
        owner = self.claims.get(interface)
        if owner is not None and owner != hash(client):
            raise OSError(errno.EBUSY, "claimed by another file")
        self.claims[interface] = hash(client)
        state.claimed.add(interface)
        return 0

    def _set_configuration(self, value: int, client: Any) -> int:
        if any(k != hash(client) for k in self.claims.values()):
            raise OSError(errno.EBUSY, "interfaces claimed by another file")
        self._standard(usb.RECIPIENT_DEVICE, usb.REQ_SET_CONFIGURATION, value, 0, errno.EINVAL)
        if self.on_configuration is not None:
            self.on_configuration(value)
        return 0

    # ------------------------------------------------------------ URBs
    def _submit(self, arg: Any, state: _Client) -> int:
        address = _pointer(arg)  # before resolve(), which swaps in the address of umockdev's local copy
        data = arg.resolve(0, URB_SIZE)
        fields = list(struct.unpack(URB_FMT, bytes(data.retrieve())))
        urb_type, length = fields[0], fields[5]
        if urb_type not in (URB_TYPE_CONTROL, URB_TYPE_BULK, URB_TYPE_INTERRUPT):
            raise OSError(errno.EINVAL, "isochronous transfers are not emulated")
        buffer = data.resolve(URB_BUFFER_OFFSET, length) if length else None
        urb = _Urb(data, fields, buffer, address)
        self.stats["urbs"] += 1
        if urb_type != URB_TYPE_CONTROL:
            endpoint = fields[1]
            desc = self.model.endpoint(endpoint)
            expected = URB_TYPE_BULK if urb_type == URB_TYPE_BULK else URB_TYPE_INTERRUPT
            if (
                desc is not None
                and {usb.TRANSFER_BULK: URB_TYPE_BULK, usb.TRANSFER_INTERRUPT: URB_TYPE_INTERRUPT}.get(
                    desc.transfer_type
                )
                != expected
            ):
                raise OSError(errno.EINVAL, "URB type does not match the endpoint")
        if not self._try(urb):
            state.pending.append(urb)
            self.stats["pending"] += 1
            self.pending_event.notify_all()
        else:
            state.completed.append(urb)
            self._retry(state)
        return 0

    def _try(self, urb: _Urb) -> bool:
        """Runs the URB against the model; False if the device NAKed it."""
        fields = urb.fields
        urb_type, endpoint, length = fields[0], fields[1], fields[5]
        payload = bytes(urb.buffer.retrieve()) if urb.buffer is not None else b""
        status, actual = 0, 0
        try:
            if urb_type == URB_TYPE_CONTROL:
                request_type, request, value, index, w_length = struct.unpack_from("<BBHHH", payload)
                if request_type & usb.ENDPOINT_IN:
                    reply = self.model.control(request_type, request, value, index, b"", w_length)
                    urb.buffer.update(8, reply)
                    actual = len(reply)
                else:
                    self.model.control(
                        request_type, request, value, index, payload[8 : 8 + w_length], w_length
                    )
                    actual = w_length
            elif endpoint & usb.ENDPOINT_IN:
                data_in = self.model.transfer_in(endpoint, length)
                if data_in is None:
                    return False
                if data_in:
                    urb.buffer.update(0, data_in)
                actual = len(data_in)
            else:
                taken = self.model.transfer_out(endpoint, payload)
                if taken is None:
                    return False
                actual = taken
        except Stall:
            status = -errno.EPIPE
        self._finish(urb, status, actual)
        return True

    @staticmethod
    def _finish(urb: _Urb, status: int, actual: int) -> None:
        urb.fields[2], urb.fields[6] = status, actual
        urb.data.update(0, struct.pack(URB_FMT, *urb.fields))

    def _retry(self, state: _Client) -> None:
        """NAKed URBs get another chance whenever something else moved (e.g. an OUT fed an echo IN)."""
        for urb in list(state.pending):
            if self.unplugged:
                self._finish(urb, -errno.ESHUTDOWN, 0)
            elif not self._try(urb):
                continue
            state.pending.remove(urb)
            state.completed.append(urb)

    def _reap(self, arg: Any, state: _Client) -> int:
        if state.pending:
            self._retry(state)
        if not state.completed:
            raise OSError(errno.ENODEV if self.unplugged else errno.EAGAIN, "nothing to reap")
        urb = state.completed.pop(0)
        arg.resolve(0, 8).set_ptr(0, urb.data)
        return 0

    def _discard(self, arg: Any, state: _Client) -> int:
        addr = _pointer(arg)
        for urb in state.pending:
            if urb.addr == addr:
                state.pending.remove(urb)
                self._finish(urb, -errno.ENOENT, 0)
                state.completed.append(urb)
                return 0
        raise OSError(errno.EINVAL, "no such URB")


def sysfs_description(model: UsbFunction, *, bus: int, address: int, port: int) -> tuple[str, str, str]:
    """(syspath, device node, umockdev description) of a USB device as the kernel shows it in sysfs."""
    syspath = f"/devices/pci0000:00/0000:00:14.0/usb{bus}/{bus}-{port}"
    node = f"/dev/bus/usb/{bus:03d}/{address:03d}"
    minor = (bus - 1) * 128 + address - 1
    d = model.descriptor
    description = (
        f"P: {syspath}\n"
        f"N: bus/usb/{bus:03d}/{address:03d}\n"
        f"E: BUSNUM={bus:03d}\nE: DEVNUM={address:03d}\nE: DEVNAME={node}\nE: DEVTYPE=usb_device\n"
        f"E: DRIVER=usb\nE: PRODUCT={d.idVendor:x}/{d.idProduct:x}/{d.bcdDevice:x}\nE: SUBSYSTEM=usb\n"
        f"E: MAJOR=189\nE: MINOR={minor}\n"
        f"A: busnum={bus}\\n\nA: devnum={address}\\n\nA: devpath={port}\nA: speed=480\n"
        f"A: idVendor={d.idVendor:04x}\nA: idProduct={d.idProduct:04x}\n"
        f"A: bConfigurationValue={model.configuration or ''}\n"
        f"A: bNumConfigurations={len(model.configurations)}\n"
        f"A: dev=189:{minor}\n"
        f"H: descriptors={model.descriptors_blob().hex().upper()}\n"
    )
    return syspath, node, description
