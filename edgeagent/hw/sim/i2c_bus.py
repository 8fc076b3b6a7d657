"""An in-process I2C bus of simulated parts: routes each transaction to the model at its address.

An address with no model NACKs in the address phase, as on a real bus. ``inject`` queues a failure for the
next transactions to an address (arbitration loss, timeout, data NACK...) so error paths can be tested without
hardware. Also the "null backend" of the benchmark: no kernel, no syscalls, only the model's work.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Protocol

from edgeagent.hw.i2c import ErrorCode, I2cError, Operation, Read, Write, check_address


class I2cModel(Protocol):
    address: int
    name: str

    def transfer(self, ops: Sequence[Operation]) -> list[bytes]: ...


class SimI2cBus:
    def __init__(self, models: Iterable[I2cModel] = (), *, name: str = "sim-i2c-1") -> None:
        self.name = name
        self.models: dict[int, I2cModel] = {}
        self._faults: dict[int, collections.deque[ErrorCode]] = {}
        self.transactions = 0
        for m in models:
            self.attach(m)

    def attach(self, model: I2cModel) -> None:
        if model.address in self.models:
            raise ValueError(f"address {model.address:#04x} already has {self.models[model.address].name}")
        self.models[model.address] = model

    def detach(self, address: int) -> None:
        """Unplugs the part: later transactions NACK."""
        self.models.pop(address, None)

    def inject(self, address: int, code: ErrorCode, count: int = 1) -> None:
        self._faults.setdefault(address, collections.deque()).extend([code] * count)

    def transaction(self, address: int, operations: Sequence[Operation]) -> list[bytes]:
        check_address(address)
        self.transactions += 1
        faults = self._faults.get(address)
        if faults:
            raise I2cError(faults.popleft(), address, "injected")
        model = self.models.get(address)
        if model is None:
            raise I2cError(ErrorCode.NO_ACKNOWLEDGE_ADDRESS, address, "ENXIO")
        return model.transfer(operations)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        """The register-read transaction (see Smbus2Bus.write_read)."""
        return self.transaction(address, [Write(data), Read(length)])[0]

    def write(self, address: int, data: bytes) -> None:
        self.transaction(address, [Write(data)])

    def close(self) -> None:
        pass
