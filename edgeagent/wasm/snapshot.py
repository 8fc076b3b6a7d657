"""Snapshot and restore of a guest: linear memory plus every exported mutable global.

That is the whole Wasm-visible state of a wasi-libc guest built with ``__stack_pointer`` exported
(``-mmutable-globals -Wl,--export=__stack_pointer``): the heap and static data live in memory, the shadow
stack
pointer in that global. Restoring goes into a fresh instance made *without* running ``_initialize`` (it would
reset libc and static constructors). Host-side state (WASI descriptors, host handles) is not captured: the
host
modules recreate what they hand out.

On disk: ``EAWS1`` magic, a JSON header (globals, memory length, sha256), then the raw memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime

from edgeagent.errors import StateError
from edgeagent.wasm.engine import WASM_PAGE

if TYPE_CHECKING:
    from edgeagent.wasm.guest import Guest

MAGIC = b"EAWS1\n"


@dataclasses.dataclass
class Snapshot:
    memory: bytes
    globals: dict[str, tuple[str, int | float]]  # name -> (value type, value)

    @classmethod
    def capture(cls, guest: Guest) -> Snapshot:
        if guest.memory is None:
            raise guest._error("exports no memory to snapshot")
        globs: dict[str, tuple[str, int | float]] = {}
        for name, g in guest._globals().items():
            ty = g.type(guest.store)
            if ty.mutable:
                globs[name] = (str(ty.content), g.value(guest.store))
        if "__stack_pointer" not in globs:
            raise guest._error(
                "does not export __stack_pointer (build with -mmutable-globals "
                "-Wl,--export=__stack_pointer), so it cannot be snapshotted"
            )
        return cls(memory=guest.memory.dump(), globals=globs)

    def apply(self, guest: Guest) -> None:
        """Writes this state into ``guest`` (fresh, not initialised); grows its memory as needed."""
        mem = guest.memory
        if mem is None:
            raise guest._error("exports no memory to restore into")
        have = mem.size
        if len(self.memory) > have:
            try:
                mem.memory.grow(guest.store, (len(self.memory) - have + WASM_PAGE - 1) // WASM_PAGE)
            except wasmtime.WasmtimeError as e:
                raise guest._error(f"cannot grow memory to restore a snapshot: {e}") from None
        mem.write(0, self.memory)
        found = guest._globals()
        for name, (ty, value) in self.globals.items():
            g = found.get(name)
            if g is None or str(g.type(guest.store).content) != ty or not g.type(guest.store).mutable:
                raise guest._error(f"snapshot global {name} ({ty}) does not match the module")
            g.set_value(guest.store, value)

    # ------------------------------------------------------------------ bytes / files
    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "globals": {k: list(v) for k, v in self.globals.items()},
                "memory_len": len(self.memory),
                "sha256": hashlib.sha256(self.memory).hexdigest(),
            },
            sort_keys=True,
        ).encode()
        return MAGIC + len(header).to_bytes(4, "little") + header + self.memory

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise StateError("not an edgeagent Wasm snapshot (bad magic)")
        off = len(MAGIC)
        hlen = int.from_bytes(data[off : off + 4], "little")
        try:
            header = json.loads(data[off + 4 : off + 4 + hlen])
            memory = data[off + 4 + hlen :]
            if len(memory) != header["memory_len"] or hashlib.sha256(memory).hexdigest() != header["sha256"]:
                raise ValueError("memory length or digest mismatch")
            globs = {k: (str(v[0]), v[1]) for k, v in header["globals"].items()}
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StateError(f"corrupt Wasm snapshot: {e}") from None
        return cls(memory=memory, globals=globs)

    def save(self, path: Path) -> None:
        """Atomic write (tmp + fsync + rename): a crash never leaves half a snapshot."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(self.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        try:
            return cls.from_bytes(path.read_bytes())
        except OSError as e:
            raise StateError(f"cannot read snapshot {path}: {e.strerror}") from None
