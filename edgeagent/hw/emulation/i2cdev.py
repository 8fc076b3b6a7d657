"""An i2c-dev (``/dev/i2c-N``) ioctl handler for umockdev, routing to an I2C bus of simulated parts.

Implements the ioctls smbus2 and i2c-tools use (include/uapi/linux/i2c-dev.h, drivers/i2c/i2c-dev.c):
I2C_SLAVE / I2C_SLAVE_FORCE (the per-file target address), I2C_TENBIT, I2C_FUNCS, I2C_PEC, I2C_RDWR (a
combined transaction: every message with repeated starts, one stop) and I2C_SMBUS (converted to I2C operations
as the kernel's SMBus emulation does). Failures are the errno a Linux adapter returns for the WIT error code
(``edgeagent.hw.i2c.CODE_TO_ERRNO``): an absent part is ENXIO, as with i2c-bcm2835 and friends.
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

from edgeagent.hw.i2c import CODE_TO_ERRNO, I2cBus, I2cError, Operation, Read, Write  # noqa: E402

I2C_SLAVE, I2C_TENBIT, I2C_FUNCS, I2C_SLAVE_FORCE = 0x0703, 0x0704, 0x0705, 0x0706
I2C_RDWR, I2C_PEC, I2C_SMBUS = 0x0707, 0x0708, 0x0720
I2C_M_RD, I2C_M_TEN = 0x0001, 0x0010
I2C_RDWR_IOCTL_MAX_MSGS = 42
I2C_SMBUS_READ = 1
(
    SMBUS_QUICK,
    SMBUS_BYTE,
    SMBUS_BYTE_DATA,
    SMBUS_WORD_DATA,
    SMBUS_PROC_CALL,
    SMBUS_BLOCK_DATA,
    SMBUS_I2C_BLOCK_BROKEN,
    SMBUS_BLOCK_PROC_CALL,
    SMBUS_I2C_BLOCK_DATA,
) = range(9)
I2C_SMBUS_BLOCK_MAX = 32
# I2C_FUNC_I2C | SMBus quick, byte, byte data, word data, process call, I2C block read/write. SMBus block
# transfers (a count byte chosen by the part) are not offered: the models answer fixed-length reads.
FUNCS = 0x00000001 | 0x00FF0000 | 0x04000000 | 0x08000000

MSG_FMT = "<HHHxxQ"  # struct i2c_msg
MSG_SIZE = struct.calcsize(MSG_FMT)


class I2cDevHandler(UMockdev.IoctlBase):
    """One emulated adapter node; per-file state is the target address (and ten-bit mode)."""

    def __init__(self, bus: I2cBus) -> None:
        super().__init__()
        self.bus = bus
        self.lock = threading.Lock()
        self.targets: dict[int, tuple[Any, int, bool]] = {}  # client hash -> (client, address, tenbit)
        self.stats: dict[str, int] = {"ioctls": 0, "transactions": 0}

    def do_client_vanished(self, client: Any) -> None:
        with self.lock:
            self.targets.pop(hash(client), None)

    def do_handle_ioctl(self, client: Any) -> bool:
        request = client.get_request()
        with self.lock:
            self.stats["ioctls"] += 1
            try:
                result = self._dispatch(request, client)
            except I2cError as e:
                client.complete(-1, CODE_TO_ERRNO[e.code])
                return True
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

    def _dispatch(self, request: int, client: Any) -> int:
        arg = client.get_arg()
        key = hash(client)
        _, address, tenbit = self.targets.get(key, (client, -1, False))
        if request in (I2C_SLAVE, I2C_SLAVE_FORCE):
            value = struct.unpack("<Q", bytes(arg.retrieve()))[0]
            if value > (0x3FF if tenbit else 0x7F):
                raise OSError(errno.EINVAL, "address out of range")
            self.targets[key] = (client, value, tenbit)
            return 0
        if request == I2C_TENBIT:
            self.targets[key] = (client, address, bool(struct.unpack("<Q", bytes(arg.retrieve()))[0]))
            return 0
        if request == I2C_FUNCS:
            arg.resolve(0, 8).update(0, struct.pack("<Q", FUNCS))
            return 0
        if request == I2C_PEC:
            return 0
        if request == I2C_RDWR:
            return self._rdwr(arg)
        if request == I2C_SMBUS:
            if address < 0:
                raise OSError(errno.EINVAL, "no target address set")
            self._smbus(arg, address)
            return 0
        raise OSError(errno.ENOTTY, f"unsupported ioctl {request:#x}")

    def _rdwr(self, arg: Any) -> int:
        head = arg.resolve(0, 16)
        nmsgs = struct.unpack_from("<QI", bytes(head.retrieve()))[1]
        if not 0 < nmsgs <= I2C_RDWR_IOCTL_MAX_MSGS:
            raise OSError(errno.EINVAL, "bad message count")
        table = head.resolve(0, MSG_SIZE * nmsgs)
        raw = bytes(table.retrieve())
        msgs = [struct.unpack_from(MSG_FMT, raw, MSG_SIZE * i) for i in range(nmsgs)]
        buffers = [
            table.resolve(MSG_SIZE * i + 8, length) if length else None
            for i, (_, _, length, _) in enumerate(msgs)
        ]
        # One transaction per run of messages to the same address (nearly always the whole list).
        i = 0
        while i < nmsgs:
            address = msgs[i][0]
            run: list[tuple[int, Operation]] = []
            while i < nmsgs and msgs[i][0] == address:
                _, flags, length, _ = msgs[i]
                buf = buffers[i]
                payload = bytes(buf.retrieve()) if buf is not None else b""
                run.append((i, Read(length) if flags & I2C_M_RD else Write(payload)))
                i += 1
            self.stats["transactions"] += 1
            results = iter(self.bus.transaction(address, [op for _, op in run]))
            for index, op in run:
                if isinstance(op, Read):
                    data = next(results)
                    buffer = buffers[index]
                    if data and buffer is not None:
                        buffer.update(0, data)
        return nmsgs

    def _smbus(self, arg: Any, address: int) -> None:
        head = arg.resolve(0, 16)
        read_write, command, size = struct.unpack_from("<BBxxI", bytes(head.retrieve()))
        read = read_write == I2C_SMBUS_READ
        data = head.resolve(8, 34) if size != SMBUS_QUICK else None
        raw = bytes(data.retrieve()) if data is not None else b""
        ops: list[Operation]
        if size == SMBUS_QUICK:
            ops = [Read(0)] if read else [Write(b"")]
        elif size == SMBUS_BYTE:
            ops = [Read(1)] if read else [Write(bytes([command]))]
        elif size == SMBUS_BYTE_DATA:
            ops = [Write(bytes([command])), Read(1)] if read else [Write(bytes([command, raw[0]]))]
        elif size == SMBUS_WORD_DATA:
            ops = [Write(bytes([command])), Read(2)] if read else [Write(bytes([command]) + raw[:2])]
        elif size == SMBUS_PROC_CALL:
            ops = [Write(bytes([command]) + raw[:2]), Read(2)]
        elif size in (SMBUS_I2C_BLOCK_DATA, SMBUS_I2C_BLOCK_BROKEN):
            n = min(raw[0], I2C_SMBUS_BLOCK_MAX)
            ops = [Write(bytes([command])), Read(n)] if read else [Write(bytes([command]) + raw[1 : 1 + n])]
        else:
            raise OSError(errno.EOPNOTSUPP, "SMBus block transfers are not emulated")
        self.stats["transactions"] += 1
        results = self.bus.transaction(address, ops)
        if data is None or not results:
            return
        reply = results[-1]
        if size in (SMBUS_I2C_BLOCK_DATA, SMBUS_I2C_BLOCK_BROKEN):
            data.update(0, bytes([len(reply)]) + reply)
        elif reply:
            data.update(0, reply)


def sysfs_description(bus: int) -> tuple[str, str, str]:
    """(syspath, device node, umockdev description) of an i2c-dev adapter node."""
    syspath = f"/devices/platform/edgeagent-i2c.{bus}/i2c-{bus}/i2c-dev/i2c-{bus}"
    return (
        syspath,
        f"/dev/i2c-{bus}",
        (
            f"P: {syspath}\nN: i2c-{bus}\nE: SUBSYSTEM=i2c-dev\nE: DEVNAME=/dev/i2c-{bus}\n"
            f"E: MAJOR=89\nE: MINOR={bus}\nA: name=edgeagent emulated adapter {bus}\nA: dev=89:{bus}\n"
        ),
    )
