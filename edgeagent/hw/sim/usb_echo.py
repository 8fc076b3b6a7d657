"""A USB echo device, like the Arduino echo device of the WASI-USB paper's latency benchmark.

One vendor-specific interface with a bulk pair and an interrupt pair; whatever the host writes to an OUT
endpoint comes back, unchanged and in order, on the IN endpoint of the same type. Control ping: a vendor OUT
request stores a buffer that a vendor IN request returns. A read with nothing queued is NAKed (the host waits
up to its timeout), which is how tests get a transfer that is still pending when the device is unplugged.
"""

from __future__ import annotations

from typing import ClassVar

from edgeagent.hw import usb
from edgeagent.hw.sim.usb_function import Stall, UsbFunction

VENDOR_ID = 0x1209  # pid.codes
PRODUCT_ID = 0x0001  # pid.codes' test PID
EP_BULK_OUT, EP_BULK_IN = 0x01, 0x81
EP_INT_OUT, EP_INT_IN = 0x02, 0x82
REQ_PING_SET = 0x01  # vendor OUT: store wLength bytes
REQ_PING_GET = 0x02  # vendor IN: return the stored bytes
QUEUE_LIMIT = 64 * 1024  # bytes a queue holds before OUT transfers are NAKed
CONTROL_LIMIT = 4096


class EchoDevice(UsbFunction):
    descriptor = usb.DeviceDescriptor(
        VENDOR_ID,
        PRODUCT_ID,
        bcdDevice=0x0100,
        bDeviceClass=0xFF,
        iManufacturer=1,
        iProduct=2,
        iSerialNumber=3,
    )
    configurations = (
        usb.ConfigurationDescriptor(
            1,
            (
                usb.InterfaceDescriptor(
                    0,
                    0,
                    0xFF,
                    0,
                    0,
                    (
                        usb.EndpointDescriptor(EP_BULK_OUT, usb.TRANSFER_BULK, 512),
                        usb.EndpointDescriptor(EP_BULK_IN, usb.TRANSFER_BULK, 512),
                        usb.EndpointDescriptor(EP_INT_OUT, usb.TRANSFER_INTERRUPT, 64, 1),
                        usb.EndpointDescriptor(EP_INT_IN, usb.TRANSFER_INTERRUPT, 64, 1),
                    ),
                ),
            ),
        ),
    )
    STRINGS: ClassVar[dict[int, str]] = {1: "edgeagent", 2: "USB echo", 3: "ECHO0001"}

    def __init__(self, serial: str = "ECHO0001", *, mute: bool = False) -> None:
        super().__init__()
        self.mute = (
            mute  # swallow OUT data: every IN transfer stays NAKed (pending), for timeout/unplug tests
        )
        self.strings[3] = serial
        self.queues: dict[int, bytearray] = {EP_BULK_IN: bytearray(), EP_INT_IN: bytearray()}
        self.ping = b""

    def on_reset(self) -> None:
        for q in self.queues.values():
            q.clear()
        self.ping = b""

    def class_or_vendor_request(
        self, request_type: int, request: int, value: int, index: int, data: bytes, length: int
    ) -> bytes:
        if request_type == usb.TYPE_VENDOR and request == REQ_PING_SET and len(data) <= CONTROL_LIMIT:
            self.ping = bytes(data)
            return b""
        if request_type == usb.TYPE_VENDOR | usb.ENDPOINT_IN and request == REQ_PING_GET:
            return self.ping
        raise Stall

    def data_out(self, endpoint: int, data: bytes) -> int | None:
        if self.mute:
            return len(data)
        queue = self.queues[endpoint | usb.ENDPOINT_IN]
        if len(queue) + len(data) > QUEUE_LIMIT:
            return None
        queue += data
        return len(data)

    def data_in(self, endpoint: int, length: int) -> bytes | None:
        queue = self.queues[endpoint]
        if not queue:
            return None
        out = bytes(queue[:length])
        del queue[:length]
        return out
