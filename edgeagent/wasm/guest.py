"""One instantiated guest: its Store, limits, imports served by host modules, and fast export calls.

Every way a guest can fail (bad imports, missing exports, a trap, a loop, a memory bomb, a host function
raising) ends as ``error_class`` with a one-line message naming the guest; nothing a guest does can raise
anything else into the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import wasmtime

from edgeagent.errors import DriverError, WasmError
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.fastcall import (
    ExportFunc,
    GuestMemory,
    RawCallError,
    define_host_func,
    set_epoch_deadline,
    trap_pointer,
)
from edgeagent.wasm.host import HostModule, HostTrap
from edgeagent.wasm.moduleinfo import ModuleInfo, Signature

log = logging.getLogger(__name__)

WASI_MODULE = "wasi_snapshot_preview1"

_TRAP_REASONS = {
    wasmtime.TrapCode.STACK_OVERFLOW: "call stack exhausted",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "misaligned memory access",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to a null table entry",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call signature mismatch",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid float-to-int conversion",
    wasmtime.TrapCode.UNREACHABLE: "unreachable executed (abort or __builtin_trap)",
}


class Guest:
    """A guest instance. Not thread-safe: one thread calls a given guest at a time."""

    def __init__(
        self,
        runtime: Runtime,
        module: wasmtime.Module,
        *,
        name: str,
        hosts: Iterable[HostModule] = (),
        limits: Limits | None = None,
        required_exports: Sequence[str] = (),
        initialize: bool = True,
        wasi: bool = True,
        kind: str = "driver",
        error_class: type[WasmError] = DriverError,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.kind = kind
        self.error_class = error_class
        self.limits = limits or Limits()
        self.hosts = list(hosts)
        self._compute_ticks = runtime.ticks(self.limits.compute_ms)
        self._call_ticks = runtime.ticks(self.limits.call_ms)
        self._start = runtime.epoch
        self.armed_epoch = runtime.epoch  # when the deadline was last (re-)armed: see fastcall
        self._armed_full = False  # ... and whether with a whole compute budget (not capped by the call limit)
        self._exc: BaseException | None = None
        self._closed = False

        self.store = wasmtime.Store(runtime.engine)
        self.module_info = info = ModuleInfo.of(module)
        imports = info.imports
        wasi = wasi and any(imp[0] == WASI_MODULE for imp in imports)
        if wasi:
            # No preopens, no environment, no stdio: a driver talks to the world only through its hosts.
            self.store.set_wasi(wasmtime.WasiConfig())
        lim = self.limits
        self.store.set_limits(
            memory_size=lim.memory_bytes,
            instances=lim.instances,
            tables=lim.tables,
            table_elements=lim.table_elements,
        )
        self._ctx = self.store._context()
        linker = wasmtime.Linker(runtime.engine)
        if wasi:
            linker.define_wasi()
        self._link(linker, imports, wasi)
        self._arm()
        runtime.enter(self)  # a start function runs Wasm code
        try:
            self.instance = linker.instantiate(self.store, module)
        except wasmtime.Trap as e:
            raise self._error(f"trapped while starting: {self._reason(e.message, e.trap_code)}") from None
        except wasmtime.WasmtimeError as e:
            raise self._error(f"cannot be instantiated: {_first_line(e)}") from None
        finally:
            runtime.leave(self)
        self.exports = self.instance.exports(self.store)
        self.export_names = list(info.exports)
        names = set(self.export_names)
        missing = [n for n in required_exports if n not in names]
        if missing:
            raise self._error(f"does not export {', '.join(missing)} (required by the {kind} ABI)")
        mem = self.exports.get("memory") if "memory" in names else None
        self.memory: GuestMemory | None = (
            GuestMemory(self.store, mem) if isinstance(mem, wasmtime.Memory) else None
        )
        for h in self.hosts:
            h.bind(self, self.memory)
        self._funcs: dict[str, ExportFunc] = {}
        if initialize and "_initialize" in names:
            self.call("_initialize")

    # ------------------------------------------------------------------ linking
    def _link(
        self, linker: wasmtime.Linker, imports: Sequence[tuple[str, str, Signature | None]], wasi: bool
    ) -> None:
        provided: dict[tuple[str, str], tuple[Any, Any]] = {}
        for h in self.hosts:
            for mod, spec, fn in h.imports():
                provided[(mod, spec.name)] = (spec, fn)
        defined: set[tuple[str, str]] = set()
        for module_name, name, got in imports:
            if wasi and module_name == WASI_MODULE:
                continue
            key = (module_name, name)
            if key in defined:  # the same import twice (legal Wasm): one definition serves both
                continue
            defined.add(key)
            if key not in provided:
                raise self._error(f"imports unknown function {module_name}.{name}")
            spec, fn = provided[key]
            if got is None:
                raise self._error(f"import {module_name}.{name} must be a function")
            if got != (spec.params, spec.results):
                raise self._error(
                    f"import {module_name}.{name} has type {_sig(*got)}, the host provides "
                    f"{_sig(spec.params, spec.results)}"
                )
            define_host_func(
                linker,
                module_name,
                spec.name,
                spec.params,
                spec.results,
                fn,
                after=self._rearm if spec.blocking else None,
                fail=self._fail,
                functypes=self.runtime.functypes,
                clock=self.runtime,
                armed=self,
            )

    # ------------------------------------------------------------------ deadlines
    def _arm(self) -> None:
        self._start = self.armed_epoch = self.runtime.epoch
        self._armed_full = True
        set_epoch_deadline(self._ctx, self._compute_ticks)

    def _rearm(self) -> None:
        """After a blocking host call: a fresh compute budget, within what is left of the call budget.

        Called only when the epoch moved since the last arming (fastcall skips it otherwise: the same absolute
        deadline would be set again)."""
        epoch = self.armed_epoch = self.runtime.epoch
        left = self._call_ticks - (epoch - self._start)
        self._armed_full = left >= self._compute_ticks
        set_epoch_deadline(self._ctx, max(0, min(self._compute_ticks, left)))

    def _fail(self, exc: BaseException) -> int:
        self._exc = exc
        return trap_pointer(str(exc) if isinstance(exc, HostTrap) else f"host error: {type(exc).__name__}")

    # ------------------------------------------------------------------ calls
    def func(self, export: str) -> ExportFunc:
        """The fast callable for an export (cached)."""
        f = self._funcs.get(export)
        if f is None:
            if self._closed:
                raise self._error("is closed")
            item = self.exports.get(export) if export in self.export_names else None
            if not isinstance(item, wasmtime.Func):
                raise self._error(f"has no exported function {export!r}")
            f = self._funcs[export] = ExportFunc(self.store, item, self.module_info.export_sigs.get(export))
        return f

    def call(self, export: str, *args: int | float) -> int | float | None:
        """Calls an export with its compute and call limits armed; errors become ``error_class``."""
        f = self._funcs.get(export) or self.func(export)
        epoch = self._start = self.runtime.epoch
        if epoch != self.armed_epoch or not self._armed_full:
            # Armed in this epoch with a full compute budget already: the deadline would be the same (the
            # C call costs ~0.4 us, a third of a whole export call).
            self.armed_epoch = epoch
            self._armed_full = True
            set_epoch_deadline(self._ctx, self._compute_ticks)
        # In flight for the epoch ticker (engine.py); a nested call (a host function calling back in) leaves
        # the outer one in flight.
        inflight = self.runtime.inflight
        nested = self in inflight
        inflight[self] = None
        if self.runtime.paused:
            self.runtime.enter(self)
        try:
            return f.call(*args)
        except RawCallError as e:
            capped, self._armed_full = not self._armed_full, False  # stopped: arm afresh next time
            raise self._call_error(export, e, capped) from self._take_exc()
        finally:
            if not nested:
                del inflight[self]

    def bind(self, export: str) -> Callable[..., int | float | None]:
        """``call`` for one export, resolved once: for a driver's per-reading export (a frame and a lookup
        less per call). Raises like ``call``; calling it after ``close`` raises WasmError."""
        raw = self.func(export).call
        runtime, ctx, ticks = self.runtime, self._ctx, self._compute_ticks
        inflight = runtime.inflight

        def call(*args: int | float) -> int | float | None:
            if self._closed:
                raise self._error("is closed")
            epoch = self._start = runtime.epoch
            if epoch != self.armed_epoch or not self._armed_full:
                self.armed_epoch = epoch
                self._armed_full = True
                set_epoch_deadline(ctx, ticks)
            nested = self in inflight
            inflight[self] = None
            if runtime.paused:
                runtime.enter(self)
            try:
                return raw(*args)
            except RawCallError as e:
                capped, self._armed_full = not self._armed_full, False
                raise self._call_error(export, e, capped) from self._take_exc()
            finally:
                if not nested:
                    del inflight[self]

        return call

    def _take_exc(self) -> BaseException | None:
        exc, self._exc = self._exc, None
        return exc if exc is not None and not isinstance(exc, HostTrap) else None

    def _call_error(self, export: str, e: RawCallError, capped: bool = False) -> WasmError:
        """``capped``: the deadline that stopped the guest was the end of its call budget (set by _rearm),
        not a compute budget. Decided from what was armed rather than from the epoch mirror, which the ticker
        advances just after the engine's epoch: a guest stopped in between would be misreported."""
        exc = self._exc
        if isinstance(exc, HostTrap):
            return self._error(f"trapped in {export}: {exc}")
        if exc is not None:
            return self._error(f"trapped in {export}: host function failed: {type(exc).__name__}: {exc}")
        if e.trap_code == wasmtime.TrapCode.INTERRUPT:
            spent = (self.runtime.epoch - self._start) * self.runtime.tick * 1000
            if capped or self.runtime.epoch - self._start >= self._call_ticks:
                return self._error(f"stopped in {export}: ran past its {self.limits.call_ms:g} ms call limit")
            return self._error(
                f"stopped in {export}: ran past its {self.limits.compute_ms:g} ms compute limit "
                f"(looping? stopped after {spent:.0f} ms)"
            )
        return self._error(f"trapped in {export}: {self._reason(str(e), e.trap_code)}")

    @staticmethod
    def _reason(message: str, code: wasmtime.TrapCode | None) -> str:
        if code in _TRAP_REASONS:
            return _TRAP_REASONS[code]
        return _first_line(message)

    def _error(self, what: str) -> WasmError:
        err = self.error_class(f"{self.kind} {self.name}: {what}")
        err.guest = self.name  # type: ignore[attr-defined]
        err.reason = what  # type: ignore[attr-defined]
        return err

    # ------------------------------------------------------------------ state
    def _globals(self) -> dict[str, wasmtime.Global]:
        found = {n: self.exports[n] for n in self.export_names}
        return {n: g for n, g in found.items() if isinstance(g, wasmtime.Global)}

    def snapshot(self) -> Any:
        """Linear memory + every exported mutable global (edgeagent.wasm.snapshot)."""
        from edgeagent.wasm.snapshot import Snapshot

        return Snapshot.capture(self)

    def restore(self, snap: Any) -> None:
        snap.apply(self)

    def close(self) -> None:
        """Drops the instance and its Store; the guest cannot be called afterwards."""
        self._closed = True
        self._funcs.clear()
        for h in self.hosts:
            close = getattr(h, "close", None)
            if callable(close):
                close()
        self.exports = None  # type: ignore[assignment]
        self.instance = None  # type: ignore[assignment]
        self.memory = None
        self.store = None  # type: ignore[assignment]

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sig(params: Sequence[str], results: Sequence[str]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def _first_line(e: object) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
