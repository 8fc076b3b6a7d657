"""The fast path between Python and Wasm: the C API's ``*_unchecked`` entry points through ctypes.

wasmtime-py's generic path wraps every argument in a ``Val`` and every call in several Python objects (~8 us a
crossing). Here a host function is a generated ctypes callback reading raw ``wasmtime_val_raw_t`` slots, an
export call fills a preallocated slot array, and guest memory is reached through its base address.

Why this is safe:
- Types: a callback is only defined for an import whose declared type equals the host function's spec (checked
  in guest.py before linking), so the raw slots hold exactly the values the generated code reads.
- Memory: every access is checked against the memory's size before touching the base address. Engines are made
  with ``memory_may_move = False`` (engine.py), so ``memory.grow`` never moves the base; the cached size
  can only
  be smaller than the real one (Wasm memories never shrink), and an access beyond it re-reads the size before
  deciding it is out of bounds.
- Lifetime: callbacks are kept alive by a table entry released by wasmtime's finalizer, i.e. no earlier
  than the
  last Store that can call them.
- Exceptions never unwind through C: a callback catches everything, hands the exception to the guest's
  ``fail`` hook and returns a trap, which the export call turns back into a Python error.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from edgeagent.wasm.host import F32, F64, I32, I64, HostTrap

_U32 = ctypes.c_uint32
_U64 = ctypes.c_uint64
_F64 = ctypes.c_double

# key -> ctypes callback; the finalizer drops the entry when wasmtime drops the host function.
_KEEP: dict[int, Any] = {}
_KEYS = itertools.count(1)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _release(key: int | None) -> None:
    _KEEP.pop(key or 0, None)


def trap_pointer(message: str) -> int:
    """A new ``wasm_trap_t*`` as an integer, which wasmtime takes ownership of when a callback returns it."""
    raw = message.encode()
    return (
        ctypes.cast(ffi.wasmtime_trap_new(ctypes.create_string_buffer(raw), len(raw)), ctypes.c_void_p).value
        or 0
    )


_ARG = {
    I32: "args[{i}].i32 & 0xffffffff",
    I64: "args[{i}].i64 & 0xffffffffffffffff",
    F32: "args[{i}].f32",
    F64: "args[{i}].f64",
}


_CALLBACK_FACTORIES: dict[tuple[tuple[str, ...], tuple[str, ...], bool], Callable[..., Any]] = {}


class Clock(Protocol):
    """What counts time for ``after``: anything with an ``epoch`` attribute that a ticker advances."""

    epoch: int


class Armed(Protocol):
    """Who re-arms in ``after``: ``armed_epoch`` is the clock's epoch when it last did."""

    armed_epoch: int


def _callback_factory(params: Sequence[str], results: Sequence[str], has_after: bool) -> Callable[..., Any]:
    """``make(fn, after, fail, clock, armed) -> cb`` specialised to a signature: no loops, no allocation.

    Generated once per signature (compiling is what costs, ~80 us), then bound per host function. ``after``
    runs only when ``clock.epoch`` differs from ``armed.armed_epoch``: re-arming a deadline in the same epoch
    it was last armed in sets the same absolute deadline again, so the C call is skipped (at most one re-arm
    per tick instead of one per host call).
    """
    key = (tuple(params), tuple(results), has_after)
    factory = _CALLBACK_FACTORIES.get(key)
    if factory is None:
        call = f"fn({', '.join(_ARG[t].format(i=i) for i, t in enumerate(params))})"
        body = [f"            args[0].{results[0]} = {call}" if results else f"            {call}"]
        if has_after:
            body = [*body, "            if clock.epoch != armed.armed_epoch:", "                after()"]
        src = "\n".join(
            [
                "def make(fn, after, fail, clock, armed):",
                "    def cb(env, caller, args, nargs):",
                "        try:",
                *body,
                "            return 0",
                "        except BaseException as e:",
                "            return fail(e)",
                "    return cb",
            ]
        )
        scope: dict[str, Any] = {}
        exec(compile(src, f"<hostfunc {key}>", "exec"), scope)
        factory = _CALLBACK_FACTORIES[key] = scope["make"]
    return factory


