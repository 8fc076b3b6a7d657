"""What every native twin offers: the shape of a Wasm driver's exports, in Python."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class SMBusLike(Protocol):
    """The subset of ``smbus2.SMBus`` the twins use."""

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...


class NativeDriver:
    name = ""
    channels: tuple[tuple[str, str], ...] = ()  # (name, unit), as the Wasm driver's describe()

    def __init__(self, bus: SMBusLike, address: int, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.bus = bus
        self.address = address
        self.sleep = sleep

    def init(self) -> None:
        """Probes and configures the part; raises OSError like smbus2 does."""

    def read(self) -> dict[str, float]:
        raise NotImplementedError

    def write(self, text: str) -> None:
        raise NotImplementedError
