"""Simulated I2C parts described in TOML instead of Python: a register map, commands with a conversion time,
CRC-8, values that vary over time. Loaded by the in-process simulator and the umockdev emulation alike.

Why: a driver author should be able to simulate a new part without writing (or forking) Python. The format
covers the two shapes most I2C sensors have: *register parts* (write a register pointer, then read bytes from
it: TMP102, BME280, HTS221) and *command parts* (write a 16-bit command, wait the conversion time, read the
result with a CRC after each word: SHT3x, SCD4x). Anything else is a Python model, registered under the
entry-point group ``edgeagent.sim_models`` (see ``python_model``).

A model file (every key, with its default)::

    name = "sht31"                  # what status lines and errors call the part
    address = 0x44                  # where it answers by default
    addresses = [0x44, 0x45]        # the addresses its strap pins allow ([address] if omitted): a driver
                                    # told any other address gets no acknowledge, as on a real bus
    pointer_bytes = 1               # bytes of register address (1) or command code (2) opening a write
    auto_increment = true           # register parts: a read past a register goes on to the next one

    [crc8]                          # the CRC appended to each `crc = true` field (Sensirion's by default)
    polynomial = 0x31
    init = 0xFF

    [values.temperature]            # a physical value the fields below encode
    value = 21.5                    # its value at start
    amplitude = 0.0                 # optional: value + amplitude * sin(2 pi t / period_s), t since start
    period_s = 60.0
    drift_per_s = 0.0               # optional: plus drift_per_s * t

    [[registers]]                   # register parts: what a read at `at` returns
    at = 0x0F
    reset = [0x60]                  # fixed bytes (a chip ID, a power-on configuration), or...
    access = "read"                 # "read", "write" or "read-write": what the bus master may do
    # ...an encoded value: value = "temperature", bytes = 2, scale = 256.0, offset = 0.0, signed = true,
    # order = "big" (raw = round((value + offset) * scale)), crc = false

    [[commands]]                    # command parts: writing `at` starts a conversion
    at = 0x2400
    conversion_ms = 15.0            # reading earlier gets no acknowledge (busy = "nack") or the previous
    busy = "nack"                   # result (busy = "stale")
    result = [ { value = "temperature", bytes = 2, scale = 374.49, offset = 45.0, crc = true } ]

Timing uses the part's clock (edgeagent.hw.sim.clock, the monotonic clock by default): a driver that skips the
datasheet's wait reads too early, as on hardware.
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeagent.errors import ModelError
from edgeagent.hw.i2c import ErrorCode, I2cError, Operation, Read, Write
from edgeagent.hw.sim.clock import Clock, Conversion

ENTRY_POINT_GROUP = "edgeagent.sim_models"
ACCESS = ("read", "write", "read-write")


def crc8(data: bytes, polynomial: int = 0x31, init: int = 0xFF) -> int:
    """CRC-8, MSB first, no reflection, no final XOR (Sensirion's with the defaults: 0xBEEF -> 0x92)."""
    crc = init
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ polynomial) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


@dataclasses.dataclass(frozen=True)
class Value:
    value: float
    amplitude: float = 0.0
    period_s: float = 60.0
    drift_per_s: float = 0.0

    def at(self, t: float) -> float:
        v = self.value + self.drift_per_s * t
        if self.amplitude:
            v += self.amplitude * math.sin(2 * math.pi * t / self.period_s)
        return v


@dataclasses.dataclass(frozen=True)
class Field:
    """Bytes a read returns: fixed (``reset``) or a value encoded as raw = round((value + offset) * scale)."""

    reset: bytes = b""
    value: str = ""
    nbytes: int = 0
    scale: float = 1.0
    offset: float = 0.0
    signed: bool = False
    order: str = "big"
    crc: bool = False

    def encode(self, values: dict[str, float], crc: tuple[int, int]) -> bytes:
        if not self.value:
            data = self.reset
        else:
            raw = round((values[self.value] + self.offset) * self.scale)
            bits = 8 * self.nbytes
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.signed else (0, (1 << bits) - 1)
            raw = max(lo, min(hi, raw)) & ((1 << bits) - 1)
            data = raw.to_bytes(self.nbytes, "big" if self.order == "big" else "little")
        return data + bytes([crc8(data, *crc)]) if self.crc else data


