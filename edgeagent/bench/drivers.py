"""`edgeagent bench drivers`: Wasm drivers against their native Python twins, in the same run.

In-process cases use the simulated parts with no kernel underneath. Cases:
- host call: one Wasm -> Python call of a host function that does nothing (target <= 1.5 us);
- export call: one Python -> Wasm call of an export that does nothing;
- sensor read per driver and LCD write of a full 16x2 screen, three ways: the native twin, the Wasm driver
  through the same smbus2 layer (smbus2 ``i2c_msg`` + ``I2C_RDWR`` calls on an SMBus look-alike over the
  simulator: the ratio is what Wasm adds), and the Wasm driver straight on the simulated bus (the "null
  backend": the Wasm path alone);
- cold start: compile, cache load (target <= 1 ms), instantiate, first reading (init + read), and the total
  from the cache, against the native twin's first reading;
- loop stop: how long a guest stuck in a loop runs before the 50 ms compute limit stops it (target <= 100 ms).
Then the USB cases and the umockdev-emulated cases, when their modules are present.

Same operations on both sides: the native twins issue exactly the transactions the Wasm I2C host issues for
the C header's register helpers (one I2C_RDWR write + repeated START + read per register read, one I2C_RDWR
write per register write; see edgeagent.drivers.native.base), so on the emulated /dev/i2c-1 both sides make
the same ioctls and the comparison measures the runtime, not the choice of ioctl.

The machine is shared: every comparison takes its samples interleaved (native, Wasm, native, Wasm, ...; see
`interleaved`), so a change of load hits both sides alike, and the report's meta records the load average at
the start and the end of the run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgeagent.bench.harness import Case, Report, timeit
from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.native import NATIVE_DRIVERS, NativeDriver
from edgeagent.drivers.native.simbus import SimSMBus
from edgeagent.drivers.runner import I2cDriver
from edgeagent.errors import DriverError
from edgeagent.hw.i2c import I2cBus
from edgeagent.hw.sim.clock import SimClock, new_part
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.smbus2_bus import Smbus2Bus
from edgeagent.wasm import I32, Guest, HostModule, Limits, ModuleCache, Runtime, hostfunc
from edgeagent.wasm.cache import compile_module

HOST_CALLS_PER_SAMPLE = 20_000
SENSORS = ("tmp102", "hts221", "bme280")
LCD = "hd44780_pcf8574"
LCD_TEXT = "edgeagent 0.1.0\nwasm i2c driver!"


def _no_sleep(_: float) -> None:
    pass


class NullHost(HostModule):
    """The host side of drivers/bench/hostcall.c: a function that does nothing."""

    interface = "edgeagent:bench/null"

    @hostfunc("noop", params=(I32,), results=(I32,))
    def noop(self, x: int) -> int:
        return x


def _bench_module(name: str) -> Path:
    p = registry.BUILD_DIR / "bench" / f"{name}.wasm"
    if not p.is_file():
        raise DriverError(f"benchmark guest {p} is missing (run `make -C drivers`)")
    return p


def _sim(name: str) -> tuple[SimI2cBus, int, SimClock]:
    """The part on a sim bus, and its clock: the driver is given ``clock.sleep``, so the datasheet's waits
    pass on the part's clock without passing in real time (the benchmark times the driver path alone)."""
    info = registry.get(name)
    assert info.sim_model is not None and info.default_address is not None
    clock = SimClock(_no_sleep)
    return SimI2cBus([new_part(info.sim_model, info.default_address, clock.now)]), info.default_address, clock


def _wasm_driver(
    name: str, runtime: Runtime, cache: ModuleCache, config: AgentConfig, *, smbus2: bool = False
) -> I2cDriver:
    """The Wasm driver on its simulated part: straight on the sim bus, or (``smbus2``) through smbus2's
    message layer over the sim, as the native twin is."""
    info = registry.get(name)
    module = cache.load_file(runtime, registry.module_path(info, config), name=name)
    sim, addr, clock = _sim(name)
    bus: I2cBus = Smbus2Bus(1, smbus=SimSMBus(sim)) if smbus2 else sim
    return I2cDriver(
        name, module, runtime=runtime, bus=bus, address=addr, granted=frozenset({addr}), sleep=clock.sleep
    )


