"""Native twin of drivers/usb_storage.c: a Bulk-Only Transport + SCSI block driver with plain pyusb.

The benchmark's baseline for mass-storage throughput. Same protocol steps as the Wasm driver: detach the
kernel's usb-storage driver, claim interface 0, then per command a CBW, the data phase and the CSW; a STALLed
data phase is recovered by clearing the halt and reading the CSW (BOT 6.7), and a failed command is explained
by REQUEST SENSE.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import usb.core
import usb.util

from edgeagent.errors import HardwareError
from edgeagent.hw.pyusb_backend import usb_error
from edgeagent.hw.sim import usb_storage as bot

NAME = "usb_storage (native)"
INTERFACE = 0


class ScsiError(HardwareError):
    """A SCSI command ended in CHECK CONDITION; the sense key and ASC say why."""


class NativeMassStorage:
    def __init__(self, dev: Any, *, timeout_ms: int = 2000) -> None:
        self.dev = dev
        self.timeout_ms = timeout_ms
        self._tag = 0
        self.block_size = bot.BLOCK_SIZE
        self.blocks = 0
        try:
            if dev.is_kernel_driver_active(INTERFACE):
                dev.detach_kernel_driver(INTERFACE)
            try:
                configured = dev.get_active_configuration().bConfigurationValue
            except usb.core.USBError:
                configured = 0
            if configured != 1:
                dev.set_configuration(1)
            usb.util.claim_interface(dev, INTERFACE)
        except usb.core.USBError as e:
            raise usb_error(e, f"driver {NAME}: open") from None
        self.test_unit_ready()
        self.blocks, self.block_size = self.read_capacity()

    @classmethod
    def find(cls, *, backend: Any = None, timeout_ms: int = 2000) -> NativeMassStorage:
        dev = usb.core.find(idVendor=bot.VENDOR_ID, idProduct=bot.PRODUCT_ID, backend=backend)
        if dev is None:
            raise HardwareError(
                f"driver {NAME}: no mass-storage device {bot.VENDOR_ID:04x}:{bot.PRODUCT_ID:04x}"
            )
        return cls(dev, timeout_ms=timeout_ms)

    # ------------------------------------------------------------ BOT
    def _csw(self) -> tuple[int, int]:
        raw = self.dev.read(bot.EP_IN, bot.CSW_LEN, self.timeout_ms).tobytes()
        if len(raw) != bot.CSW_LEN:
            raise HardwareError(f"driver {NAME}: short CSW ({len(raw)} bytes)")
        signature, tag, residue, status = struct.unpack(bot.CSW_FMT, raw)
        if signature != bot.CSW_SIGNATURE or tag != self._tag:
            raise HardwareError(f"driver {NAME}: invalid CSW (signature {signature:#x}, tag {tag})")
        return status, residue

    def command(self, cdb: bytes, *, data_out: bytes = b"", length_in: int = 0) -> bytes:
        """One SCSI command through BOT; returns the data-in phase."""
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        length = length_in or len(data_out)
        cbw = struct.pack(
            bot.CBW_FMT,
            bot.CBW_SIGNATURE,
            self._tag,
            length,
            0x80 if length_in else 0,
            0,
            len(cdb),
            cdb.ljust(16, b"\0"),
        )
        data = b""
        try:
            self.dev.write(bot.EP_OUT, cbw, self.timeout_ms)
            try:
                if length_in:
                    data = self.dev.read(bot.EP_IN, length_in, self.timeout_ms).tobytes()
                elif data_out:
                    self.dev.write(bot.EP_OUT, data_out, self.timeout_ms)
            except usb.core.USBError as e:
                if e.backend_error_code != -9:  # only a STALL is part of the protocol
                    raise
                self.dev.clear_halt(bot.EP_IN if length_in else bot.EP_OUT)
            status, _residue = self._csw()
        except usb.core.USBError as e:
            raise usb_error(e, f"driver {NAME}: SCSI 0x{cdb[0]:02x}") from None
        if status != bot.CSW_PASSED:
            if cdb[0] == bot.REQUEST_SENSE:
                raise ScsiError(f"driver {NAME}: REQUEST SENSE failed (status {status})")
            sense = self.command(bytes([bot.REQUEST_SENSE, 0, 0, 0, 18, 0]), length_in=18)
            raise ScsiError(
                f"driver {NAME}: SCSI 0x{cdb[0]:02x} failed: sense key {sense[2] & 0xF:#x}, "
                f"ASC {sense[12]:#04x}"
            )
        return data

    # ------------------------------------------------------------ SCSI
    def test_unit_ready(self) -> None:
        self.command(bytes(6))

    def inquiry(self) -> bytes:
        return self.command(bytes([bot.INQUIRY, 0, 0, 0, 36, 0]), length_in=36)

    def read_capacity(self) -> tuple[int, int]:
        last, size = struct.unpack(">II", self.command(bytes([bot.READ_CAPACITY_10]) + bytes(9), length_in=8))
        return last + 1, size

    def read(self, lba: int, count: int) -> bytes:
        cdb = struct.pack(">BBIBHB", bot.READ_10, 0, lba, 0, count, 0)
        return self.command(cdb, length_in=count * self.block_size)

    def write(self, lba: int, data: bytes) -> None:
        count, rest = divmod(len(data), self.block_size)
        if rest:
            raise ValueError(f"write of {len(data)} bytes is not a whole number of blocks")
        self.command(struct.pack(">BBIBHB", bot.WRITE_10, 0, lba, 0, count, 0), data_out=data)

    def close(self) -> None:
        with contextlib.suppress(usb.core.USBError):  # unplugged: nothing left to release
            usb.util.release_interface(self.dev, INTERFACE)
        usb.util.dispose_resources(self.dev)
