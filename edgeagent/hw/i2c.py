"""The I2C bus abstraction every backend implements, and the mapping of kernel errors to WIT error codes.

Names follow ``wasi:i2c/i2c@0.2.0-draft``: a transaction is a list of ``operation`` (``read(len)`` or
``write(data)``) on one address, executed with repeated starts and one final stop (Linux ``I2C_RDWR``);
failures
are the ``error-code`` variant. Backends raise ``I2cError`` only, never a bare OSError.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from edgeagent.errors import HardwareError


class Read(NamedTuple):
    """``operation::read(u64)``: read ``length`` bytes. (Tuples: built on every host call, so cheap ones.)"""

    length: int


class Write(NamedTuple):
    """``operation::write(list<u8>)``."""

    data: bytes


Operation = Read | Write


class ErrorCode(enum.Enum):
    """``error-code`` with ``no-acknowledge-source`` flattened; values are the WIT spellings."""

    BUS = "bus"
    ARBITRATION_LOSS = "arbitration-loss"
    NO_ACKNOWLEDGE_ADDRESS = "no-acknowledge(address)"
    NO_ACKNOWLEDGE_DATA = "no-acknowledge(data)"
    NO_ACKNOWLEDGE_UNKNOWN = "no-acknowledge(unknown)"
    OVERRUN = "overrun"
    OTHER = "other"


class I2cError(HardwareError):
    """A transaction failed on the bus; ``code`` is the WIT error code, ``address`` the target."""

    def __init__(self, code: ErrorCode, address: int, detail: str = "") -> None:
        self.code = code
        self.address = address
        self.detail = detail
        super().__init__(f"i2c address {address:#04x}: {code.value}{f' ({detail})' if detail else ''}")


# Linux i2c fault codes (Documentation/i2c/fault-codes.rst) -> WIT error-code.
# EREMOTEIO is what several adapters (bcm2835 on the Raspberry Pi, designware) return for *any* NACK,
# address or data phase, so it cannot honestly be called an address NACK: it maps to no-acknowledge(unknown).
ERRNO_TO_CODE: dict[int, ErrorCode] = {
    errno.ENXIO: ErrorCode.NO_ACKNOWLEDGE_ADDRESS,
    errno.EREMOTEIO: ErrorCode.NO_ACKNOWLEDGE_UNKNOWN,
    errno.EAGAIN: ErrorCode.ARBITRATION_LOSS,
    errno.EBUSY: ErrorCode.BUS,
    errno.EPROTO: ErrorCode.BUS,
    errno.EIO: ErrorCode.BUS,
    errno.EOVERFLOW: ErrorCode.OVERRUN,
    errno.ETIMEDOUT: ErrorCode.OTHER,
}

# The other direction, for device emulation (umockdev handlers) that must answer with an errno.
CODE_TO_ERRNO: dict[ErrorCode, int] = {
    ErrorCode.NO_ACKNOWLEDGE_ADDRESS: errno.ENXIO,
    ErrorCode.NO_ACKNOWLEDGE_DATA: errno.EREMOTEIO,
    ErrorCode.NO_ACKNOWLEDGE_UNKNOWN: errno.EREMOTEIO,
    ErrorCode.ARBITRATION_LOSS: errno.EAGAIN,
    ErrorCode.BUS: errno.EIO,
    ErrorCode.OVERRUN: errno.EOVERFLOW,
    ErrorCode.OTHER: errno.ETIMEDOUT,
}


def error_from_oserror(e: OSError, address: int) -> I2cError:
    """The I2cError for a failed i2c-dev ioctl (unknown errnos become ``other`` with the errno named)."""
    code = ERRNO_TO_CODE.get(e.errno or 0, ErrorCode.OTHER)
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return I2cError(code, address, name)


@runtime_checkable
class I2cBus(Protocol):
    """One I2C adapter. ``transaction`` returns the data of each Read, in order.

    A bus may also offer ``write_read(address, data, length) -> bytes`` and ``write(address, data)``: the
    same transactions as ``transaction([Write(data), Read(length)])`` and ``transaction([Write(data)])``
    without the generic operation list; the Wasm host uses them for register reads and writes when present.
    """

    name: str

    def transaction(self, address: int, operations: Sequence[Operation]) -> list[bytes]: ...

    def close(self) -> None: ...


def check_address(address: int) -> None:
    """7-bit (0x00-0x7f) or 10-bit (up to 0x3ff) addresses only."""
    if not 0 <= address <= 0x3FF:
        raise I2cError(ErrorCode.OTHER, address & 0xFFFF, "address out of range")
