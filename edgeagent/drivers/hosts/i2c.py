"""``wasi:i2c/i2c`` and ``wasi:i2c/delay`` for core-module guests (the ABI is
drivers/include/edgeagent_i2c.h).

The guest never names a bus: it receives an ``i2c`` handle per granted bus (``I2cHost.grant``), and every
method checks the address against that grant before touching the bus. A denied address returns
``EA_I2C_ERR_ACCESS`` (the WIT variant's ``other``; core guests see the distinct code so a driver can tell a
policy denial from a bus fault) and is recorded in ``denials`` for the caller to report.

Core ABI of each import (all i32; lists are guest (ptr, len); results are written into guest buffers):
- ``[method]i2c.transaction(self, address, ops, n_ops) -> err``: ``ops`` points at ``n_ops`` 12-byte
  ``struct ea_i2c_op {u32 kind; u32 ptr; u32 len}`` (kind 0 = read into ptr, 1 = write from ptr). Executed
  as one
  combined transaction (I2C_RDWR: repeated starts, one stop). Implemented, unlike the reference host.
- ``[method]i2c.read(self, address, buf, len) -> err``
- ``[method]i2c.write(self, address, buf, len) -> err``
- ``[method]i2c.write-read(self, address, wbuf, wlen, rbuf, rlen) -> err``
- ``[method]delay.delay-ns(self, ns)`` (module ``wasi:i2c/delay``)
``err`` is 0 or a negative ``EA_I2C_ERR_*``.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Iterable

from edgeagent.hw.i2c import ErrorCode, I2cBus, I2cError, Operation, Read, Write
from edgeagent.wasm.host import I32, HandleTable, HostModule, HostTrap, hostfunc

log = logging.getLogger(__name__)

# The error-code variant as core return values (edgeagent_i2c.h). Order: the WIT variant's, then ACCESS.
ERR_BUS = -1
ERR_ARBITRATION_LOSS = -2
ERR_NO_ACK_ADDRESS = -3
ERR_NO_ACK_DATA = -4
ERR_NO_ACK_UNKNOWN = -5
ERR_OVERRUN = -6
ERR_OTHER = -7
ERR_ACCESS = -8

CODE_TO_ERR: dict[ErrorCode, int] = {
    ErrorCode.BUS: ERR_BUS,
    ErrorCode.ARBITRATION_LOSS: ERR_ARBITRATION_LOSS,
    ErrorCode.NO_ACKNOWLEDGE_ADDRESS: ERR_NO_ACK_ADDRESS,
    ErrorCode.NO_ACKNOWLEDGE_DATA: ERR_NO_ACK_DATA,
    ErrorCode.NO_ACKNOWLEDGE_UNKNOWN: ERR_NO_ACK_UNKNOWN,
    ErrorCode.OVERRUN: ERR_OVERRUN,
    ErrorCode.OTHER: ERR_OTHER,
}
ERR_NAMES: dict[int, str] = {v: k.value for k, v in CODE_TO_ERR.items()} | {
    ERR_ACCESS: "access denied by policy"
}

_OP = struct.Struct("<III")  # struct ea_i2c_op
OP_READ = 0
OP_WRITE = 1
OP_SIZE = 12
MAX_OPS = 64
MAX_TRANSFER = 65536  # bytes per transaction, both directions together


def describe_error(err: int) -> str:
    return ERR_NAMES.get(err, f"unknown error {err}")


@dataclasses.dataclass(frozen=True)
class I2cGrant:
    """What a policy grants on one bus: the addresses a guest may talk to."""

    bus: I2cBus
    addresses: frozenset[int]


@dataclasses.dataclass(frozen=True)
class Denial:
    bus: str
    address: int


class I2cHost(HostModule):
    interface = "wasi:i2c/i2c"

    def __init__(self, grants: Iterable[I2cGrant] = ()) -> None:
        super().__init__()
        self.handles: HandleTable[I2cGrant] = HandleTable()
        self._grants = self.handles.mapping
        self._write_read: dict[int, Callable[[int, bytes, int], bytes]] = {}
        self._write: dict[int, Callable[[int, bytes], None]] = {}
        self.denials: list[Denial] = []
        self.last_error: I2cError | None = None
        for g in grants:
            self.grant(g)

    def grant(self, grant: I2cGrant) -> int:
        """Hands a bus to the guest; the returned handle is what the guest's ``init`` receives."""
        handle = self.handles.add(grant)
        # The bus's register-access shortcuts (hw.i2c.I2cBus), looked up once here rather than per call.
        write_read = getattr(grant.bus, "write_read", None)
        write = getattr(grant.bus, "write", None)
        if callable(write_read):
            self._write_read[handle] = write_read
        if callable(write):
            self._write[handle] = write
        return handle

    # ------------------------------------------------------------------ helpers
    # Per call: one dict lookup for the handle, one set test for the address (the grant is resolved when the
    # bus is handed over), the bus transaction, and the result copied straight into guest memory.
    def _grant(self, handle: int) -> I2cGrant:
        grant = self._grants.get(handle)
        if grant is None:
            raise HostTrap(f"invalid handle {handle}")
        return grant

    def _deny(self, grant: I2cGrant, address: int) -> int:
        self.denials.append(Denial(grant.bus.name, address))
        # INFO: recorded in `denials`, reported by the caller as the error (see the USB host).
        log.info(
            "%s: denied I2C address %#04x on %s (not in its policy)", self.guest.name, address, grant.bus.name
        )
        return ERR_ACCESS

    def _run(self, handle: int, address: int, ops: list[Operation]) -> list[bytes] | int:
        grant = self._grants.get(handle) or self._grant(handle)
        if address not in grant.addresses:
            return self._deny(grant, address)
        try:
            return grant.bus.transaction(address, ops)
        except I2cError as e:
            self.last_error = e
            return CODE_TO_ERR[e.code]

    # ------------------------------------------------------------------ wasi:i2c/i2c
    @hostfunc("[method]i2c.transaction", params=(I32, I32, I32, I32), results=(I32,), blocking=True)
    def transaction(self, handle: int, address: int, ops_ptr: int, n_ops: int) -> int:
        if n_ops > MAX_OPS:
            return ERR_OTHER
        mem = self.memory
        raw = mem.read(ops_ptr, OP_SIZE * n_ops)
        ops: list[Operation] = []
        reads: list[tuple[int, int]] = []
        total = 0
        for i in range(n_ops):
            kind, ptr, length = _OP.unpack_from(raw, OP_SIZE * i)
            total += length
            if total > MAX_TRANSFER:
                return ERR_OTHER
            if kind == OP_READ:
                # Checked before the bus moves: a bad buffer must not half-run a transaction.
                mem.check(ptr, length)
                reads.append((ptr, length))
                ops.append(Read(length))
            elif kind == OP_WRITE:
                ops.append(Write(mem.read(ptr, length)))
            else:
                raise HostTrap(f"i2c transaction: operation {i} has unknown kind {kind}")
        result = self._run(handle, address, ops)
        if result.__class__ is int:
            return result
        for (ptr, length), data in zip(reads, result, strict=True):  # type: ignore[arg-type]
            mem.write_at_most(ptr, data, length)
        return 0

    @hostfunc("[method]i2c.read", params=(I32, I32, I32, I32), results=(I32,), blocking=True)
    def read(self, handle: int, address: int, buf: int, length: int) -> int:
        if length > MAX_TRANSFER:
            return ERR_OTHER
        mem = self._memory or self.memory
        mem.check(buf, length)
        result = self._run(handle, address, [Read(length)])
        if result.__class__ is int:
            return result
        mem.write_at_most(buf, result[0], length)  # type: ignore[index]
        return 0

    @hostfunc("[method]i2c.write", params=(I32, I32, I32, I32), results=(I32,), blocking=True)
    def write(self, handle: int, address: int, buf: int, length: int) -> int:
        if length > MAX_TRANSFER:
            return ERR_OTHER
        fast = self._write.get(handle)
        if fast is None:
            result = self._run(handle, address, [Write((self._memory or self.memory).read(buf, length))])
            return result if result.__class__ is int else 0
        grant = self._grants.get(handle) or self._grant(handle)
        if address not in grant.addresses:
            return self._deny(grant, address)
        try:
            fast(address, (self._memory or self.memory).read(buf, length))
        except I2cError as e:
            self.last_error = e
            return CODE_TO_ERR[e.code]
        return 0

    @hostfunc("[method]i2c.write-read", params=(I32, I32, I32, I32, I32, I32), results=(I32,), blocking=True)
    def write_read(self, handle: int, address: int, wbuf: int, wlen: int, rbuf: int, rlen: int) -> int:
        # The hot path of every register read: kept lean on purpose (no helper frames on success).
        grant = self._grants.get(handle) or self._grant(handle)
        if address not in grant.addresses:
            return self._deny(grant, address)
        if wlen + rlen > MAX_TRANSFER:
            return ERR_OTHER
        mem = self._memory or self.memory
        wdata = mem.read_checking(wbuf, wlen, rbuf, rlen)  # both buffers checked before the bus moves
        fast = self._write_read.get(handle)
        try:
            if fast is not None:
                data = fast(address, wdata, rlen)
            else:
                data = grant.bus.transaction(address, [Write(wdata), Read(rlen)])[0]
        except I2cError as e:
            self.last_error = e
            return CODE_TO_ERR[e.code]
        mem.write_at_most(rbuf, data, rlen)
        return 0

    @hostfunc("[resource-drop]i2c", params=(I32,))
    def drop(self, handle: int) -> None:
        self.handles.remove(handle)
        self._write_read.pop(handle, None)
        self._write.pop(handle, None)


class DelayHost(HostModule):
    """``wasi:i2c/delay``: the guest waits (conversion times, LCD command times) without burning its
    budget."""

    interface = "wasi:i2c/delay"

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self._sleep = sleep
        self.handles: HandleTable[None] = HandleTable()
        self.slept_ns = 0

    def new_handle(self) -> int:
        return self.handles.add(None)

    @hostfunc("[method]delay.delay-ns", params=(I32, I32), blocking=True)
    def delay_ns(self, handle: int, ns: int) -> None:
        self.handles.get(handle)
        self.slept_ns += ns
        self._sleep(ns / 1e9)
