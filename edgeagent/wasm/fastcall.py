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
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from edgeagent.wasm.host import F32, F64, I32, I64, HostTrap

_U32 = ctypes.c_uint32
_U64 = ctypes.c_uint64
_F64 = ctypes.c_double
_VOIDP = ctypes.c_void_p
_U32_ST = struct.Struct("<I")
_U64_ST = struct.Struct("<Q")
_F64_ST: dict[int, struct.Struct] = {}

# A host callback whose parameters and result are all i32 (every host function the project defines) reads
# its raw slots as uint32 words: slot i's i32 is word 4*i (wasmtime_val_raw_t is 16 bytes, the i32 at offset 0
# on a little-endian host). Indexing a POINTER(c_uint32) returns a Python int directly, where the union path
# (``args[i].i32``) builds a union object per read. env and caller arrive as plain addresses (no POINTER
# objects built per call); the result is a trap address. Export calls use the same word view of their slots.
_I32_CALLBACK = ctypes.CFUNCTYPE(_VOIDP, _VOIDP, _VOIDP, ctypes.POINTER(_U32), ctypes.c_size_t)
_I32_SLOT_WORDS = 4
_LITTLE_ENDIAN = sys.byteorder == "little"

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
        if _all_i32(params, results):
            call = f"fn({', '.join(f'args[{_I32_SLOT_WORDS * i}]' for i in range(len(params)))})"
            body = [f"            args[0] = {call}" if results else f"            {call}"]
        else:
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
    if _all_i32(params, results):
        return _I32_CALLBACK(make(fn, after, fail, clock, armed))
    return ffi.wasmtime_func_unchecked_callback_t(make(fn, after, fail, clock, armed))


def _all_i32(params: Sequence[str], results: Sequence[str]) -> bool:
    """Whether the word view applies (every value an i32, and the slot's i32 at its first word)."""
    return _LITTLE_ENDIAN and all(t == I32 for t in (*params, *results))


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
    # The C side sees one callback ABI; the all-i32 thunk only declares its pointer arguments differently.
    as_c = cb if isinstance(cb, ffi.wasmtime_func_unchecked_callback_t) else _as_callback_t(cb)
    err = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), mb, len(mb), nb, len(nb), ty.ptr(), as_c, ctypes.c_void_p(key), _release
    )
    if err:
        _KEEP.pop(key, None)
        raise wasmtime.WasmtimeError._from_ptr(err)


def _as_callback_t(cb: Any) -> Any:
    return ctypes.cast(cb, ffi.wasmtime_func_unchecked_callback_t)


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


# The C entry points themselves, without wasmtime-py's Python wrapper functions around them. The call is
# re-declared with void* arguments and result: ints convert without from_param and no POINTER object is built
# for the (almost always null) error result (0.35 us of a 1.05 us export call).
_call_unchecked_address = ctypes.cast(_bindings._wasmtime_func_call_unchecked, _VOIDP).value
if _call_unchecked_address is None:  # no such entry point: wasmtime-py itself would not have loaded
    raise ImportError("libwasmtime has no wasmtime_func_call_unchecked")
_call_unchecked = ctypes.CFUNCTYPE(_VOIDP, _VOIDP, _VOIDP, _VOIDP, ctypes.c_size_t, _VOIDP)(
    _call_unchecked_address
)
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
        self._buf = buf
        # The trap slot as a plain void*: the generated call tests ``trap.value`` (null on success).
        trap = _VOIDP()
        make = _export_factory(self.params, self.results)
        self._trap = trap
        self.call: Callable[..., int | float | None] = make(
            ctypes.cast(buf, ctypes.POINTER(ctypes.c_int32)) if _all_i32(self.params, self.results) else buf,
            trap,
            ctypes.addressof(trap),
            ctypes.cast(store._context(), _VOIDP).value,
            ctypes.addressof(func._func),
            ctypes.addressof(buf),
            n,
            _call_unchecked,
            self._failed,
        )

    def __call__(self, *args: int | float) -> int | float | None:
        return self.call(*args)

    def _failed(self, err: int | None) -> None:
        if err:
            e = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))
            raise RawCallError(_first_line(e), None)
        # Take ownership of the trap and leave the slot null for the next call.
        trap = self._trap.value
        if trap is None:  # the C side reports a failure with one or the other
            raise RawCallError("the call failed with neither an error nor a trap", None)
        ptr = ctypes.cast(trap, ctypes.POINTER(ffi.wasm_trap_t))
        self._trap.value = None
        t = wasmtime.Trap._from_ptr(ptr)
        raise RawCallError(t.message, t.trap_code)


_EXPORT_FACTORIES: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[..., Any]] = {}


