"""The base of simulated I2C parts: a register file behind a register pointer, pure (no I/O, no clock).

``transfer(ops)`` is the whole interface a bus needs: the in-process ``SimI2cBus`` and the umockdev i2c-dev
handler both turn their requests (an I2C_RDWR message list, an SMBus ioctl) into operations and call it, so
one model serves both. SMBus calls map as the kernel's emulation does: ``read_byte_data(reg)`` is
``[Write([reg]), Read(1)]``, ``write_byte_data(reg, v)`` is ``[Write([reg, v])]``, a word read is
``[Write([reg]), Read(2)]`` (low byte first on the wire for SMBus; a part with big-endian registers such as
the
TMP102 sends its MSB first, which is why its drivers swap).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeagent.hw.i2c import Operation, Read, Write


class RegisterDevice:
    """Byte registers addressed by an 8-bit pointer, auto-incrementing on read and write.

    A write's first byte sets the pointer, the following bytes are register writes. Parts that differ
    (16-bit registers, an auto-increment flag in the sub-address, no registers at all) override
    ``write_bytes``/``read_bytes``; a model reacts to writes in ``on_write``.
    """

    address: int = 0
    name: str = "device"
    # Registers a write may not change (silently ignored, like the hardware).
    read_only: frozenset[int] = frozenset()

    def __init__(self, address: int | None = None) -> None:
        if address is not None:
            self.address = address
        self.regs = bytearray(256)
        self.pointer = 0

    # ------------------------------------------------------------------ the bus side
    def transfer(self, ops: Sequence[Operation]) -> list[bytes]:
        """Executes one combined transaction; returns the data of each read, in order."""
        out: list[bytes] = []
        for op in ops:
            if isinstance(op, Write):
                self.write_bytes(bytes(op.data))
            else:
                out.append(self.read_bytes(op.length))
        return out

    def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0]
        for b in data[1:]:
            if self.pointer not in self.read_only:
                self.regs[self.pointer] = b
                self.on_write(self.pointer, b)
            self.pointer = (self.pointer + 1) & 0xFF

    def read_bytes(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(n):
            out.append(self.read_register(self.pointer))
            self.pointer = (self.pointer + 1) & 0xFF
        return bytes(out)

    # ------------------------------------------------------------------ the model side
    def read_register(self, reg: int) -> int:
        return self.regs[reg]

    def on_write(self, reg: int, value: int) -> None:
        """A register was written by the bus master."""

    def set_u16_le(self, reg: int, value: int) -> None:
        self.regs[reg] = value & 0xFF
        self.regs[reg + 1] = (value >> 8) & 0xFF


def smbus_ops(read: bool, command: int, size: str, data: bytes = b"") -> list[Operation]:
    """The I2C operations the kernel's SMBus emulation performs for one SMBus transfer.

    ``size``: "quick", "byte", "byte_data", "word_data", "i2c_block_data" (the transfers smbus2 issues).
    For reads, ``data`` is unused and the length comes from ``size`` (or ``len(data)`` for block reads, which
    the caller passes as a length-sized placeholder).
    """
    if size == "quick":
        return [Read(0)] if read else [Write(b"")]
    if size == "byte":
        return [Read(1)] if read else [Write(bytes([command]))]
    if size == "byte_data":
        return [Write(bytes([command])), Read(1)] if read else [Write(bytes([command, data[0]]))]
    if size == "word_data":
        return [Write(bytes([command])), Read(2)] if read else [Write(bytes([command]) + data[:2])]
    if size == "i2c_block_data":
        return [Write(bytes([command])), Read(len(data))] if read else [Write(bytes([command]) + data)]
    raise ValueError(f"unsupported SMBus transfer size {size!r}")
