"""The generic component host (edgeagent.wasm.component): imports checked against what is served, limits,
trap isolation and the serialised-component cache, on small components written in the component text format
(real components, compiled by wasmtime; no guest toolchain needed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from wasmtime import component as wc
from wasmtime.component import Variant

from edgeagent.errors import DriverError, WasmError
from edgeagent.wasm.cache import ModuleCache
from edgeagent.wasm.component import (
    ComponentCache,
    ComponentGuest,
    ComponentHost,
    Err,
    componentfunc,
    is_component,
)
from edgeagent.wasm.engine import Limits, Runtime

IFACE = "example:probe/probe@0.1.0"

# Imports a resource `bus` with two methods; exports calls that exercise them, a loop and a trap.
PROBE = r"""
(component
  (import "example:probe/probe@0.1.0" (instance $p
    (export "bus" (type $r (sub resource)))
    (export "[method]bus.probe" (func (param "self" (borrow $r)) (param "address" u16) (result u32)))
    (export "[method]bus.wait" (func (param "self" (borrow $r)) (param "ms" u32)))
  ))
  (alias export $p "bus" (type $bus))
  (alias export $p "[method]bus.probe" (func $probe))
  (alias export $p "[method]bus.wait" (func $wait))
  (core func $probe_low (canon lower (func $probe)))
  (core func $wait_low (canon lower (func $wait)))
  (core module $m
    (import "h" "probe" (func $probe (param i32 i32) (result i32)))
    (import "h" "wait" (func $wait (param i32 i32)))
    (memory (export "memory") 1)
    (global $bus (mut i32) (i32.const 0))
    (func (export "init") (param i32) (global.set $bus (local.get 0)))
    (func (export "probe") (param i32) (result i32) (call $probe (global.get $bus) (local.get 0)))
    (func (export "wait") (param i32) (call $wait (global.get $bus) (local.get 0)))
    (func (export "spin") (loop $l (br $l)))
    (func (export "waits") (param i32) (loop $l (call $wait (global.get $bus) (local.get 0)) (br $l)))
    (func (export "boom") unreachable)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  )
  (core instance $hi (export "probe" (func $probe_low)) (export "wait" (func $wait_low)))
  (core instance $i (instantiate $m (with "h" (instance $hi))))
  (func (export "init") (param "bus" (own $bus)) (canon lift (core func $i "init")))
  (func (export "probe") (param "address" u16) (result u32) (canon lift (core func $i "probe")))
  (func (export "wait") (param "ms" u32) (canon lift (core func $i "wait")))
  (func (export "spin") (canon lift (core func $i "spin")))
  (func (export "waits") (param "ms" u32) (canon lift (core func $i "waits")))
  (func (export "boom") (canon lift (core func $i "boom")))
  (func (export "grow") (param "pages" u32) (result s32) (canon lift (core func $i "grow")))
)
"""

# Imports an interface nobody serves.
STRANGER = r"""
(component
  (import "example:other/thing@1.0.0" (instance $t (export "poke" (func))))
  (alias export $t "poke" (func $poke))
  (core func $poke_low (canon lower (func $poke)))
  (core module $m (import "t" "poke" (func)))
  (core instance $ti (export "poke" (func $poke_low)))
  (core instance $i (instantiate $m (with "t" (instance $ti))))
)
"""


class ProbeHost(ComponentHost):
    interface = IFACE
    resources = ("bus",)

    def __init__(self, allowed: frozenset[int] = frozenset({0x48})) -> None:
        super().__init__()
        self.allowed = allowed
        self.calls: list[tuple[int, int]] = []
        self.dropped: list[int] = []
        self.fail_with: BaseException | None = None

    @componentfunc("[method]bus.probe")
    def probe(self, rep: int, address: int) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((rep, address))
        return 0x60 if address in self.allowed else 0xFFFF

    @componentfunc("[method]bus.wait", blocking=True)
    def wait(self, rep: int, ms: int) -> None:
        threading.Event().wait(ms / 1000)

    def drop(self, resource: str, rep: int) -> None:
        self.dropped.append(rep)


class NoWaitHost(ComponentHost):
    """Serves the interface but not one of its functions."""

    interface = IFACE
    resources = ("bus",)

    @componentfunc("[method]bus.probe")
    def probe(self, rep: int, address: int) -> int:
        return 0


@pytest.fixture(scope="module")
def rt() -> Runtime:
    r = Runtime()
    yield r  # type: ignore[misc]
    r.close()


@pytest.fixture(scope="module")
def probe_component(rt: Runtime) -> wc.Component:
    return wc.Component(rt.engine, PROBE)


def test_a_component_calls_host_methods_on_a_resource_the_host_handed_it(
    rt: Runtime, probe_component: wc.Component
) -> None:
    host = ProbeHost()
    with ComponentGuest(rt, probe_component, name="probe", hosts=[host], required_exports=["init"]) as g:
        g.call("init", host.own("bus", 7))
        assert g.call("probe", 0x48) == 0x60
        assert g.call("probe", 0x49) == 0xFFFF
        assert host.calls == [(7, 0x48), (7, 0x49)]


def test_an_interface_nobody_serves_is_refused_at_load_naming_it(rt: Runtime) -> None:
    comp = wc.Component(rt.engine, STRANGER)
    with pytest.raises(DriverError) as e:
        ComponentGuest(rt, comp, name="stranger", hosts=[ProbeHost()])
    assert str(e.value) == (
        "driver stranger: imports interface example:other/thing@1.0.0, which this host does not serve "
        f"(served: {IFACE}, WASI 0.2 (wasi:io, wasi:cli, ...))"
    )


def test_a_function_the_host_does_not_serve_is_refused_at_load(
    rt: Runtime, probe_component: wc.Component
) -> None:
    with pytest.raises(DriverError, match=r"imports example:probe/probe@0\.1\.0\.\[method\]bus\.wait, which"):
        ComponentGuest(rt, probe_component, name="probe", hosts=[NoWaitHost()])


def test_a_missing_export_is_a_load_error(rt: Runtime, probe_component: wc.Component) -> None:
    with pytest.raises(DriverError, match="does not export read"):
        ComponentGuest(rt, probe_component, name="probe", hosts=[ProbeHost()], required_exports=["read"])


def test_a_looping_component_is_stopped_and_stays_stopped(rt: Runtime, probe_component: wc.Component) -> None:
    g = ComponentGuest(rt, probe_component, name="spin", hosts=[ProbeHost()], limits=Limits(compute_ms=30))
    with pytest.raises(DriverError) as e:
        g.call("spin")
    assert str(e.value).startswith("driver spin: stopped in spin: ran past its 30 ms compute limit (looping?")
    # The component model forbids re-entering an instance that trapped: a clear error, not a wasmtime one.
    with pytest.raises(DriverError, match=r"driver spin: is stopped \(stopped in spin: .*\); reload it"):
        g.call("probe", 0x48)
    # Another instance of the same component is unaffected.
    host = ProbeHost()
    with ComponentGuest(rt, probe_component, name="other", hosts=[host]) as other:
        other.call("init", host.own("bus", 1))
        assert other.call("probe", 0x48) == 0x60


def test_a_trap_is_reported_in_the_core_paths_words(rt: Runtime, probe_component: wc.Component) -> None:
    g = ComponentGuest(rt, probe_component, name="boom", hosts=[ProbeHost()])
    with pytest.raises(DriverError) as e:
        g.call("boom")
    assert str(e.value) == "driver boom: trapped in boom: unreachable executed (abort or __builtin_trap)"


def test_a_blocking_host_call_does_not_count_as_compute(rt: Runtime, probe_component: wc.Component) -> None:
    host = ProbeHost()
    g = ComponentGuest(rt, probe_component, name="waits", hosts=[host], limits=Limits(compute_ms=20))
    g.call("init", host.own("bus", 1))
    assert g.call("wait", 60) is None  # three compute budgets spent waiting in the host


def test_the_call_limit_stops_a_guest_that_only_waits(rt: Runtime, probe_component: wc.Component) -> None:
    host = ProbeHost()
    g = ComponentGuest(rt, probe_component, name="waits", hosts=[host], limits=Limits(call_ms=40))
    g.call("init", host.own("bus", 1))
    # Waiting in the host forever, never computing for long: the call budget stops it.
    with pytest.raises(DriverError, match="stopped in waits: ran past its 40 ms call limit"):
        g.call("waits", 5)


def test_a_host_function_raising_traps_the_guest_with_the_cause(
    rt: Runtime, probe_component: wc.Component
) -> None:
    host = ProbeHost()
    g = ComponentGuest(rt, probe_component, name="bug", hosts=[host])
    g.call("init", host.own("bus", 1))
    host.fail_with = KeyError("oops")
    with pytest.raises(DriverError) as e:
        g.call("probe", 0x48)
    assert str(e.value) == "driver bug: trapped in probe: host function failed: KeyError: 'oops'"
    assert isinstance(e.value.__cause__, KeyError)


# Interface b uses interface a's resource `thing` (a WIT `use`): b's host did not hand it out.
USES = r"""
(component
  (import "example:probe/a@0.1.0" (instance $a
    (export "thing" (type (sub resource)))
    (export "size" (func (param "t" (borrow 0)) (result u32)))
  ))
  (alias export $a "thing" (type $thing))
  (alias export $a "size" (func $size))
  (import "example:probe/b@0.1.0" (instance $b
    (alias outer 1 $thing (type))
    (export "thing" (type (eq 0)))
    (export "peek" (func (param "t" (borrow 1)) (result u32)))
  ))
  (alias export $b "peek" (func $peek))
  (core func $size_low (canon lower (func $size)))
  (core func $peek_low (canon lower (func $peek)))
  (core module $m
    (import "h" "size" (func $size (param i32) (result i32)))
    (import "h" "peek" (func $peek (param i32) (result i32)))
    (global $t (mut i32) (i32.const 0))
    (func (export "init") (param i32) (global.set $t (local.get 0)))
    (func (export "size") (result i32) (call $size (global.get $t)))
    (func (export "peek") (result i32) (call $peek (global.get $t)))
  )
  (core instance $hi (export "size" (func $size_low)) (export "peek" (func $peek_low)))
  (core instance $i (instantiate $m (with "h" (instance $hi))))
  (func (export "init") (param "t" (own $thing)) (canon lift (core func $i "init")))
  (func (export "size") (result u32) (canon lift (core func $i "size")))
  (func (export "peek") (result u32) (canon lift (core func $i "peek")))
)
"""


def test_a_resource_reaches_the_host_that_defines_it_as_its_rep_and_any_other_host_as_a_handle(
    rt: Runtime,
) -> None:
    """Resource arguments are resolved to reps when lifted (component._lift_resource), for the host whose
    interface defines the resource only: another host gets wasmtime-py's ResourceAny, as before."""

    seen: list[object] = []

    class ThingHost(ComponentHost):
        interface = "example:probe/a@0.1.0"
        resources = ("thing",)

        @componentfunc("size")
        def size(self, rep: int) -> int:
            return rep

    class PeekHost(ComponentHost):
        interface = "example:probe/b@0.1.0"

        @componentfunc("peek")
        def peek(self, thing: object) -> int:
            seen.append(thing)
            return 1

    things, peek = ThingHost(), PeekHost()
    with ComponentGuest(rt, wc.Component(rt.engine, USES), name="uses", hosts=[things, peek]) as g:
        g.call("init", things.own("thing", 42))
        assert [g.call("size"), g.call("size")] == [42, 42]
        assert g.call("peek") == 1
    assert [type(t) for t in seen] == [wc.ResourceAny]


