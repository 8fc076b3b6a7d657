"""``I2cBus`` on a Linux i2c-dev node (``/dev/i2c-N``) through smbus2; a transaction is one ``I2C_RDWR``."""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smbus2 import SMBus, i2c_msg

from edgeagent.errors import HardwareError
from edgeagent.hw.i2c import ErrorCode, I2cError, Operation, Read, Write, check_address, error_from_oserror


def parse_bus(device: str | int) -> int:
    """``1``, ``"1"``, ``"i2c-1"`` or ``"/dev/i2c-1"`` -> 1."""
    if isinstance(device, int):
        return device
    m = re.fullmatch(r"(?:/dev/)?(?:i2c-)?(\d+)", device.strip())
    if not m:
        raise HardwareError(f"not an I2C bus: {device!r} (expected N, i2c-N or /dev/i2c-N)")
    return int(m.group(1))


def present_buses() -> list[int]:
    """The i2c-dev buses this machine has (none on a box without I2C)."""
    return sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob("/dev/i2c-*") if p.rsplit("-", 1)[1].isdigit())


class Smbus2Bus:
    """An open ``/dev/i2c-N``. Opening a missing bus raises HardwareError naming the node."""

    def __init__(self, bus: int | str, *, smbus: Any = None) -> None:
        """``smbus``: an already open ``smbus2.SMBus`` look-alike to use instead of opening the node (the
        benchmark runs this class over the simulator, so Wasm and native twins share the smbus2 layer)."""
        self.number = parse_bus(bus)
        self.name = f"/dev/i2c-{self.number}"
        if smbus is not None:
            self._bus = smbus
            return
        try:
            self._bus = SMBus(self.number)
        except FileNotFoundError:
            raise HardwareError(f"no I2C bus {self.name}") from None
        except PermissionError:
            raise HardwareError(f"no permission to open {self.name} (group i2c?)") from None
        except OSError as e:
            raise HardwareError(f"cannot open {self.name}: {e.strerror}") from None

    @property
    def path(self) -> Path:
        return Path(self.name)

    def transaction(self, address: int, operations: Sequence[Operation]) -> list[bytes]:
        check_address(address)
        if not operations:
            return []
        msgs = []
        for op in operations:
            if isinstance(op, Read):
                msgs.append(i2c_msg.read(address, op.length))
            elif isinstance(op, Write):
                msgs.append(i2c_msg.write(address, op.data))
            else:  # pragma: no cover - a programming error
                raise TypeError(f"not an I2C operation: {op!r}")
        try:
            self._bus.i2c_rdwr(*msgs)
        except OSError as e:
            raise error_from_oserror(e, address) from None
        except ValueError as e:  # smbus2 refuses a closed bus this way
            raise I2cError(ErrorCode.OTHER, address, str(e)) from None
        return [bytes(m) for m, op in zip(msgs, operations, strict=True) if isinstance(op, Read)]

    # The two transactions every register access is made of (the C header's ea_i2c_read_regs and
    # ea_i2c_write_reg), without building the generic operation list: the Wasm host calls these when the bus
    # has them. Same ioctls as `transaction` (and as a native driver's ``i2c_rdwr``), less Python around them.
    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        """One I2C_RDWR: write ``data``, repeated START, read ``length`` bytes."""
        if not 0 <= address <= 0x3FF:
            check_address(address)
        read = i2c_msg.read(address, length)
        try:
            self._bus.i2c_rdwr(i2c_msg.write(address, data), read)
        except OSError as e:
            raise error_from_oserror(e, address) from None
        except ValueError as e:
            raise I2cError(ErrorCode.OTHER, address, str(e)) from None
        return bytes(read)

    def write(self, address: int, data: bytes) -> None:
        """One I2C_RDWR with a single write message."""
        if not 0 <= address <= 0x3FF:
            check_address(address)
        try:
            self._bus.i2c_rdwr(i2c_msg.write(address, data))
        except OSError as e:
            raise error_from_oserror(e, address) from None
        except ValueError as e:
            raise I2cError(ErrorCode.OTHER, address, str(e)) from None

    def close(self) -> None:
        self._bus.close()
