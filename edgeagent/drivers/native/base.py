"""What every native twin offers: the shape of a Wasm driver's exports, in Python.

Register access goes through ``read_regs``/``write_reg``, which issue exactly the kernel operations the Wasm
I2C host issues for the C header's ``ea_i2c_read_regs``/``ea_i2c_write_reg``: one ``I2C_RDWR`` combined
transaction (write the register number, repeated START, read) and one ``I2C_RDWR`` write. Not smbus2's SMBus
calls (``read_byte_data`` ...), which are a different ioctl (I2C_SMBUS) with a different cost: a twin must
differ from its Wasm driver only by not running in Wasm, or the benchmark compares ioctls, not runtimes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from smbus2 import i2c_msg


class SMBusLike(Protocol):
    """The subset of ``smbus2.SMBus`` the twins use: combined transactions only."""

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...


class NativeDriver:
    name = ""
    channels: tuple[tuple[str, str], ...] = ()  # (name, unit), as the Wasm driver's describe()

    def __init__(self, bus: SMBusLike, address: int, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.bus = bus
        self.address = address
        self.sleep = sleep

    def read_regs(self, register: int, length: int) -> bytes:
        """``length`` bytes from ``register`` on: write the register number, repeated START, read."""
        read = i2c_msg.read(self.address, length)
        self.bus.i2c_rdwr(i2c_msg.write(self.address, [register]), read)
        return bytes(read)

    def read_reg(self, register: int) -> int:
        return self.read_regs(register, 1)[0]

    def write_reg(self, register: int, value: int) -> None:
        self.bus.i2c_rdwr(i2c_msg.write(self.address, [register, value]))

    def init(self) -> None:
        """Probes and configures the part; raises OSError like smbus2 does."""

    def read(self) -> dict[str, float]:
        raise NotImplementedError

    def write(self, text: str) -> None:
        raise NotImplementedError