@dataclasses.dataclass(frozen=True)
class Register:
    at: int
    field: Field
    access: str = "read"


@dataclasses.dataclass(frozen=True)
class Command:
    at: int
    result: tuple[Field, ...]
    conversion_s: float = 0.0
    busy: str = "nack"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A parsed model file; ``part(address)`` makes a fresh simulated part from it."""

    name: str
    address: int
    addresses: tuple[int, ...]
    pointer_bytes: int
    auto_increment: bool
    crc: tuple[int, int]
    values: dict[str, Value]
    registers: dict[int, Register]
    commands: dict[int, Command]
    source: str = ""

    def part(self, address: int | None = None, *, clock: Clock = time.monotonic) -> TomlPart:
        return TomlPart(self, self.address if address is None else address, clock=clock)

    def place(self, wanted: int) -> int:
        """Where the part sits when a driver is pointed at ``wanted``: there if its straps allow it, else at
        its default address (so the driver's transfers get no acknowledge, as on a real bus)."""
        return wanted if wanted in self.addresses else self.address


class TomlPart:
    """One simulated part from a ModelSpec: the ``I2cModel`` interface the buses call (``transfer``)."""

    def __init__(self, spec: ModelSpec, address: int, *, clock: Clock = time.monotonic) -> None:
        self.spec = spec
        self.name = spec.name
        self.address = address
        self._clock = clock
        self._t0 = clock()
        self.pointer = 0
        self.written: dict[int, bytes] = {}  # register writes by the bus master
        self._command: Command | None = None
        self._conversion = Conversion(clock)
        self._result = b""  # the last completed conversion's bytes (busy = "stale")
        self.values = dict(spec.values)  # tests may set a value: model.values["temperature"] = Value(30.0)

    def now_values(self) -> dict[str, float]:
        t = self._clock() - self._t0
        return {k: v.at(t) for k, v in self.values.items()}

    # ------------------------------------------------------------------ the bus side
    def transfer(self, ops: Sequence[Operation]) -> list[bytes]:
        out: list[bytes] = []
        for op in ops:
            if isinstance(op, Write):
                self._write(bytes(op.data))
            elif isinstance(op, Read):
                out.append(self._read(op.length))
        return out

    def _write(self, data: bytes) -> None:
        n = self.spec.pointer_bytes
        if len(data) < n:
            if not data:
                return  # a quick write: an address probe
            raise I2cError(ErrorCode.NO_ACKNOWLEDGE_DATA, self.address, f"{self.name}: short command")
        pointer = int.from_bytes(data[:n], "big")
        command = self.spec.commands.get(pointer)
        if command is not None:
            self._finish()
            self._command = command
            self._conversion.start(command.conversion_s)
            return
        reg = self.spec.registers.get(pointer)
        if reg is None and n > 1:  # a command part NACKs a command it does not know
            raise I2cError(ErrorCode.NO_ACKNOWLEDGE_DATA, self.address, f"{self.name}: unknown command")
        self.pointer = pointer
        self._command = None
        payload = data[n:]
        if payload:
            if reg is None or reg.access == "read":
                return  # writes to read-only or absent registers are ignored, like the hardware
            self.written[pointer] = payload

    def _finish(self) -> None:
        """A conversion whose time is up leaves its result behind (for busy = "stale")."""
        cmd = self._command
        if cmd is not None and not self._conversion.busy:
            self._result = self._encode(cmd.result)

    def _encode(self, fields: Sequence[Field]) -> bytes:
        values = self.now_values()
        return b"".join(f.encode(values, self.spec.crc) for f in fields)

    def _read(self, n: int) -> bytes:
        cmd = self._command
        if cmd is not None:
            if self._conversion.busy:
                if cmd.busy == "nack":
                    raise I2cError(
                        ErrorCode.NO_ACKNOWLEDGE_ADDRESS, self.address, f"{self.name}: conversion in progress"
                    )
                data = self._result
            else:
                data = self._result = self._encode(cmd.result)
                self._command = None  # read once, like the part
            return (data + b"\xff" * n)[:n]
        out = bytearray()
        pointer = self.pointer
        while len(out) < n:
            reg = self.spec.registers.get(pointer)
            if reg is None:
                out.append(0)
                pointer += 1
                continue
            chunk = self.written.get(pointer) if reg.access != "read" else None
            if chunk is None:
                chunk = reg.field.encode(self.now_values(), self.spec.crc)
            out += chunk
            if not self.spec.auto_increment:
                continue
            pointer += max(1, len(chunk))
        return bytes(out[:n])


# ---------------------------------------------------------------------- parsing
class _Table:
    """Typed access to one TOML table; every error names the file and the key path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a table")
        self.data, self.where, self.used = data, where, set[str]()

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False
    ) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ModelError(f"{self.where}: missing key {key!r}")
            return default
        v = self.data[key]
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ModelError(f"{self.where}: {key} must be a {_kind_name(kind)}, got {v!r}")
        if not isinstance(v, kind):
            raise ModelError(f"{self.where}: {key} must be a {_kind_name(kind)}, got {v!r}")
        return v

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ModelError(f"{self.where}: unknown key {unknown[0]!r}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "number"
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _field(t: _Table, values: dict[str, Value]) -> Field:
    reset = t.get("reset", (list, int), None)
    value = t.get("value", str, "")
    crc = t.get("crc", bool, False)
    if (reset is None) == (not value):
        raise ModelError(f"{t.where}: give either reset (fixed bytes) or value (a [values] name)")
    if value:
        if value not in values:
            raise ModelError(f"{t.where}: value {value!r} is not defined in [values]")
        nbytes = t.get("bytes", int, 2)
        if not 1 <= nbytes <= 8:
            raise ModelError(f"{t.where}: bytes must be 1 to 8, got {nbytes}")
        order = t.get("order", str, "big")
        if order not in ("big", "little"):
            raise ModelError(f"{t.where}: order must be 'big' or 'little', got {order!r}")
        f = Field(
            value=value,
            nbytes=nbytes,
            scale=float(t.get("scale", (int, float), 1.0)),
            offset=float(t.get("offset", (int, float), 0.0)),
            signed=t.get("signed", bool, False),
            order=order,
            crc=crc,
        )
    else:
        if isinstance(reset, int):
            nbytes = t.get("bytes", int, 1)
            if not 1 <= nbytes <= 8 or not 0 <= reset < 1 << (8 * nbytes):
                raise ModelError(f"{t.where}: reset {reset:#x} does not fit in {nbytes} byte(s)")
            data = reset.to_bytes(nbytes, "big")
        else:
            if not reset or not all(isinstance(b, int) and 0 <= b <= 255 for b in reset):
                raise ModelError(f"{t.where}: reset must be bytes (integers 0-255), got {reset!r}")
            data = bytes(reset)
        f = Field(reset=data, crc=crc)
    return f


def parse_model(data: Any, *, source: str = "model") -> ModelSpec:
    """A ModelSpec from decoded TOML; ModelError names the file and key of the first problem."""
    top = _Table(data, source)
    name = top.get("name", str, required=True)
    address = top.get("address", int, required=True)
    if not 0x03 <= address <= 0x77:
        raise ModelError(f"{source}: address {address:#04x} is not a 7-bit device address (0x03-0x77)")
    addresses = tuple(top.get("addresses", list, [address]))
    if not all(isinstance(a, int) and not isinstance(a, bool) and 0x03 <= a <= 0x77 for a in addresses):
        raise ModelError(f"{source}: addresses must be 7-bit device addresses, got {list(addresses)!r}")
    if address not in addresses:
        raise ModelError(f"{source}: address {address:#04x} is not among addresses")
    pointer_bytes = top.get("pointer_bytes", int, 1)
    if pointer_bytes not in (1, 2):
        raise ModelError(f"{source}: pointer_bytes must be 1 or 2, got {pointer_bytes}")
    crc_t = _Table(top.get("crc8", dict, {}), f"{source}: crc8")
    crc = (crc_t.get("polynomial", int, 0x31) & 0xFF, crc_t.get("init", int, 0xFF) & 0xFF)
    crc_t.done()
    values: dict[str, Value] = {}
    for vname, raw in top.get("values", dict, {}).items():
        vt = _Table(raw, f"{source}: values.{vname}")
        period = float(vt.get("period_s", (int, float), 60.0))
        if period <= 0:
            raise ModelError(f"{vt.where}: period_s must be greater than 0")
        values[vname] = Value(
            value=float(vt.get("value", (int, float), required=True)),
            amplitude=float(vt.get("amplitude", (int, float), 0.0)),
            period_s=period,
            drift_per_s=float(vt.get("drift_per_s", (int, float), 0.0)),
        )
        vt.done()
    limit = 1 << (8 * pointer_bytes)
    registers: dict[int, Register] = {}
    for i, raw in enumerate(top.get("registers", list, [])):
        rt = _Table(raw, f"{source}: registers[{i}]")
        at = rt.get("at", int, required=True)
        if not 0 <= at < limit:
            raise ModelError(f"{rt.where}: at {at:#x} does not fit in pointer_bytes = {pointer_bytes}")
        access = rt.get("access", str, "read")
        if access not in ACCESS:
            raise ModelError(f"{rt.where}: access must be one of {', '.join(ACCESS)}, got {access!r}")
        if at in registers:
            raise ModelError(f"{rt.where}: register {at:#x} is defined twice")
        registers[at] = Register(at, _field(rt, values), access)
        rt.done()
    commands: dict[int, Command] = {}
    for i, raw in enumerate(top.get("commands", list, [])):
        ct = _Table(raw, f"{source}: commands[{i}]")
        at = ct.get("at", int, required=True)
        if not 0 <= at < limit:
            raise ModelError(f"{ct.where}: at {at:#x} does not fit in pointer_bytes = {pointer_bytes}")
        if at in registers or at in commands:
            raise ModelError(f"{ct.where}: {at:#x} is already a register or command")
        busy = ct.get("busy", str, "nack")
        if busy not in ("nack", "stale"):
            raise ModelError(f"{ct.where}: busy must be 'nack' or 'stale', got {busy!r}")
        conversion = float(ct.get("conversion_ms", (int, float), 0.0))
        if conversion < 0:
            raise ModelError(f"{ct.where}: conversion_ms must not be negative")
        fields = []
        for j, f in enumerate(ct.get("result", list, required=True)):
            ft = _Table(f, f"{ct.where}: result[{j}]")
            fields.append(_field(ft, values))
            ft.done()
        if not fields:
            raise ModelError(f"{ct.where}: result must not be empty")
        commands[at] = Command(at, tuple(fields), conversion / 1000.0, busy)
        ct.done()
    if not registers and not commands:
        raise ModelError(f"{source}: a model needs at least one [[registers]] or [[commands]] entry")
    spec = ModelSpec(
        name=name,
        address=address,
        addresses=addresses,
        pointer_bytes=pointer_bytes,
        auto_increment=top.get("auto_increment", bool, True),
        crc=crc,
        values=values,
        registers=registers,
        commands=commands,
        source=source,
    )
    top.done()
    return spec


def load_model(path: Path) -> ModelSpec:
    """Reads a model file; ModelError (one line naming the file) for anything wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelError(f"model {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ModelError(f"model {path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelError(f"model {path}: not valid TOML: {e}") from None
    return parse_model(data, source=f"model {path}")


def python_model(name: str) -> Callable[[int], Any]:
    """The factory (address -> part) registered as ``name`` in the ``edgeagent.sim_models`` entry points.

    A package adds one in its pyproject.toml: ``[project.entry-points."edgeagent.sim_models"]
    sht31 = "mypkg.sim:Sht31"`` (a class or function taking the address). ModelError if there is none.
    """
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ModelError(f"no simulated-device model {name!r} in the {ENTRY_POINT_GROUP} entry points")
    try:
        factory = found[0].load()
    except Exception as e:  # a broken third-party package: one line, not its traceback
        why = f"{type(e).__name__}: {e}"
        raise ModelError(f"model {name!r} ({found[0].value}) cannot be loaded: {why}") from None
    if not callable(factory):
        raise ModelError(f"model {name!r} ({found[0].value}) is not callable")
    return factory