def _make_callback(
    fn: Callable[..., Any],
    params: Sequence[str],
    results: Sequence[str],
    after: Callable[[], None] | None,
    fail: Callable[[BaseException], int],
    clock: Clock | None,
    armed: Armed | None,
) -> Any:
    if after is not None and (clock is None or armed is None):
        raise ValueError("a host function with `after` needs the clock and the armed state it is measured by")
    make = _callback_factory(params, results, after is not None)
    return ffi.wasmtime_func_unchecked_callback_t(make(fn, after, fail, clock, armed))


FuncTypeCache = dict[tuple[tuple[str, ...], tuple[str, ...]], wasmtime.FuncType]


def functype(
    params: Sequence[str], results: Sequence[str], cache: FuncTypeCache | None = None
) -> wasmtime.FuncType:
    """A FuncType, reused from ``cache``. A FuncType becomes tied to the first engine that uses it (wasmtime
    panics on another engine's), so the cache must be per engine: Runtime holds one."""
    key = (tuple(params), tuple(results))
    ty = cache.get(key) if cache is not None else None
    if ty is None:
        ty = wasmtime.FuncType([_valtype(t) for t in params], [_valtype(t) for t in results])
        if cache is not None:
            cache[key] = ty
    return ty


def define_host_func(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    params: Sequence[str],
    results: Sequence[str],
    fn: Callable[..., Any],
    *,
    after: Callable[[], None] | None = None,
    fail: Callable[[BaseException], int],
    functypes: FuncTypeCache | None = None,
    clock: Clock | None = None,
    armed: Armed | None = None,
) -> None:
    """Defines ``module.name`` in ``linker`` as ``fn`` on the unchecked path.

    ``after`` runs after a successful call when ``clock.epoch != armed.armed_epoch`` (the guest re-arms its
    deadline there and records the epoch); ``fail`` receives any exception and returns the trap pointer to
    hand back to wasmtime.
    """
    cb = _make_callback(fn, params, results, after, fail, clock, armed)
    key = next(_KEYS)
    _KEEP[key] = cb
    ty = functype(params, results, functypes)
    mb, nb = module.encode(), name.encode()
    err = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), mb, len(mb), nb, len(nb), ty.ptr(), cb, ctypes.c_void_p(key), _release
    )
    if err:
        _KEEP.pop(key, None)
        raise wasmtime.WasmtimeError._from_ptr(err)


def _valtype(t: str) -> wasmtime.ValType:
    return {
        I32: wasmtime.ValType.i32,
        I64: wasmtime.ValType.i64,
        F32: wasmtime.ValType.f32,
        F64: wasmtime.ValType.f64,
    }[t]()


class RawCallError(Exception):
    """A raw call ended in a trap or error; ``trap_code`` is a wasmtime.TrapCode or None."""

    def __init__(self, message: str, trap_code: wasmtime.TrapCode | None) -> None:
        super().__init__(message)
        self.trap_code = trap_code


# The C entry points themselves, without wasmtime-py's Python wrapper functions around them.
_call_unchecked = _bindings._wasmtime_func_call_unchecked
set_epoch_deadline = _bindings._wasmtime_context_set_epoch_deadline


class ExportFunc:
    """One export, callable with plain Python numbers; returns its single result or None.

    The call is generated for the signature (like host callbacks): fill the preallocated slots, one C call,
    read slot 0. A trap or error raises RawCallError.
    """

    def __init__(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        signature: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> None:
        """``signature``: (params, results) when the caller knows them (guest.ModuleInfo), else read here."""
        if signature is None:
            ty = func.type(store)
            signature = (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))
        self.params, self.results = signature
        if len(self.results) > 1:
            raise ValueError("multi-value results are not supported")
        for t in (*self.params, *self.results):
            if t not in _ARG:
                raise ValueError(f"value type {t} cannot cross the fast path")
        self._func = func  # keeps the wasmtime_func_t alive
        n = max(len(self.params), len(self.results), 1)
        buf = (ffi.wasmtime_val_raw_t * n)()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        make = _export_factory(self.params, self.results)
        self._trap = trap
        self.call: Callable[..., int | float | None] = make(
            buf,
            trap,
            ctypes.byref(trap),
            store._context(),
            ctypes.byref(func._func),
            n,
            _call_unchecked,
            self._failed,
        )

    def __call__(self, *args: int | float) -> int | float | None:
        return self.call(*args)

    def _failed(self, err: Any) -> None:
        if err:
            e = wasmtime.WasmtimeError._from_ptr(err)
            raise RawCallError(_first_line(e), None)
        # Take ownership of the trap and leave the slot null for the next call.
        ptr = ctypes.POINTER(ffi.wasm_trap_t)(self._trap.contents)
        ctypes.cast(ctypes.byref(self._trap), ctypes.POINTER(ctypes.c_void_p))[0] = None
        t = wasmtime.Trap._from_ptr(ptr)
        raise RawCallError(t.message, t.trap_code)