def test_memory_beyond_the_limit_is_refused(rt: Runtime, probe_component: wc.Component) -> None:
    g = ComponentGuest(
        rt, probe_component, name="grow", hosts=[ProbeHost()], limits=Limits(memory_bytes=4 * 65536)
    )
    assert g.call("grow", 2) == 1  # 1 -> 3 pages: within the limit
    assert g.call("grow", 2) == -1  # 3 -> 5 pages: refused, the guest sees memory.grow fail


def test_a_closed_guest_cannot_be_called(rt: Runtime, probe_component: wc.Component) -> None:
    host = ProbeHost()
    g = ComponentGuest(rt, probe_component, name="drop", hosts=[host])
    g.call("init", host.own("bus", 3))
    g.close()
    with pytest.raises(DriverError, match="driver drop: is closed"):
        g.call("probe", 0x48)


def test_cache_stores_and_reloads_serialised_components(tmp_path: Path, rt: Runtime) -> None:
    data = wc.Component(rt.engine, PROBE).serialize()  # not a component binary: refused
    cache = ComponentCache(ModuleCache(tmp_path))
    with pytest.raises(WasmError, match="not a WebAssembly component"):
        cache.load(rt, bytes(data), name="x")
    binary = _component_binary()
    assert is_component(binary)
    cache.load(rt, binary, name="probe")
    assert (cache.stats.compiles, cache.stats.hits) == (1, 0)
    (entry,) = tmp_path.glob("*.ccwasm")
    assert entry.name.endswith(f"-{rt.fingerprint}.ccwasm")
    comp = cache.load(rt, binary, name="probe")
    assert (cache.stats.compiles, cache.stats.hits) == (1, 1)
    host = ProbeHost()
    with ComponentGuest(rt, comp, name="cached", hosts=[host]) as g:
        g.call("init", host.own("bus", 1))
        assert g.call("probe", 0x48) == 0x60
    # A corrupt entry is recompiled and replaced, never deserialised.
    raw = bytearray(entry.read_bytes())
    raw[-10] ^= 0xFF
    entry.write_bytes(bytes(raw))
    cache.load(rt, binary, name="probe")
    assert (cache.stats.compiles, cache.stats.corrupt) == (2, 1)
    cache.load(rt, binary, name="probe")
    assert cache.stats.hits == 2


