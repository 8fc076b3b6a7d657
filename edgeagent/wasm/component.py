"""WASI 0.2 components beside core modules: compile/cache them, serve their imports from Python, call exports.

A core-module guest (guest.py) speaks edgeagent's C ABI; a component speaks the WIT interfaces themselves, so
a driver written against a proposal (``wasi:i2c/i2c@0.2.0-draft``, ``component:usb/device@0.2.1``) runs here
unchanged. This module is the generic half: it knows nothing of I2C or USB. Hardware hosts live in
``edgeagent.drivers.components``.

Writing a component host
========================
A ``ComponentHost`` subclass serves one WIT interface, named with its package and version::

    class DelayHost(ComponentHost):
        interface = "wasi:i2c/delay@0.2.0-draft"
        resources = ("delay",)                      # resource types this interface defines

        @componentfunc("[method]delay.delay-ns", blocking=True)
        def delay_ns(self, this: int, ns: int) -> None:   # `this`: the resource's rep (a host handle)
            time.sleep(ns / 1e9)

- Names are the component model's canonical names (``[method]r.f``, ``[static]r.f``, ``[constructor]r``, plain
  ``f``), the same the core ABI uses, so a host's core and component versions read alike.
- Values are wasmtime-py's typed values: ints, floats, bool, str, ``bytes`` for ``list<u8>``, lists, tuples,
  ``wasmtime.component.Record`` (attributes named as in the WIT, kebab-case: ``getattr(r, "bus-number")``),
  enums as ``str``, flags as ``set[str]``, ``option`` as value or None, variants as ``Variant(tag, payload)``
  (or the bare payload when the cases' Python types differ); a host function returns a ``result<T, E>`` as the
  ok value (None for ``result<_, E>``) or ``Err(e)``.
- Resources: the host hands one out with ``self.own(resource, rep)`` (``rep``: any int the host chooses,
  usually a ``HandleTable`` handle); a method receives its ``self`` (and any ``borrow<r>``/``own<r>``
  parameter of a resource this host defines) already resolved to that ``rep``. When the guest drops an owned
  resource, ``drop(resource, rep)`` is called.
- ``blocking=True``: the function may wait on I/O; its time does not count against the compute limit (the
  deadline is re-armed when it returns), only against the call limit, exactly as for core guests.
- ``raise HostTrap("reason")`` traps the guest (``trapped in EXPORT: reason``); any other exception also traps
  it and becomes the error's ``__cause__``. A device failing is an ``Err`` value, never an exception.

Which threads: a ComponentGuest is called by one thread at a time (the driver's); host functions run on that
thread, inside the export call. The epoch ticker (engine.py) is the only other thread involved.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import wasmtime
from wasmtime import StoreContext, _bindings
from wasmtime import _ffi as ffi
from wasmtime import component as wc
from wasmtime.component import _enter
from wasmtime.component._enter import maybe_raise_last_exn

from edgeagent.errors import DriverError, WasmError
from edgeagent.wasm.cache import ModuleCache, is_component, is_component_file
from edgeagent.wasm.component_values import Codec, Err, codec

__all__ = [
    "ComponentCache",
    "ComponentGuest",
    "ComponentHost",
    "Err",
    "componentfunc",
    "is_component",
    "is_component_file",
]
from edgeagent.wasm.engine import Limits, Runtime
from edgeagent.wasm.host import HostTrap

log = logging.getLogger(__name__)

CACHE_MAGIC = b"EACC1\n"  # then sha256(payload), then the serialized component
CACHE_SUFFIX = ".ccwasm"

# The interfaces wasmtime's own WASI 0.2 implementation serves (Linker.add_wasip2). A component is given none
# of the world: no preopened directories, no environment, no stdio, no sockets (the Store's WasiConfig is
# empty).
WASIP2_PACKAGES = (
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
)

# Traps as wasmtime's messages say them -> what a user reads (the core path's wording, guest.py).
_TRAP_WORDS = {
    "call stack exhausted": "call stack exhausted",
    "out of bounds memory access": "out-of-bounds memory access",
    "wasm `unreachable` instruction executed": "unreachable executed (abort or __builtin_trap)",
    "integer divide by zero": "integer division by zero",
    "integer overflow": "integer overflow",
    "indirect call to a null table entry": "indirect call to a null table entry",
    "indirect call type mismatch": "indirect call signature mismatch",
    "invalid conversion to integer": "invalid float-to-int conversion",
}


@dataclasses.dataclass(frozen=True)
class ComponentFuncSpec:
    name: str
    blocking: bool
    attr: str


def componentfunc(name: str, *, blocking: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a ComponentHost method as the function ``name`` of its interface."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._componentfunc = ComponentFuncSpec(name, blocking, fn.__name__)  # type: ignore[attr-defined]
        return fn

    return mark


# Host resource types are identified by a process-wide integer per (interface, resource).
_RESOURCE_IDS: dict[tuple[str, str], int] = {}
_NEXT_ID = itertools.count(0x4541_0001)


def resource_type_id(interface: str, resource: str) -> int:
    key = (interface, resource)
    rid = _RESOURCE_IDS.get(key)
    if rid is None:
        rid = _RESOURCE_IDS[key] = next(_NEXT_ID)
    return rid


class ComponentHost:
    """One WIT interface served to a component, instantiated once per guest (see the module docstring)."""

    interface: ClassVar[str] = ""
    resources: ClassVar[tuple[str, ...]] = ()
    _specs: ClassVar[tuple[ComponentFuncSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, ComponentFuncSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                spec = getattr(value, "_componentfunc", None)
                if isinstance(spec, ComponentFuncSpec):
                    specs[spec.attr] = spec
        cls._specs = tuple(specs.values())

    def __init__(self) -> None:
        self._guest: ComponentGuest | None = None

    @property
    def guest(self) -> ComponentGuest:
        if self._guest is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a guest")
        return self._guest

    def bind(self, guest: ComponentGuest) -> None:
        self._guest = guest

    def functions(self) -> Iterator[tuple[ComponentFuncSpec, Callable[..., Any]]]:
        for spec in self._specs:
            yield spec, getattr(self, spec.attr)

    @property
    def function_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self._specs)

    def own(self, resource: str, rep: int) -> wc.ResourceHost:
        """An owned handle of ``resource`` (one of ``resources``) for the guest, carrying ``rep``."""
        if resource not in self.resources:
            raise ValueError(f"{self.interface} defines no resource {resource!r}")
        return wc.ResourceHost.own(rep, resource_type_id(self.interface, resource))

    def drop(self, resource: str, rep: int) -> None:
        """The guest dropped its owned ``resource`` ``rep`` (override to release what it held)."""

    def close(self) -> None:
        """The guest is being closed."""


# ---------------------------------------------------------------------------------------------------- cache
class ComponentCache:
    """Serialized compiled components beside the module cache's entries (same directory, same stats).

    Entries are ``<sha256(component)>-<engine fingerprint>.ccwasm``: keyed by the bytes and by what serialized
    code depends on (the wasmtime version and engine settings, ``Runtime.fingerprint``). Each carries a
    sha256 of its payload, checked before ``Component.deserialize`` (which trusts its input blindly).
    """

    def __init__(self, modules: ModuleCache) -> None:
        self.modules = modules
        self.stats = modules.stats

    @property
    def directory(self) -> Path | None:
        return self.modules.directory

    def path_for(self, runtime: Runtime, data: bytes) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(data).hexdigest()}-{runtime.fingerprint}{CACHE_SUFFIX}"

    def load(self, runtime: Runtime, data: bytes, *, name: str) -> wc.Component:
        """The compiled component for ``data`` (from the cache when a valid entry exists, else compiled and
        stored). Raises WasmError naming ``name`` for bytes that are not a valid component."""
        if not is_component(data):
            raise WasmError(f"{name}: not a WebAssembly component")
        path = self.path_for(runtime, data)
        if path is not None:
            comp = self._read(runtime, path, name)
            if comp is not None:
                self.stats.hits += 1
                return comp
        comp = compile_component(runtime, data, name)
        self.stats.compiles += 1
        if path is not None:
            self._write(path, comp)
        return comp

    def load_file(self, runtime: Runtime, path: Path, *, name: str | None = None) -> wc.Component:
        name = name or path.stem
        try:
            data = path.read_bytes()
        except OSError as e:
            raise WasmError(f"{name}: cannot read {path}: {e.strerror}") from None
        return self.load(runtime, data, name=name)

    def _read(self, runtime: Runtime, path: Path, name: str) -> wc.Component | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("component cache entry %s unreadable (%s); recompiling", path, e.strerror)
            return None
        head = len(CACHE_MAGIC) + 32
        payload = blob[head:]
        if (
            not blob.startswith(CACHE_MAGIC)
            or hashlib.sha256(payload).digest() != blob[len(CACHE_MAGIC) : head]
        ):
            self.stats.corrupt += 1
            log.warning("component cache entry %s for %s is corrupt; recompiling", path.name, name)
            return None
        try:
            return wc.Component.deserialize(runtime.engine, payload)
        except wasmtime.WasmtimeError as e:
            self.stats.corrupt += 1
            log.warning(
                "component cache entry %s for %s rejected (%s); recompiling", path.name, name, _first(e)
            )
            return None

    def _write(self, path: Path, comp: wc.Component) -> None:
        payload = bytes(comp.serialize())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "wb") as f:
                f.write(CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write component cache entry %s: %s", path, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def compile_component(runtime: Runtime, data: bytes, name: str) -> wc.Component:
    try:
        return wc.Component(runtime.engine, data)
    except wasmtime.WasmtimeError as e:
        raise WasmError(f"{name}: invalid WebAssembly component: {_first(e)}") from None


# ---------------------------------------------------------------------------------------------------- guest
def _wasip2(name: str) -> bool:
    return name.startswith(WASIP2_PACKAGES)


class ComponentGuest:
    """An instantiated component with its limits; every failure is ``error_class`` naming the guest.

    After a trap or a stop the component instance cannot be entered again (the component model forbids
    re-entering an instance that trapped): later calls fail with ``is stopped`` and the owner reopens it,
    as the agent does for a core module that failed.
    """

    def __init__(
        self,
        runtime: Runtime,
        component: wc.Component,
        *,
        name: str,
        hosts: Iterable[ComponentHost] = (),
        limits: Limits | None = None,
        exports: str | None = None,
        required_exports: Sequence[str] = (),
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
        self._armed_epoch = -1  # the epoch and ticks of the deadline last set (see _arm)
        self._armed_ticks = -1
        self._exc: BaseException | None = None
        self._dead: str | None = None
        self._closed = False
        self._funcs: dict[str, _Export] = {}

        engine = runtime.engine
        imports = component.type.imports(engine)
        uses_wasi = self._check_imports(imports, engine, wasi)
        self.store = wasmtime.Store(engine)
        if uses_wasi:
            self.store.set_wasi(wasmtime.WasiConfig())  # nothing: no files, env, stdio or sockets
        lim = self.limits
        # A component is several core instances (the guest, the WASI adapter, shims), each with a table or
        # two.
        self.store.set_limits(
            memory_size=lim.memory_bytes,
            instances=max(lim.instances, 64),
            tables=max(lim.tables, 64),
            table_elements=lim.table_elements,
            memories=8,
        )
        linker = wc.Linker(engine)
        if uses_wasi:
            linker.add_wasip2()
        for h in self.hosts:
            h.bind(self)
        with linker.root() as root:
            for h in self.hosts:
                with root.add_instance(h.interface) as inst:
                    for res in h.resources:
                        inst.add_resource(
                            res, wc.ResourceType.host(resource_type_id(h.interface, res)), self._dtor(h, res)
                        )
                    own_ids = frozenset(resource_type_id(h.interface, r) for r in h.resources)
                    for spec, fn in h.functions():
                        _add_func(inst, spec.name, self._wrap(h, spec, fn), own_ids)
        self._arm()
        runtime.enter(self)  # a component's start runs Wasm code
        try:
            self.instance = linker.instantiate(self.store, component)
        except wasmtime.WasmtimeError as e:
            raise self._error(f"cannot be instantiated: {self._reason(e)}") from self._take_exc()
        finally:
            runtime.leave(self)
        self._export_instance: wc.ExportIndex | None = None
        if exports is not None:
            self._export_instance = self.instance.get_export_index(self.store, exports)
            if self._export_instance is None:
                raise self._error(f"does not export the interface {exports} (required by the {kind} world)")
        missing = [n for n in required_exports if self._lookup(n) is None]
        if missing:
            where = f" in {exports}" if exports else ""
            raise self._error(f"does not export {', '.join(missing)}{where} (required by the {kind} world)")

    # ------------------------------------------------------------------ imports
    def _check_imports(self, imports: dict[str, Any], engine: wasmtime.Engine, wasi: bool) -> bool:
        """Refuses, naming it, any import no host serves; returns whether WASI 0.2 is needed."""
        hosts = {h.interface: h for h in self.hosts}
        all_resources = {r for h in self.hosts for r in h.resources}
        uses_wasi = False
        for iface, ext in imports.items():
            if wasi and _wasip2(iface):
                uses_wasi = True
                continue
            host = hosts.get(iface)
            if host is None:
                served = ", ".join(sorted(hosts)) + (", WASI 0.2 (wasi:io, wasi:cli, ...)" if wasi else "")
                raise self._error(
                    f"imports interface {iface}, which this host does not serve (served: {served})"
                )
            ty = ext.ty
            if not isinstance(ty, wc.ComponentInstanceType):
                raise self._error(f"import {iface} must be an interface (instance)")
            for item, item_ext in ty.exports(engine).items():
                item_ty = item_ext.ty
                if isinstance(item_ty, wc.FuncType):
                    if item not in host.function_names:
                        raise self._error(f"imports {iface}.{item}, which this host does not serve")
                elif isinstance(item_ty, wc.ResourceType) and item not in set(host.resources) | all_resources:
                    # A resource another served interface defines may appear here through a WIT `use`.
                    raise self._error(f"imports resource {iface}.{item}, which this host does not define")
        return uses_wasi

    def _dtor(self, host: ComponentHost, resource: str) -> Callable[[Any, int], None]:
        def dtor(_store: Any, rep: int) -> None:
            try:
                host.drop(resource, rep)
            except Exception as e:  # a host bug must not unwind through wasmtime
                log.warning("%s %s: dropping %s %d failed: %s", self.kind, self.name, resource, rep, e)

        return dtor

    def _wrap(
        self, host: ComponentHost, spec: ComponentFuncSpec, fn: Callable[..., Any]
    ) -> Callable[..., Any]:
        """The callable wasmtime-py calls: Err to the err case, exceptions to traps, and the deadline re-armed
        after a blocking call. (Resource arguments arrive already resolved to reps: see _host_impl.)"""
        blocking = spec.blocking
        rearm = self._rearm

        def call(*args: Any) -> Any:
            try:
                result = fn(*args)
                if blocking:
                    rearm()
                return result
            except HostTrap as e:
                self._exc = e
                raise wasmtime.WasmtimeError(f"{e}") from None
            except Exception as e:
                self._exc = e
                raise wasmtime.WasmtimeError(f"host error: {type(e).__name__}") from None

        return call

    # ------------------------------------------------------------------ deadlines
    # The C call that sets a deadline is skipped when it would set the one already set: same epoch (the
    # ticker's mirror, runtime.epoch) and same number of ticks, i.e. the same absolute deadline. As the core
    # path does (guest.py); on a sensor read, where every bus transaction is a blocking call, that is most
    # re-arms.
    def _arm(self) -> None:
        epoch = self._start = self.runtime.epoch
        ticks = self._compute_ticks
        if epoch != self._armed_epoch or ticks != self._armed_ticks:
            self._armed_epoch, self._armed_ticks = epoch, ticks
            self.store.set_epoch_deadline(ticks)

    def _rearm(self) -> None:
        epoch = self.runtime.epoch
        ticks = max(0, min(self._compute_ticks, self._call_ticks - (epoch - self._start)))
        if epoch != self._armed_epoch or ticks != self._armed_ticks:
            self._armed_epoch, self._armed_ticks = epoch, ticks
            self.store.set_epoch_deadline(ticks)

    # ------------------------------------------------------------------ calls
    def _lookup(self, export: str) -> _Export | None:
        f = self._funcs.get(export)
        if f is None:
            idx = self.instance.get_export_index(self.store, export, self._export_instance)
            found = self.instance.get_func(self.store, idx) if idx is not None else None
            if found is None:
                return None
            f = self._funcs[export] = _Export(found, self.store)
        return f

    def call(self, export: str, *args: Any) -> Any:
        """Calls an export (of the ``exports`` interface, if one was named) with typed values. Results come
        back as wasmtime-py lifts them: a ``result<T, E>`` whose cases have distinct Python types is its ok or
        its err value (tell them apart by type, e.g. a ``Variant`` error-code against a ``list``), otherwise a
        ``Variant("ok" | "err", value)``."""
        if self._closed:
            raise self._error("is closed")
        if self._dead is not None:
            raise self._error(f"is stopped ({self._dead}); reload it")
        f = self._funcs.get(export) or self._lookup(export)
        if f is None:
            raise self._error(f"has no exported function {export!r}")
        self._arm()
        # In flight for the epoch ticker (engine.py); a nested call leaves the outer one in flight.
        runtime = self.runtime
        nested = self in runtime.inflight
        runtime.enter(self)
        try:
            return f.call(self.store, args)
        except wasmtime.WasmtimeError as e:
            self._armed_epoch = -1
            err = self._call_error(export, e)
            raise err from self._take_exc()
        finally:
            if not nested:
                runtime.leave(self)

    def result_type(self, export: str) -> Any:
        """The WIT result type of an export (None: no result)."""
        f = self._lookup(export)
        if f is None:
            raise self._error(f"has no exported function {export!r}")
        return f.func.type(self.store).result

    def _take_exc(self) -> BaseException | None:
        exc, self._exc = self._exc, None
        return exc if exc is not None and not isinstance(exc, HostTrap) else None

    def _call_error(self, export: str, e: wasmtime.WasmtimeError) -> WasmError:
        exc = self._exc
        if isinstance(exc, HostTrap):
            what = f"trapped in {export}: {exc}"
        elif exc is not None:
            what = f"trapped in {export}: host function failed: {type(exc).__name__}: {exc}"
        elif "wasm trap: interrupt" in str(e):
            if self.runtime.epoch - self._start >= self._call_ticks:
                what = f"stopped in {export}: ran past its {self.limits.call_ms:g} ms call limit"
            else:
                spent = (self.runtime.epoch - self._start) * self.runtime.tick * 1000
                what = (
                    f"stopped in {export}: ran past its {self.limits.compute_ms:g} ms compute limit "
                    f"(looping? stopped after {spent:.0f} ms)"
                )
        else:
            what = f"trapped in {export}: {self._reason(e)}"
        self._dead = what
        return self._error(what)

    @staticmethod
    def _reason(e: BaseException) -> str:
        text = str(e)
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("wasm trap: "):
                word = line[len("wasm trap: ") :]
                return _TRAP_WORDS.get(word, word)
        return _first(e)

    def _error(self, what: str) -> WasmError:
        err = self.error_class(f"{self.kind} {self.name}: {what}")
        err.guest = self.name  # type: ignore[attr-defined]
        err.reason = what  # type: ignore[attr-defined]
        return err

    def close(self) -> None:
        """Drops the instance and its Store (host resources still held by the guest are dropped with it)."""
        if self._closed:
            return
        self._closed = True
        self._funcs.clear()
        for h in self.hosts:
            try:
                h.close()
            except Exception as e:
                log.warning("%s %s: closing %s failed: %s", self.kind, self.name, h.interface, e)
        self.instance = None  # type: ignore[assignment]
        self.store = None  # type: ignore[assignment]

    def __enter__(self) -> ComponentGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first(e: object) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------- calls
# wasmtime-py's own paths (LinkerInstance.add_func, Func.__call__) read the function's type through the C API
# on every call; these read it once (component_values).


class _Export:
    """An export with its parameter and result codecs."""

    __slots__ = ("func", "params", "result")

    def __init__(self, func: wc.Func, store: wasmtime.Store) -> None:
        self.func = func
        fty = func.type(store)
        self.params: list[Codec] = [codec(t) for _, t in fty.params]
        r = fty.result
        self.result: Codec | None = codec(r) if r is not None else None

    def call(self, store: wasmtime.Store, args: tuple[Any, ...]) -> Any:
        n = len(args)
        if n != len(self.params):
            raise TypeError(f"expected {len(self.params)} arguments, got {n}")
        params = (ffi.wasmtime_component_val_t * n)()
        done = 0
        try:
            for c, v in zip(self.params, args, strict=True):
                c.lower(store, v, ctypes.pointer(params[done]))
                done += 1
            result = ffi.wasmtime_component_val_t() if self.result is not None else None
            err = ffi.wasmtime_component_func_call(
                ctypes.byref(self.func._func),
                store._context(),
                params,
                n,
                ctypes.byref(result) if result is not None else None,
                1 if result is not None else 0,
            )
            if err:
                error = wasmtime.WasmtimeError._from_ptr(err)
                maybe_raise_last_exn()
                raise error
            return self.result.lift(result) if self.result is not None else None
        finally:
            for i in range(done):
                ffi.wasmtime_component_val_delete(ctypes.byref(params[i]))


class _HostFunc:
    __slots__ = ("fn", "own_ids", "params", "resources", "result")

    def __init__(self, fn: Callable[..., Any], own_ids: frozenset[int]) -> None:
        self.fn = fn
        self.own_ids = own_ids  # the resource types this function's host defines
        self.params: list[Codec] | None = None
        self.resources: tuple[bool, ...] = ()  # per parameter: an own/borrow handle
        self.result: Codec | None = None

    def types(self, ty_raw: Any, store: Any) -> None:
        """On the first call: the codecs (the callback's type pointer is borrowed)."""
        fty = wc.FuncType._from_ptr(ty_raw, owner=store)
        params = [t for _, t in fty.params]
        self.resources = tuple(isinstance(t, wc.OwnType | wc.BorrowType) for t in params)
        r = fty.result
        self.result = codec(r) if r is not None else None
        self.params = [codec(t) for t in params]


_HOST_FUNCS: dict[int, _HostFunc] = {}
_HOST_KEYS = itertools.count(1)
_RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE.value
_HostPtr = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)
# The C functions themselves: ffi's same-named wrappers add a Python frame per call.
_any_to_host = _bindings._wasmtime_component_resource_any_to_host
_error_delete = _bindings._wasmtime_error_delete
_host_rep = _bindings._wasmtime_component_resource_host_rep
_host_type = _bindings._wasmtime_component_resource_host_type
_host_delete = _bindings._wasmtime_component_resource_host_delete


