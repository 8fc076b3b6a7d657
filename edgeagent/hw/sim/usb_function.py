"""The device side of a simulated USB device: chapter-9 behaviour shared by every model.

A model sees what a device sees on the wire: SETUP packets on endpoint 0 and data on its other endpoints. It
never knows which host stack drives it, so one model serves the in-process backend, pyusb's pure-Python
backend and the umockdev usbdevfs handler alike.

Outcomes follow USB handshakes: a transfer returns data (ACK), returns ``None`` (NAK: nothing to send or no
room yet; the host retries until its timeout), or raises `Stall` (STALL: the host sees ``pipe``). A halted
endpoint stalls every transfer until the host clears the halt (CLEAR_FEATURE(ENDPOINT_HALT)); a control
endpoint stall is protocol stall and ends with the next SETUP packet, as in the spec.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from edgeagent.hw import usb


class Stall(Exception):
    """The device answered STALL."""


class UsbFunction:
    """Base of a simulated device: descriptors, standard requests, halt state and the kernel-driver binding.

    Subclasses provide descriptors and override `class_or_vendor_request`, `data_out` and `data_in`.
    All entry points hold `lock`, so a handler thread and a test thread may both poke the model.
    """

    descriptor: usb.DeviceDescriptor
    configurations: tuple[usb.ConfigurationDescriptor, ...]
    STRINGS: ClassVar[dict[int, str]] = {}
    """String descriptors by index; an instance copies them to ``strings`` (a serial number may differ)."""
    # Interfaces a kernel driver binds when the device is plugged in (interface -> driver name),
    # e.g. usb-storage.
    kernel_drivers: ClassVar[dict[int, str]] = {}

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.configuration = 0
        self.alternate: dict[int, int] = {}
        self.halted: set[int] = set()
        self.bound_drivers = dict(self.kernel_drivers)
        self.strings: dict[int, str] = dict(self.STRINGS)

    # ------------------------------------------------------------ descriptors
    def descriptors_blob(self) -> bytes:
        """The sysfs ``descriptors`` file: device descriptor followed by every configuration."""
        return self.descriptor.pack() + b"".join(c.pack() for c in self.configurations)

    def active(self) -> usb.ConfigurationDescriptor | None:
        for c in self.configurations:
            if c.bConfigurationValue == self.configuration:
                return c
        return None

    def endpoint(self, address: int) -> usb.EndpointDescriptor | None:
        cfg = self.active()
        if cfg is None:
            return None
        for i in cfg.interfaces:
            if self.alternate.get(i.bInterfaceNumber, 0) != i.bAlternateSetting:
                continue
            for e in i.endpoints:
                if e.bEndpointAddress == address:
                    return e
        return None

    # ------------------------------------------------------------ bus events
    def reset(self) -> None:
        """Port reset: back to the default state (unconfigured, no halts); subclasses clear theirs."""
        with self.lock:
            self.configuration = 0
            self.alternate.clear()
            self.halted.clear()
            self.on_reset()

    def on_reset(self) -> None:
        """Subclass hook: drop queued data and protocol state."""

    # ------------------------------------------------------------ endpoint 0
    def control(
        self, request_type: int, request: int, value: int, index: int, data: bytes, length: int
    ) -> bytes:
        """One control transfer. OUT requests get `data`; IN requests answer at most `length` bytes."""
        with self.lock:
            kind = request_type & 0x60
            if kind == usb.TYPE_STANDARD:
                out = self.standard_request(request_type, request, value, index, data)
            else:
                out = self.class_or_vendor_request(request_type, request, value, index, data, length)
            return out[:length] if request_type & usb.ENDPOINT_IN else b""

    def standard_request(self, request_type: int, request: int, value: int, index: int, data: bytes) -> bytes:
        recipient = request_type & 0x1F
        if request == usb.REQ_GET_DESCRIPTOR:
            dtype, idx = value >> 8, value & 0xFF
            if dtype == usb.DT_DEVICE:
                return self.descriptor.pack()
            if dtype == usb.DT_CONFIG and idx < len(self.configurations):
                return self.configurations[idx].pack()
            if dtype == usb.DT_STRING:
                if idx == 0:
                    return usb.LANGID_EN_US
                if idx in self.strings:
                    return usb.string_descriptor(self.strings[idx])
            raise Stall
        if request == usb.REQ_GET_CONFIGURATION:
            return bytes([self.configuration])
        if request == usb.REQ_SET_CONFIGURATION:
            if value != 0 and not any(c.bConfigurationValue == value for c in self.configurations):
                raise Stall
            self.configuration = value
            self.alternate.clear()
            self.halted.clear()
            return b""
        if request == usb.REQ_SET_INTERFACE:
            cfg = self.active()
            if cfg is None or cfg.interface(index, value) is None:
                raise Stall
            self.alternate[index] = value
            return b""
        if request == usb.REQ_GET_INTERFACE:
            return bytes([self.alternate.get(index, 0)])
        if request == usb.REQ_GET_STATUS:
            if recipient == usb.RECIPIENT_ENDPOINT:
                return bytes([1 if index in self.halted else 0, 0])
            return b"\x00\x00"
        if request in (usb.REQ_CLEAR_FEATURE, usb.REQ_SET_FEATURE) and recipient == usb.RECIPIENT_ENDPOINT:
            if value != usb.FEATURE_ENDPOINT_HALT or (index & 0x7F and self.endpoint(index) is None):
                raise Stall
            if request == usb.REQ_SET_FEATURE:
                self.halted.add(index)
            else:
                self.halted.discard(index)
                self.on_clear_halt(index)
            return b""
        raise Stall

    def on_clear_halt(self, endpoint: int) -> None:
        """Subclass hook: a halt was cleared (data toggle reset)."""

    def class_or_vendor_request(
        self, request_type: int, request: int, value: int, index: int, data: bytes, length: int
    ) -> bytes:
        raise Stall

    # ------------------------------------------------------------ other endpoints
    def transfer_out(self, endpoint: int, data: bytes) -> int | None:
        """Host-to-device data on a bulk/interrupt endpoint: bytes taken, or None (NAK)."""
        with self.lock:
            self._check_endpoint(endpoint)
            return self.data_out(endpoint, data)

    def transfer_in(self, endpoint: int, length: int) -> bytes | None:
        """Device-to-host data: at most `length` bytes (short = end of transfer), or None (NAK)."""
        with self.lock:
            self._check_endpoint(endpoint)
            return self.data_in(endpoint, length)

    def _check_endpoint(self, endpoint: int) -> None:
        if self.endpoint(endpoint) is None or endpoint in self.halted:
            raise Stall

    def data_out(self, endpoint: int, data: bytes) -> int | None:
        raise Stall

    def data_in(self, endpoint: int, length: int) -> bytes | None:
        raise Stall

    def halt(self, endpoint: int) -> None:
        """The device itself halts an endpoint (e.g. BOT on an invalid CBW)."""
        with self.lock:
            self.halted.add(endpoint)