_EXPORT_FACTORIES: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[..., Any]] = {}


def _export_factory(params: Sequence[str], results: Sequence[str]) -> Callable[..., Any]:
    key = (tuple(params), tuple(results))
    factory = _EXPORT_FACTORIES.get(key)
    if factory is None:
        names = [f"a{i}" for i in range(len(params))]
        src = "\n".join(
            [
                "def make(buf, trap, trap_ref, ctx, ref, n, call_unchecked, failed):",
                f"    def call({', '.join(names)}):",
                *[f"        buf[{i}].{t} = a{i}" for i, t in enumerate(params)],
                "        err = call_unchecked(ctx, ref, buf, n, trap_ref)",
                "        if err or trap:",
                "            failed(err)",
                f"        return buf[0].{results[0]}" if results else "        return None",
                "    return call",
            ]
        )
        scope: dict[str, Any] = {}
        exec(compile(src, f"<export call {key}>", "exec"), scope)
        factory = _EXPORT_FACTORIES[key] = scope["make"]
    return factory


def _first_line(e: object) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class GuestMemory:
    """Bounds-checked access to a guest's linear memory through its base address (no wasmtime-py copies)."""

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._ctx = store._context()
        self.memory = memory
        self._ref = ctypes.byref(memory._memory)
        self._base = 0
        self._size = 0
        self.refresh()

    def refresh(self) -> None:
        """Re-reads base and size: after the guest grew its memory (done lazily by every accessor)."""
        self._base = ctypes.cast(ffi.wasmtime_memory_data(self._ctx, self._ref), ctypes.c_void_p).value or 0
        self._size = ffi.wasmtime_memory_data_size(self._ctx, self._ref)

    @property
    def size(self) -> int:
        self.refresh()
        return self._size

    def _addr(self, ptr: int, n: int) -> int:
        if ptr + n <= self._size and ptr >= 0 and n >= 0:
            return self._base + ptr
        if ptr < 0 or n < 0:
            raise HostTrap(f"negative guest pointer or length ({ptr}, {n})")
        self.refresh()
        if ptr + n > self._size:
            raise HostTrap(f"guest buffer {ptr:#x}+{n} is outside its memory ({self._size} bytes)")
        return self._base + ptr

    def address(self, ptr: int, n: int) -> int:
        """The host address of guest bytes [ptr, ptr+n), valid until the guest runs again; HostTrap if they
        are outside the memory. For handing a guest buffer to C (libusb) without a copy."""
        if ptr + n <= self._size and ptr >= 0 and n >= 0:
            return self._base + ptr
        return self._addr(ptr, n)

    def check(self, ptr: int, n: int) -> None:
        """Raises HostTrap unless [ptr, ptr+n) is inside the memory."""
        self._addr(ptr, n)

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self._addr(ptr, n), n)

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if n:
            ctypes.memmove(self._addr(ptr, n), data if data.__class__ is bytes else bytes(data), n)

    def read_u32(self, ptr: int) -> int:
        return _U32.from_address(self._addr(ptr, 4)).value

    def write_u32(self, ptr: int, value: int) -> None:
        _U32.from_address(self._addr(ptr, 4)).value = value

    def read_u64(self, ptr: int) -> int:
        return _U64.from_address(self._addr(ptr, 8)).value

    def write_u64(self, ptr: int, value: int) -> None:
        _U64.from_address(self._addr(ptr, 8)).value = value

    def read_f64_array(self, ptr: int, count: int) -> list[float]:
        return list((_F64 * count).from_address(self._addr(ptr, 8 * count)))

    def dump(self) -> bytes:
        """The whole memory (for snapshots)."""
        self.refresh()
        return ctypes.string_at(self._base, self._size)