def _export_factory(params: Sequence[str], results: Sequence[str]) -> Callable[..., Any]:
    key = (tuple(params), tuple(results))
    factory = _EXPORT_FACTORIES.get(key)
    if factory is None:
        names = [f"a{i}" for i in range(len(params))]
        if _all_i32(params, results):  # ``slots`` is a POINTER(c_int32) over the slots: word 4*i is slot i
            fill = [f"        slots[{_I32_SLOT_WORDS * i}] = a{i}" for i in range(len(params))]
            result = "        return slots[0]"
        else:  # ``slots`` is the wasmtime_val_raw_t array
            fill = [f"        slots[{i}].{t} = a{i}" for i, t in enumerate(params)]
            result = f"        return slots[0].{results[0]}" if results else ""
        src = "\n".join(
            [
                "def make(slots, trap, trap_ref, ctx, ref, buf, n, call_unchecked, failed):",
                f"    def call({', '.join(names)}):",
                *fill,
                "        err = call_unchecked(ctx, ref, buf, n, trap_ref)",
                "        if err or trap.value:",
                "            failed(err)",
                (result if results else "        return None"),
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
    """Bounds-checked access to a guest's linear memory (no wasmtime-py copies).

    Small transfers go through a memoryview over the memory (slicing and struct unpacking stay inside the
    interpreter: no ctypes call, no GIL release); ``address`` hands the raw address to C code (libusb).
    """

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._ctx = store._context()
        self.memory = memory
        self._ref = ctypes.byref(memory._memory)
        self._base = 0
        self._size = 0
        self._view = memoryview(b"")
        self.refresh()

    def refresh(self) -> None:
        """Re-reads base and size: after the guest grew its memory (done lazily by every accessor)."""
        self._base = ctypes.cast(ffi.wasmtime_memory_data(self._ctx, self._ref), ctypes.c_void_p).value or 0
        self._size = ffi.wasmtime_memory_data_size(self._ctx, self._ref)
        # Valid as long as the memory: it never moves (engine.py) and never shrinks.
        self._view = (
            memoryview((ctypes.c_ubyte * self._size).from_address(self._base)).cast("B")
            if self._base and self._size
            else memoryview(b"")
        )

    @property
    def size(self) -> int:
        self.refresh()
        return self._size

    def _addr(self, ptr: int, n: int) -> int:
        if ptr + n <= self._size and ptr >= 0 and n >= 0:
            return self._base + ptr
        self._check(ptr, n)
        return self._base + ptr

    def _check(self, ptr: int, n: int) -> None:
        """The slow half of a bounds check: refreshes after a memory.grow, else raises HostTrap."""
        if ptr < 0 or n < 0:
            raise HostTrap(f"negative guest pointer or length ({ptr}, {n})")
        self.refresh()
        if ptr + n > self._size:
            raise HostTrap(f"guest buffer {ptr:#x}+{n} is outside its memory ({self._size} bytes)")

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
        if not (ptr + n <= self._size and ptr >= 0 and n >= 0):
            self._check(ptr, n)
        return self._view[ptr : ptr + n].tobytes()

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not (ptr + n <= self._size and ptr >= 0):
            self._check(ptr, n)
        if n:
            self._view[ptr : ptr + n] = data if data.__class__ is bytes else bytes(data)

    def read_checking(self, ptr: int, n: int, out: int, out_n: int) -> bytes:
        """``read(ptr, n)``, having checked that [out, out+out_n) is inside the memory too: a register read's
        two buffers in one call, both checked before the bus moves."""
        size = self._size
        if not (ptr + n <= size and out + out_n <= size and ptr >= 0 and n >= 0 and out >= 0 and out_n >= 0):
            self._check(ptr, n)
            self._check(out, out_n)
        return self._view[ptr : ptr + n].tobytes()

    def write_at_most(self, ptr: int, data: bytes, limit: int) -> None:
        """Writes the first ``limit`` bytes of ``data`` (all of it when shorter): a guest buffer of ``limit``
        bytes receiving what a device returned. The caller has checked [ptr, ptr+limit)."""
        n = len(data)
        if n > limit:
            data, n = data[:limit], limit
        if not (ptr + n <= self._size and ptr >= 0):
            self._check(ptr, n)
        self._view[ptr : ptr + n] = data

    def read_u32(self, ptr: int) -> int:
        if not (ptr + 4 <= self._size and ptr >= 0):
            self._check(ptr, 4)
        return _U32_ST.unpack_from(self._view, ptr)[0]

    def write_u32(self, ptr: int, value: int) -> None:
        if not (ptr + 4 <= self._size and ptr >= 0):
            self._check(ptr, 4)
        _U32_ST.pack_into(self._view, ptr, value & 0xFFFFFFFF)

    def read_u64(self, ptr: int) -> int:
        if not (ptr + 8 <= self._size and ptr >= 0):
            self._check(ptr, 8)
        return _U64_ST.unpack_from(self._view, ptr)[0]

    def write_u64(self, ptr: int, value: int) -> None:
        if not (ptr + 8 <= self._size and ptr >= 0):
            self._check(ptr, 8)
        _U64_ST.pack_into(self._view, ptr, value & 0xFFFFFFFFFFFFFFFF)

    def read_f64_array(self, ptr: int, count: int) -> list[float]:
        st = _F64_ST.get(count)
        if st is None:
            if count < 0:
                raise HostTrap(f"negative count {count}")
            st = struct.Struct(f"<{count}d")
            if count <= 64:
                _F64_ST[count] = st
        if not (ptr + 8 * count <= self._size and ptr >= 0):
            self._check(ptr, 8 * count)
        return list(st.unpack_from(self._view, ptr))

    def dump(self) -> bytes:
        """The whole memory (for snapshots)."""
        self.refresh()
        return ctypes.string_at(self._base, self._size)