def _native_driver(name: str) -> NativeDriver:
    bus, addr, clock = _sim(name)
    drv = NATIVE_DRIVERS[name](SimSMBus(bus), addr, sleep=clock.sleep)
    drv.init()
    return drv


def interleaved(
    fns: dict[str, Callable[[], object]], *, repeat: int, inner: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Samples of several functions taken in turns, seconds per call: on a shared machine a load change then
    hits every side of a comparison alike instead of one side's whole series. The order rotates every round
    (a b c, b c a, c a b, ...) so no side always runs first, right after the other's caches were warmed."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeat):
        for k, fn in items[r % len(items) :] + items[: r % len(items)]:
            out[k] += timeit(fn, repeat=1, warmup=0, inner=inner)
    return out


def crossing_cases(report: Report, runtime: Runtime, repeat: int) -> None:
    module = compile_module(runtime, _bench_module("hostcall").read_bytes(), "hostcall")
    g = Guest(runtime, module, name="hostcall", hosts=[NullHost()], limits=Limits(compute_ms=60_000))
    samples = timeit(lambda: g.call("calls", HOST_CALLS_PER_SAMPLE), repeat=repeat)
    report.add(
        Case(
            "host call (Wasm -> Python, null function)",
            [s / HOST_CALLS_PER_SAMPLE for s in samples],
            target=1.5e-6,
            note=f"{HOST_CALLS_PER_SAMPLE} calls per sample, fast (unchecked) path",
        )
    )
    report.add(
        Case(
            "export call (Python -> Wasm, null function)",
            timeit(lambda: g.call("ping", 1), repeat=repeat, inner=2000),
            note="Guest.call: deadline armed per call",
        )
    )


def read_cases(
    report: Report, runtime: Runtime, cache: ModuleCache, config: AgentConfig, repeat: int
) -> None:
    for name in SENSORS:
        native = _native_driver(name)
        wasm = _wasm_driver(name, runtime, cache, config, smbus2=True)
        direct = _wasm_driver(name, runtime, cache, config)
        # A benchmark of wrong answers is worthless.
        if not wasm.read().values == direct.read().values == native.read():
            raise DriverError(f"bench: {name} Wasm and native readings differ")
        got = interleaved(
            {"native": native.read, "wasm": wasm.read_values, "direct": direct.read_values},
            repeat=repeat,
            inner=200,
        )
        base = report.add(Case(f"{name} read, native (smbus2 I2C_RDWR on sim)", got["native"]))
        report.add(
            Case(
                f"{name} read, Wasm (smbus2 I2C_RDWR on sim)",
                got["wasm"],
                baseline=base.name,
                note="same smbus2 layer under both: crossings + guest work",
            )
        )
        report.add(
            Case(
                f"{name} read, Wasm (sim bus, no smbus2)",
                got["direct"],
                baseline=base.name,
                note="null backend: the Wasm path alone",
            )
        )
        wasm.close()
        direct.close()
    native = _native_driver(LCD)
    wasm = _wasm_driver(LCD, runtime, cache, config, smbus2=True)
    direct = _wasm_driver(LCD, runtime, cache, config)
    got = interleaved(
        {
            "native": lambda: native.write(LCD_TEXT),
            "wasm": lambda: wasm.write(LCD_TEXT),
            "direct": lambda: direct.write(LCD_TEXT),
        },
        repeat=repeat,
        inner=20,
    )
    base = report.add(Case("lcd 16x2 write, native (smbus2 I2C_RDWR on sim)", got["native"]))
    report.add(Case("lcd 16x2 write, Wasm (smbus2 I2C_RDWR on sim)", got["wasm"], baseline=base.name))
    report.add(
        Case(
            "lcd 16x2 write, Wasm (sim bus, no smbus2)",
            got["direct"],
            baseline=base.name,
            note="null backend",
        )
    )
    wasm.close()
    direct.close()


def cold_start_cases(report: Report, runtime: Runtime, config: AgentConfig, repeat: int) -> None:
    name = "bme280"
    info = registry.get(name)
    data = registry.module_path(info, config).read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        cache = ModuleCache(Path(tmp))
        cache.load(runtime, data, name=name)  # warm the on-disk entry
        report.add(
            Case(
                f"cold: compile {name} ({len(data)} B)",
                timeit(lambda: compile_module(runtime, data, name), repeat=max(3, repeat // 3)),
            )
        )
        report.add(
            Case(
                f"cold: cache load {name}",
                timeit(lambda: cache.load(runtime, data, name=name), repeat=repeat),
                target=1e-3,
                note="read + sha256 check + Module.deserialize",
            )
        )
        module = cache.load(runtime, data, name=name)
        bus, addr, clock = _sim(name)

        def instantiate() -> I2cDriver:
            return I2cDriver(
                name,
                module,
                runtime=runtime,
                bus=bus,
                address=addr,
                granted=frozenset({addr}),
                sleep=clock.sleep,
            )

        report.add(
            Case(
                f"cold: instantiate + init {name}",
                timeit(lambda: instantiate().close(), repeat=repeat),
                note="Store, linker, instance, _initialize, ABI checks, describe, init",
            )
        )

        def first_reading_wasm() -> None:
            d = I2cDriver(
                name,
                cache.load(runtime, data, name=name),
                runtime=runtime,
                bus=bus,
                address=addr,
                granted=frozenset({addr}),
                sleep=clock.sleep,
            )
            d.read()
            d.close()

        def first_reading_native() -> None:
            _native_driver(name).read()

        got = interleaved({"native": first_reading_native, "wasm": first_reading_wasm}, repeat=repeat)
        base = report.add(Case(f"cold: first reading {name}, native", got["native"]))
        report.add(
            Case(
                f"cold: first reading {name}, Wasm from cache",
                got["wasm"],
                baseline=base.name,
                note="cache load + instantiate + init + read",
            )
        )


def loop_stop_case(report: Report, runtime: Runtime, repeat: int) -> None:
    module = (
        compile_module(runtime, (registry.BUILD_DIR / "tests" / "looping_driver.wasm").read_bytes(), "looper")
        if (registry.BUILD_DIR / "tests" / "looping_driver.wasm").is_file()
        else None
    )
    if module is None:
        return
    g = Guest(runtime, module, name="looper", limits=Limits(compute_ms=50), hosts=[])
    samples = []
    for _ in range(min(repeat, 10)):
        t0 = time.perf_counter()
        try:
            g.call("read")
        except DriverError:
            samples.append(time.perf_counter() - t0)
    report.add(
        Case(
            "loop stopped after (50 ms compute limit)",
            samples,
            target=0.1,
            note=f"epoch tick {runtime.tick * 1000:g} ms",
        )
    )


def _optional(report: Report, module: str, repeat: int) -> None:
    if importlib.util.find_spec(module) is not None:
        importlib.import_module(module).add_cases(report, repeat=repeat)


def run(config: AgentConfig, *, repeat: int) -> Report:
    runtime = Runtime.default()
    report = Report(
        "drivers",
        meta={
            "backend": "in-process simulated parts; umockdev-emulated devices for the 'emulated' cases",
            "epoch_tick_ms": runtime.tick * 1000,
            "loadavg_start": list(os.getloadavg()),
            "sampling": "interleaved: native and Wasm samples alternate within each comparison",
        },
    )
    with tempfile.TemporaryDirectory(prefix="edgeagent-bench-") as tmp:
        cache = ModuleCache(Path(tmp))
        crossing_cases(report, runtime, repeat)
        read_cases(report, runtime, cache, config, repeat)
    cold_start_cases(report, runtime, config, repeat)
    loop_stop_case(report, runtime, repeat)
    _optional(report, "edgeagent.bench.drivers_usb", repeat)
    _optional(report, "edgeagent.bench.drivers_emulated", repeat)
    _optional(report, "edgeagent.bench.drivers_components", repeat)
    report.meta["loadavg_end"] = list(os.getloadavg())
    return report