def _component_binary() -> bytes:
    """PROBE as a component binary (wasmtime's own text-to-binary, as wasm-tools would produce it)."""
    from wasmtime import wat2wasm

    return bytes(wat2wasm(PROBE))


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(range(256)) * 5, bytes(range(256)) * 17])
def test_byte_lists_cross_as_one_block_and_come_back_intact(data: bytes) -> None:
    import ctypes

    from wasmtime import _ffi as ffi

    from edgeagent.wasm.component_values import _lift_bytes, _lower_bytes

    val = ffi.wasmtime_component_val_t()
    _lower_bytes(None, data, ctypes.pointer(val))
    assert val.of.list.size == len(data)
    # Element by element, as wasmtime reads them: each a u8 value.
    assert all(val.of.list.data[i].kind == ffi.WASMTIME_COMPONENT_U8.value for i in range(len(data)))
    assert bytes(val.of.list.data[i].of.u8 for i in range(len(data))) == data
    assert _lift_bytes(val) == data


TAGGED_RESULT = r"""
(component
  (core module $m (memory (export "mem") 1) (func (export "f") (result i32) (i32.const 8)))
  (core instance $i (instantiate $m))
  (alias core export $i "mem" (core memory $mem))
  (func (export "f") (result (result u32 (error u32))) (canon lift (core func $i "f") (memory $mem)))
)
"""


@pytest.mark.parametrize(
    ("value", "lifted"),
    [
        (Err(5), Variant("err", 5)),  # a host function's err case, even where ok and err are both ints
        (Variant("ok", 7), Variant("ok", 7)),
        (Variant("err", 9), Variant("err", 9)),
    ],
)
def test_results_whose_cases_share_a_python_type_cross_tagged(
    rt: Runtime, value: object, lifted: object
) -> None:
    import ctypes

    from wasmtime import _ffi as ffi

    from edgeagent.wasm.component_values import codec

    fty = wc.Component(rt.engine, TAGGED_RESULT).type.exports(rt.engine)["f"].ty
    c = codec(fty.result)
    val = ffi.wasmtime_component_val_t()
    c.lower(None, value, ctypes.pointer(val))
    assert c.lift(val) == lifted
