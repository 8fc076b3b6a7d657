"""Component cases of `edgeagent bench drivers`: the WASI 0.2 component path beside the core-module fast path
and the native twin, in the same run.

- host call: one component -> Python call of a null host function (``u32 -> u32``) and one Python ->
  component export call, against the core path's (``host call`` / ``export call`` cases above);
- sensor read on the simulated part, in process: native twin, core module (fast path), C component
  (wit-bindgen), Rust component (bme280 only), samples interleaved;
- sensor read on the umockdev-emulated /dev/i2c-1 through the real smbus2 (a child process under umockdev,
  like drivers_emulated): native, core, component; target component <= 1.03x native;
- cold start of a component: compile, cache load (target <= 1 ms), instantiate + describe + init, first
  reading from the cache.

Where a component call's time goes: wasmtime-py's component API has no unchecked path. Its own
``LinkerInstance.add_func``/``Func.__call__`` walk every parameter type through the C API on every call;
ComponentGuest reads each function's types once (wasm.component_values), resolves a resource argument
to its rep with direct C calls, moves ``list<u8>`` as one block and re-arms a deadline only when it changes.
What remains is per value: every argument and result still crosses as a heap ``wasmtime_component_val_t``
through ~20 ctypes calls per I2C call, plus wasmtime's dynamic lowering. The core path moves raw i32 slots and
guest memory directly. On the emulated bus every path issues the same transactions (HTS221: 6 I2C_RDWR, 3
delays per reading); the gap is CPU time outside the ioctls, which doubles on every path when each call
follows a blocking round trip to the emulator (cold caches). So a component read costs 1.04-1.18x native there
against the core module's 1.01x (docs/components-emulated-gap.md). The bundled drivers stay core modules (the
fast path is the default); components are for drivers written against the proposals' WIT.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmtime import component as wc
from wasmtime import wat2wasm

from edgeagent.bench.harness import Case, Report, timeit
from edgeagent.drivers import registry
from edgeagent.errors import DriverError
from edgeagent.wasm.cache import ModuleCache
from edgeagent.wasm.component import ComponentCache, ComponentGuest, ComponentHost, componentfunc
from edgeagent.wasm.engine import Limits, Runtime

HOST_CALLS_PER_SAMPLE = 20_000
# Sensor -> its component builds (registry names).
COMPONENTS = {"hts221": ("hts221_component",), "bme280": ("bme280_component", "bme280_rust")}
I2C_CALLS = 20
TARGET_RATIO = 1.03

# `calls(n)` calls the null import n times; `ping(x)` returns x.
HOSTCALL = r"""
(component
  (import "edgeagent:bench/null@0.1.0" (instance $n (export "noop" (func (param "x" u32) (result u32)))))
  (alias export $n "noop" (func $noop))
  (core func $noop_low (canon lower (func $noop)))
  (core module $m
    (import "n" "noop" (func $noop (param i32) (result i32)))
    (func (export "calls") (param $n i32) (result i32) (local $acc i32)
      (block $done (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $acc (call $noop (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
      (local.get $acc))
    (func (export "ping") (param i32) (result i32) (local.get 0)))
  (core instance $ni (export "noop" (func $noop_low)))
  (core instance $i (instantiate $m (with "n" (instance $ni))))
  (func (export "calls") (param "n" u32) (result u32) (canon lift (core func $i "calls")))
  (func (export "ping") (param "x" u32) (result u32) (canon lift (core func $i "ping")))
)
"""


class NullComponentHost(ComponentHost):
    interface = "edgeagent:bench/null@0.1.0"

    @componentfunc("noop")
    def noop(self, x: int) -> int:
        return x


def _no_sleep(_: float) -> None:
    pass


def component_path(name: str) -> Path:
    p = registry.BUILD_DIR / registry.get(name).wasm_name
    if not p.is_file():
        raise DriverError(f"component driver {p} is missing (run `make -C drivers/components`)")
    return p


def _component_driver(
    name: str,
    runtime: Runtime,
    cache: ComponentCache,
    bus: Any,
    address: int,
    sleep: Callable[[float], None] = _no_sleep,
) -> Any:
    """``sleep``: the part's SimClock.sleep on a sim bus (see edgeagent.bench.drivers._sim)."""
    from edgeagent.drivers.components.i2c_driver import ComponentI2cDriver

    comp = cache.load_file(runtime, component_path(name), name=name)
    return ComponentI2cDriver(
        name, comp, runtime=runtime, bus=bus, address=address, granted=frozenset({address}), sleep=sleep
    )


def crossing_cases(report: Report, runtime: Runtime, repeat: int) -> None:
    comp = wc.Component(runtime.engine, bytes(wat2wasm(HOSTCALL)))
    g = ComponentGuest(
        runtime, comp, name="hostcall", hosts=[NullComponentHost()], limits=Limits(compute_ms=60e3)
    )
    n = HOST_CALLS_PER_SAMPLE // 10
    samples = timeit(lambda: g.call("calls", n), repeat=repeat)
    report.add(
        Case(
            "component host call (component -> Python, null u32 function)",
            [s / n for s in samples],
            baseline="host call (Wasm -> Python, null function)",
            note=f"{n} calls per sample; wasmtime-py's typed-value path (no unchecked calls for components)",
        )
    )
    report.add(
        Case(
            "component export call (Python -> component, null u32 function)",
            timeit(lambda: g.call("ping", 1), repeat=repeat, inner=500),
            baseline="export call (Python -> Wasm, null function)",
            note="ComponentGuest.call: deadline armed, FuncType walked per call by wasmtime-py",
        )
    )
    g.close()


def read_cases(report: Report, runtime: Runtime, repeat: int) -> None:
    from edgeagent.bench.drivers import _native_driver, _sim, _wasm_driver, interleaved
    from edgeagent.config import AgentConfig

    config = AgentConfig()
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        modules = ModuleCache(Path(tmp))
        cache = ComponentCache(modules)
        for sensor, builds in COMPONENTS.items():
            native = _native_driver(sensor)
            core = _wasm_driver(sensor, runtime, modules, config)
            fns: dict[str, Callable[[], object]] = {"native": native.read, "core": core.read_values}
            drivers = []
            for name in builds:
                bus, addr, clock = _sim(sensor)
                d = _component_driver(name, runtime, cache, bus, addr, clock.sleep)
                drivers.append(d)
                if d.read_values() != core.read_values():
                    raise DriverError(f"bench: {name} and the core {sensor} driver read different values")
                fns[name] = d.read_values
            got = interleaved(fns, repeat=repeat, inner=100)
            base = report.add(Case(f"{sensor} read, native (sim, no smbus2) [components]", got["native"]))
            report.add(
                Case(
                    f"{sensor} read, core module (sim bus)", got["core"], baseline=base.name, note="fast path"
                )
            )
            for name in builds:
                report.add(
                    Case(
                        f"{sensor} read, component {name} (sim bus)",
                        got[name],
                        baseline=base.name,
                        note="typed values through wasmtime-py's component API",
                    )
                )
            for d in (core, *drivers):
                d.close()


def cold_start_cases(report: Report, runtime: Runtime, repeat: int) -> None:
    from edgeagent.bench.drivers import _sim

    name = "bme280_component"
    data = component_path(name).read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        cache = ComponentCache(ModuleCache(Path(tmp)))
        cache.load(runtime, data, name=name)
        report.add(
            Case(
                f"cold: compile component {name} ({len(data)} B)",
                timeit(lambda: wc.Component(runtime.engine, data), repeat=max(3, repeat // 3)),
            )
        )
        report.add(
            Case(
                f"cold: cache load component {name}",
                timeit(lambda: cache.load(runtime, data, name=name), repeat=repeat),
                target=1e-3,
                note="read + sha256 check + Component.deserialize",
            )
        )
        comp = cache.load(runtime, data, name=name)
        bus, addr, clock = _sim("bme280")

        def instantiate() -> None:
            from edgeagent.drivers.components.i2c_driver import ComponentI2cDriver

            ComponentI2cDriver(
                name,
                comp,
                runtime=runtime,
                bus=bus,
                address=addr,
                granted=frozenset({addr}),
                sleep=clock.sleep,
            ).close()

        report.add(
            Case(
                f"cold: instantiate + init component {name}",
                timeit(instantiate, repeat=repeat),
                note="Store, component linker, instance, import checks, describe, init",
            )
        )

        def first_reading() -> None:
            d = _component_driver(name, runtime, cache, bus, addr, clock.sleep)
            d.read()
            d.close()

        report.add(
            Case(
                f"cold: first reading component {name} from cache",
                timeit(first_reading, repeat=repeat),
                baseline="cold: first reading bme280, Wasm from cache",
                note="cache load + instantiate + init + read",
            )
        )


SPEC: dict[str, Any] = {"i2c": [{"bus": 1, "parts": [{"model": "hts221"}, {"model": "bme280"}]}]}


def emulated_cases(report: Report, repeat: int) -> None:
    from edgeagent.hw.emulation.client import Emulator

    with (
        tempfile.TemporaryDirectory(prefix="edgeagent-bench-emu-") as tmp,
        Emulator({**SPEC, "clock_file": str(Path(tmp) / "clock")}, log=Path(tmp) / "emulator.log") as emu,
    ):
        code = "import sys; from edgeagent.bench.drivers_components import child; child(sys.argv[1:])"
        proc = emu.spawn_python(code, [str(registry.BUILD_DIR), str(repeat), str(Path(tmp) / "clock")])
        results: dict[str, list[float]] = emu.result(proc, timeout=1800)
    for sensor, builds in COMPONENTS.items():
        base = report.add(
            Case(f"{sensor} read, native twin (I2C_RDWR, emulated) [components]", results[f"{sensor} native"])
        )
        report.add(
            Case(
                f"{sensor} read, core module (I2C_RDWR, emulated) [components]",
                results[f"{sensor} core"],
                baseline=base.name,
                target=TARGET_RATIO,
                target_is_ratio=True,
            )
        )
        for name in builds:
            report.add(
                Case(
                    f"{sensor} read, component {name} (I2C_RDWR, emulated)",
                    results[name],
                    baseline=base.name,
                    target=TARGET_RATIO,
                    target_is_ratio=True,
                )
            )


def child(argv: list[str]) -> None:
    """The emulated measurement, under umockdev's preload library; prints {case: samples} as JSON."""
    from smbus2 import SMBus

    from edgeagent.bench.drivers import interleaved
    from edgeagent.drivers.native import NATIVE_DRIVERS
    from edgeagent.drivers.runner import I2cDriver
    from edgeagent.hw.sim.clock import SimClock
    from edgeagent.hw.smbus2_bus import Smbus2Bus

    build, repeat = Path(argv[0]), int(argv[1])
    clock = SimClock(_no_sleep, path=Path(argv[2]))  # the emulated parts' clock (see drivers_emulated.child)
    runtime = Runtime.default()
    modules = ModuleCache(None)
    cache = ComponentCache(modules)
    out: dict[str, list[float]] = {}
    smbus = SMBus(1)
    bus = Smbus2Bus(1)
    for sensor, builds in COMPONENTS.items():
        address = registry.get(sensor).default_address
        assert address is not None
        native = NATIVE_DRIVERS[sensor](smbus, address, sleep=clock.sleep)
        native.init()
        core = I2cDriver(
            sensor,
            modules.load_file(runtime, build / f"{sensor}.wasm"),
            runtime=runtime,
            bus=bus,
            address=address,
            granted=frozenset({address}),
            sleep=clock.sleep,
        )
        fns: dict[str, Callable[[], object]] = {"native": native.read, "core": core.read_values}
        drivers = [_component_driver(name, runtime, cache, bus, address, clock.sleep) for name in builds]
        for name, d in zip(builds, drivers, strict=True):
            fns[name] = d.read_values
        got = interleaved(fns, repeat=repeat * I2C_CALLS)
        out[f"{sensor} native"], out[f"{sensor} core"] = got["native"], got["core"]
        for name in builds:
            out[name] = got[name]
        for d in (core, *drivers):
            d.close()
    print(json.dumps(out))


def add_cases(report: Report, *, repeat: int) -> None:
    runtime = Runtime.default()
    t0 = time.monotonic()
    crossing_cases(report, runtime, repeat)
    read_cases(report, runtime, repeat)
    cold_start_cases(report, runtime, repeat)
    emulated_cases(report, repeat)
    report.meta["components_seconds"] = round(time.monotonic() - t0, 1)


if __name__ == "__main__":
    child(sys.argv[1:])
