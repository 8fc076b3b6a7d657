"""An ``smbus2.SMBus`` look-alike over an ``I2cBus`` (the in-process simulator): the native twins' null
backend.

Each call becomes the operations the kernel would put on the wire, so a twin does the same bus work here as
through a real i2c-dev node; failures raise OSError with the errno the kernel would return.
"""

from __future__ import annotations

import ctypes
from typing import Any

from smbus2 import i2c_msg

from edgeagent.hw.i2c import CODE_TO_ERRNO, I2cBus, I2cError, Operation, Read, Write


class SimSMBus:
    def __init__(self, bus: I2cBus) -> None:
        self.bus = bus

    def _run(self, address: int, ops: list[Operation]) -> list[bytes]:
        try:
            return self.bus.transaction(address, ops)
        except I2cError as e:
            raise OSError(CODE_TO_ERRNO[e.code], str(e)) from None

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._run(i2c_addr, [Write(bytes([register])), Read(1)])[0][0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        self._run(i2c_addr, [Write(bytes([register, value]))])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        return list(self._run(i2c_addr, [Write(bytes([register])), Read(length)])[0])

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        self._run(i2c_addr, [Write(bytes([register, *data]))])

    def i2c_rdwr(self, *msgs: Any) -> None:
        if not msgs:
            return
        address = msgs[0].addr
        ops: list[Operation] = [Read(m.len) if m.flags & 1 else Write(bytes(m)) for m in msgs]
        data = iter(self._run(address, ops))
        for m in msgs:
            if m.flags & 1:
                got = next(data)
                ctypes.memmove(m.buf, got, min(len(got), m.len))

    def close(self) -> None:
        pass

    def __enter__(self) -> SimSMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SimSMBus", "i2c_msg"]