def _lift_resource(context: Any, c: Any, own_ids: frozenset[int]) -> Any:
    """A resource argument: its rep when it is a resource of a type the function's host defines (the host
    handed it out: ``to_host`` checks that against the store's table), else a ``ResourceAny`` (a
    guest-defined resource, or one of another host's types), as wasmtime-py would lift it.

    Direct C calls on the value's handle: wasmtime-py's path (``ResourceAny`` -> ``to_host`` ->
    ``ResourceHost`` -> ``rep``/``type``, then both objects finalised) was a third of an I2C host call."""
    if c.kind != _RESOURCE:
        raise TypeError("expected a resource value")
    ptr = c.of.resource  # left in the value: wasmtime frees the argument values after the callback
    host = _HostPtr()
    err = _any_to_host(context, ptr, ctypes.byref(host))
    if err:
        _error_delete(err)
    else:
        try:
            if _host_type(host) in own_ids:
                return _host_rep(host)
        finally:
            _host_delete(host)
    return wc.ResourceAny._from_ptr(ffi.take_pointer(c.of, "resource"))


@ffi.wasmtime_component_func_callback_t
def _host_impl(idx, context, ty_raw, args, nargs, results, nresults):
    """Every host function's callback: wasmtime-py's catch_exceptions inlined (one StoreContext per call,
    invalidated on the way out; a WasmtimeError is handed back to wasmtime as is, any other exception is
    kept for maybe_raise_last_exn), arguments lifted, the function called, its result lowered."""
    entry = _HOST_FUNCS[idx or 0]
    store = StoreContext(context)
    try:
        if entry.params is None:
            entry.types(ty_raw, store)
        params = entry.params
        assert params is not None
        resources = entry.resources
        values = [
            _lift_resource(context, args[i], entry.own_ids) if resources[i] else params[i].lift(args[i])
            for i in range(nargs)
        ]
        result = entry.fn(*values)
        if entry.result is not None:
            entry.result.lower(store, result, results)
    except wasmtime.WasmtimeError as e:
        return ctypes.cast(e._consume(), ctypes.c_void_p).value
    except Exception as e:
        _enter.LAST_EXCEPTION = e
        return ctypes.cast(wasmtime.WasmtimeError("python exception")._consume(), ctypes.c_void_p).value
    finally:
        store._invalidate()
    return 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _host_finalize(idx: int | None) -> None:
    _HOST_FUNCS.pop(idx or 0, None)


def _add_func(
    inst: wc.LinkerInstance, name: str, fn: Callable[..., Any], own_ids: frozenset[int] = frozenset()
) -> None:
    """``LinkerInstance.add_func`` with the function's types read on its first call only, and resources of
    the ``own_ids`` types passed to ``fn`` as their reps."""
    inst._assert_not_locked()
    key = next(_HOST_KEYS)
    _HOST_FUNCS[key] = _HostFunc(fn, own_ids)
    raw = name.encode()
    err = ffi.wasmtime_component_linker_instance_add_func(
        inst.ptr(), ctypes.create_string_buffer(raw), len(raw), _host_impl, key, _host_finalize
    )
    if err:
        _HOST_FUNCS.pop(key, None)
        raise wasmtime.WasmtimeError._from_ptr(err)
