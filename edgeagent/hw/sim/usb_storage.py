"""A USB mass-storage device: Bulk-Only Transport (BOT 1.0) carrying SCSI commands, backed by a bytearray.

The throughput benchmark's device. Every command is a 31-byte Command Block Wrapper (CBW) on bulk OUT, an
optional data phase, and a 13-byte Command Status Wrapper (CSW) on bulk IN. Implemented SCSI commands (SPC-2 /
SBC-2 names): TEST UNIT READY, REQUEST SENSE, INQUIRY, MODE SENSE(6), READ CAPACITY(10), READ(10), WRITE(10).
A failing command with a data phase STALLs the data endpoint, as BOT 6.7 prescribes; the host clears the halt,
reads the CSW (status 1) and asks REQUEST SENSE. An invalid CBW halts both endpoints until a Bulk-Only Mass
Storage Reset, like a real device.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from edgeagent.hw import usb
from edgeagent.hw.sim.usb_function import Stall, UsbFunction

VENDOR_ID = 0x1209
PRODUCT_ID = 0x0002
EP_OUT, EP_IN = 0x02, 0x81
BLOCK_SIZE = 512

CBW_SIGNATURE, CSW_SIGNATURE = 0x43425355, 0x53425355  # "USBC", "USBS"
CBW_FMT, CSW_FMT = "<IIIBBB16s", "<IIIB"
CBW_LEN, CSW_LEN = 31, 13
CSW_PASSED, CSW_FAILED, CSW_PHASE_ERROR = 0, 1, 2
REQ_GET_MAX_LUN, REQ_BOMS_RESET = 0xFE, 0xFF

TEST_UNIT_READY, REQUEST_SENSE, INQUIRY, MODE_SENSE_6 = 0x00, 0x03, 0x12, 0x1A
READ_CAPACITY_10, READ_10, WRITE_10 = 0x25, 0x28, 0x2A
SENSE_NO_SENSE, SENSE_ILLEGAL_REQUEST = 0x0, 0x5
ASC_INVALID_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_INVALID_FIELD = 0x20, 0x21, 0x24


class MassStorageDevice(UsbFunction):
    descriptor = usb.DeviceDescriptor(
        VENDOR_ID, PRODUCT_ID, bcdDevice=0x0100, iManufacturer=1, iProduct=2, iSerialNumber=3
    )
    configurations = (
        usb.ConfigurationDescriptor(
            1,
            (
                usb.InterfaceDescriptor(
                    0,
                    0,
                    0x08,
                    0x06,
                    0x50,  # mass storage, SCSI transparent command set, bulk-only
                    (
                        usb.EndpointDescriptor(EP_IN, usb.TRANSFER_BULK, 512),
                        usb.EndpointDescriptor(EP_OUT, usb.TRANSFER_BULK, 512),
                    ),
                ),
            ),
        ),
    )
    STRINGS: ClassVar[dict[int, str]] = {1: "edgeagent", 2: "USB disk", 3: "DISK0001"}
    kernel_drivers = {0: "usb-storage"}  # noqa: RUF012 - bound at plug-in, as on a real host

    def __init__(self, size: int = 4 << 20, serial: str = "DISK0001") -> None:
        super().__init__()
        if size % BLOCK_SIZE:
            raise ValueError(f"size must be a multiple of {BLOCK_SIZE}")
        self.strings[3] = serial
        self.media = bytearray(size)
        self.blocks = size // BLOCK_SIZE
        self._idle()
        self.sense = (SENSE_NO_SENSE, 0)

    def _idle(self) -> None:
        self.state = "cbw"  # cbw | data-in | data-out | csw
        self.tag = 0
        self.expected = 0
        self.pending_in = bytearray()
        self.pending_out = bytearray()
        self.write_lba = 0
        self.status = CSW_PASSED
        self.residue = 0

    def on_reset(self) -> None:
        self._idle()

    # ------------------------------------------------------------ class requests (BOT 3.1, 3.2)
    def class_or_vendor_request(
        self, request_type: int, request: int, value: int, index: int, data: bytes, length: int
    ) -> bytes:
        if request_type == 0xA1 and request == REQ_GET_MAX_LUN:
            return b"\x00"
        if request_type == 0x21 and request == REQ_BOMS_RESET:
            self._idle()
            return b""
        raise Stall

    # ------------------------------------------------------------ bulk endpoints
    def data_out(self, endpoint: int, data: bytes) -> int | None:
        if self.state == "cbw":
            self._command(bytes(data))
            return len(data)
        if self.state == "data-out":
            self.pending_out += data
            if len(self.pending_out) >= self.expected:
                start = self.write_lba * BLOCK_SIZE
                self.media[start : start + self.expected] = self.pending_out[: self.expected]
                self._finish(CSW_PASSED, 0)
            return len(data)
        raise Stall  # host sent data while the device has data or status to deliver: phase error

    def data_in(self, endpoint: int, length: int) -> bytes | None:
        if self.state == "data-in":
            out = bytes(self.pending_in[:length])
            del self.pending_in[:length]
            if not self.pending_in:
                self.state = "csw"
            return out
        if self.state == "csw":
            csw = struct.pack(CSW_FMT, CSW_SIGNATURE, self.tag, self.residue, self.status)
            self._idle()
            return csw
        return None  # nothing to say until a CBW arrives

    def _finish(self, status: int, residue: int) -> None:
        self.status, self.residue = status, residue
        self.state = "csw"

    def _fail(self, asc: int, direction_in: bool) -> None:
        """CHECK CONDITION with ILLEGAL REQUEST sense; a pending data phase is refused by a STALL."""
        self.sense = (SENSE_ILLEGAL_REQUEST, asc)
        self._finish(CSW_FAILED, self.expected)
        if self.expected:
            self.halt(EP_IN if direction_in else EP_OUT)

    # ------------------------------------------------------------ SCSI
    def _command(self, raw: bytes) -> None:
        if len(raw) != CBW_LEN or struct.unpack_from("<I", raw)[0] != CBW_SIGNATURE:
            self.halt(EP_IN)
            self.halt(EP_OUT)
            return
        _, tag, length, flags, _lun, cb_len, cb = struct.unpack(CBW_FMT, raw)
        self.tag, self.expected = tag, length
        direction_in = bool(flags & 0x80)
        cdb = cb[:cb_len]
        op = cdb[0] if cdb else 0xFF
        if op in (READ_10, WRITE_10):
            lba, count = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
            nbytes = count * BLOCK_SIZE
            if lba + count > self.blocks:
                self._fail(ASC_LBA_OUT_OF_RANGE, direction_in)
                return
            if nbytes != length or direction_in != (op == READ_10):
                self._fail(ASC_INVALID_FIELD, direction_in)
                return
            self.sense = (SENSE_NO_SENSE, 0)
            if op == READ_10:
                self._reply(self.media[lba * BLOCK_SIZE : lba * BLOCK_SIZE + nbytes])
            elif nbytes:
                self.state, self.write_lba = "data-out", lba
            else:
                self._finish(CSW_PASSED, 0)
            return
        if op == TEST_UNIT_READY:
            self._finish(CSW_PASSED, length)
        elif op == REQUEST_SENSE:
            key, asc = self.sense
            self.sense = (SENSE_NO_SENSE, 0)
            self._reply(bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, 0, 0, 0, 0, 0]))
        elif op == INQUIRY:
            self._reply(
                bytes([0x00, 0x80, 0x04, 0x02, 31, 0, 0, 0]) + b"EDGEAGNT" + b"Simulated disk  " + b"0100"
            )
        elif op == MODE_SENSE_6:
            self._reply(bytes([3, 0, 0, 0]))
        elif op == READ_CAPACITY_10:
            self._reply(struct.pack(">II", self.blocks - 1, BLOCK_SIZE))
        else:
            self._fail(ASC_INVALID_OPCODE, direction_in)

    def _reply(self, payload: bytes | bytearray) -> None:
        data = bytes(payload[: self.expected])
        if not data:
            self._finish(CSW_PASSED, self.expected)
            return
        self.pending_in = bytearray(data)
        self.status, self.residue = CSW_PASSED, self.expected - len(data)
        self.state = "data-in"
