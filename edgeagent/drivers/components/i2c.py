"""``wasi:i2c/i2c@0.2.0-draft`` and ``wasi:i2c/delay@0.2.0-draft`` for components, as the WIT declares them.

The same capability model as the core host (edgeagent.drivers.hosts.i2c): the guest never names a bus; it
receives an owned ``i2c`` resource per granted bus, and every method checks the address against that grant
before the bus moves. The WIT has no access-denied case, so a denial is ``error-code::other`` (as in the core
ABI's WIT mapping); it is recorded in ``denials`` so the caller reports it as a policy denial, not a bus
fault.

Values: ``list<u8>`` is ``bytes``; ``operation`` arrives as its payload (``int`` for ``read(u64)``, ``bytes``
for ``write``: the variant's cases have distinct Python types, so wasmtime-py does not tag them); errors are
``Variant("no-acknowledge", "address")`` etc.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from wasmtime.component import Variant

from edgeagent.drivers.hosts.i2c import MAX_OPS, MAX_TRANSFER, Denial, I2cGrant
from edgeagent.hw.i2c import ErrorCode, I2cError, Operation, Read, Write
from edgeagent.wasm.component import ComponentHost, Err, componentfunc
from edgeagent.wasm.host import HandleTable, HostTrap

log = logging.getLogger(__name__)

I2C_INTERFACE = "wasi:i2c/i2c@0.2.0-draft"
DELAY_INTERFACE = "wasi:i2c/delay@0.2.0-draft"

# hw ErrorCode -> the WIT error-code value (variant case, no-acknowledge-source payload).
ERROR_VALUES: dict[ErrorCode, Variant] = {
    ErrorCode.BUS: Variant("bus"),
    ErrorCode.ARBITRATION_LOSS: Variant("arbitration-loss"),
    ErrorCode.NO_ACKNOWLEDGE_ADDRESS: Variant("no-acknowledge", "address"),
    ErrorCode.NO_ACKNOWLEDGE_DATA: Variant("no-acknowledge", "data"),
    ErrorCode.NO_ACKNOWLEDGE_UNKNOWN: Variant("no-acknowledge", "unknown"),
    ErrorCode.OVERRUN: Variant("overrun"),
    ErrorCode.OTHER: Variant("other"),
}
_OTHER = Err(ERROR_VALUES[ErrorCode.OTHER])
_ERRS = {code: Err(v) for code, v in ERROR_VALUES.items()}


def error_code(value: Any) -> ErrorCode:
    """The hw ErrorCode of a WIT error-code value (what a guest returned)."""
    tag = getattr(value, "tag", value)
    payload = getattr(value, "payload", None)
    if tag == "no-acknowledge":
        return ErrorCode(f"no-acknowledge({payload or 'unknown'})")
    try:
        return ErrorCode(tag)
    except ValueError:
        return ErrorCode.OTHER


class ComponentI2cHost(ComponentHost):
    interface = I2C_INTERFACE
    resources = ("i2c",)

    def __init__(self) -> None:
        super().__init__()
        self.handles: HandleTable[I2cGrant] = HandleTable()
        self._grants = self.handles.mapping
        # The bus's register-access shortcuts (hw.i2c.I2cBus), looked up once per grant (as the core host).
        self._write_read: dict[int, Callable[[int, bytes, int], bytes]] = {}
        self._write: dict[int, Callable[[int, bytes], None]] = {}
        self.denials: list[Denial] = []
        self.last_error: I2cError | None = None

    def grant(self, grant: I2cGrant) -> Any:
        """An owned ``i2c`` resource for ``grant``, to hand to the guest (``init``'s ``bus``)."""
        rep = self.handles.add(grant)
        write_read = getattr(grant.bus, "write_read", None)
        write = getattr(grant.bus, "write", None)
        if callable(write_read):
            self._write_read[rep] = write_read
        if callable(write):
            self._write[rep] = write
        return self.own("i2c", rep)

    def drop(self, resource: str, rep: int) -> None:
        self._grants.pop(rep, None)
        self._write_read.pop(rep, None)
        self._write.pop(rep, None)

    def _deny(self, grant: I2cGrant, address: int) -> Err:
        self.denials.append(Denial(grant.bus.name, address))
        log.info(
            "%s: denied I2C address %#04x on %s (not in its policy)", self.guest.name, address, grant.bus.name
        )
        return _OTHER

    def _run(self, rep: int, address: int, ops: list[Operation]) -> list[bytes] | Err:
        grant = self._grants.get(rep)
        if grant is None:
            raise HostTrap(f"i2c resource {rep} is not one this host handed out")
        if address not in grant.addresses:
            return self._deny(grant, address)
        try:
            return grant.bus.transaction(address, ops)
        except I2cError as e:
            self.last_error = e
            return _ERRS[e.code]

    @componentfunc("[method]i2c.transaction", blocking=True)
    def transaction(self, rep: int, address: int, operations: list[Any]) -> Any:
        if len(operations) > MAX_OPS:
            return _OTHER
        ops: list[Operation] = []
        total = 0
        for op in operations:
            op = getattr(op, "payload", op) if isinstance(op, Variant) else op
            if isinstance(op, int):
                ops.append(Read(op))
                total += op
            else:
                ops.append(Write(bytes(op)))
                total += len(op)
            if total > MAX_TRANSFER:
                return _OTHER
        result = self._run(rep, address, ops)
        return result if isinstance(result, Err) else [bytes(r) for r in result]

    @componentfunc("[method]i2c.read", blocking=True)
    def read(self, rep: int, address: int, length: int) -> Any:
        if length > MAX_TRANSFER:
            return _OTHER
        result = self._run(rep, address, [Read(length)])
        return result if isinstance(result, Err) else bytes(result[0])

    @componentfunc("[method]i2c.write", blocking=True)
    def write(self, rep: int, address: int, data: bytes) -> Any:
        if len(data) > MAX_TRANSFER:
            return _OTHER
        fast = self._write.get(rep)
        if fast is None:
            result = self._run(rep, address, [Write(data)])
            return result if isinstance(result, Err) else None
        grant = self._grants.get(rep)
        if grant is None:
            raise HostTrap(f"i2c resource {rep} is not one this host handed out")
        if address not in grant.addresses:
            return self._deny(grant, address)
        try:
            fast(address, data)  # the same single-message I2C_RDWR as transaction([Write(data)])
        except I2cError as e:
            self.last_error = e
            return _ERRS[e.code]
        return None

    @componentfunc("[method]i2c.write-read", blocking=True)
    def write_read(self, rep: int, address: int, data: bytes, length: int) -> Any:
        grant = self._grants.get(rep)
        if grant is None:
            raise HostTrap(f"i2c resource {rep} is not one this host handed out")
        if address not in grant.addresses:
            return self._deny(grant, address)
        if len(data) + length > MAX_TRANSFER:
            return _OTHER
        fast = self._write_read.get(rep)
        try:
            if fast is not None:
                return bytes(fast(address, data, length))
            return bytes(grant.bus.transaction(address, [Write(data), Read(length)])[0])
        except I2cError as e:
            self.last_error = e
            return _ERRS[e.code]


class ComponentDelayHost(ComponentHost):
    """``wasi:i2c/delay``: waits without burning the guest's compute budget."""

    interface = DELAY_INTERFACE
    resources = ("delay",)

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self._sleep = sleep
        self.handles: HandleTable[None] = HandleTable()
        self._handles = self.handles.mapping
        self.slept_ns = 0

    def new_delay(self) -> Any:
        return self.own("delay", self.handles.add(None))

    def drop(self, resource: str, rep: int) -> None:
        self.handles.mapping.pop(rep, None)

    @componentfunc("[method]delay.delay-ns", blocking=True)
    def delay_ns(self, rep: int, ns: int) -> None:
        if rep not in self._handles:
            raise HostTrap(f"delay resource {rep} is not one this host handed out")
        self.slept_ns += ns
        self._sleep(ns / 1e9)
