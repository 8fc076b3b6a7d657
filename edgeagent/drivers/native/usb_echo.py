"""Native twin of drivers/usb_echo.c: ping the echo device over bulk, interrupt and control with plain pyusb.

The benchmark's baseline. It does exactly what the Wasm driver does per ping (one OUT transfer, one IN
transfer of the same length, compare), so the measured difference is the cost of running the driver in Wasm.
"""

from __future__ import annotations

import contextlib
from typing import Any

import usb.core
import usb.util

from edgeagent.errors import HardwareError
from edgeagent.hw.pyusb_backend import usb_error
from edgeagent.hw.sim import usb_echo as model

NAME = "usb_echo (native)"
INTERFACE = 0


class NativeUsbEcho:
    """An opened echo device; `ping_*` send a payload and return what came back."""

    def __init__(self, dev: Any, *, timeout_ms: int = 1000) -> None:
        self.dev = dev
        self.timeout_ms = timeout_ms
        try:
            try:
                configured = dev.get_active_configuration().bConfigurationValue
            except usb.core.USBError:
                configured = 0
            if configured != 1:
                dev.set_configuration(1)
            usb.util.claim_interface(dev, INTERFACE)
        except usb.core.USBError as e:
            raise usb_error(e, f"driver {NAME}: open") from None

    @classmethod
    def find(cls, *, backend: Any = None, timeout_ms: int = 1000) -> NativeUsbEcho:
        dev = usb.core.find(idVendor=model.VENDOR_ID, idProduct=model.PRODUCT_ID, backend=backend)
        if dev is None:
            raise HardwareError(f"driver {NAME}: no echo device {model.VENDOR_ID:04x}:{model.PRODUCT_ID:04x}")
        return cls(dev, timeout_ms=timeout_ms)

    def _ping(self, out_ep: int, in_ep: int, payload: bytes, what: str) -> bytes:
        try:
            self.dev.write(out_ep, payload, self.timeout_ms)
            back = self.dev.read(in_ep, len(payload), self.timeout_ms).tobytes()
        except usb.core.USBError as e:
            raise usb_error(e, f"driver {NAME}: {what} ping") from None
        if back != payload:
            raise HardwareError(f"driver {NAME}: {what} ping came back different ({len(back)} bytes)")
        return back

    def ping_bulk(self, payload: bytes) -> bytes:
        return self._ping(model.EP_BULK_OUT, model.EP_BULK_IN, payload, "bulk")

    def ping_interrupt(self, payload: bytes) -> bytes:
        return self._ping(model.EP_INT_OUT, model.EP_INT_IN, payload, "interrupt")

    def ping_control(self, payload: bytes) -> bytes:
        try:
            self.dev.ctrl_transfer(0x40, model.REQ_PING_SET, 0, 0, payload, self.timeout_ms)
            back = self.dev.ctrl_transfer(
                0xC0, model.REQ_PING_GET, 0, 0, len(payload), self.timeout_ms
            ).tobytes()
        except usb.core.USBError as e:
            raise usb_error(e, f"driver {NAME}: control ping") from None
        if back != payload:
            raise HardwareError(f"driver {NAME}: control ping came back different ({len(back)} bytes)")
        return back

    def close(self) -> None:
        with contextlib.suppress(usb.core.USBError):  # unplugged: nothing left to release
            usb.util.release_interface(self.dev, INTERFACE)
        usb.util.dispose_resources(self.dev)
