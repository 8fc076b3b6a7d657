"""USB cases of `edgeagent bench drivers`, in-process: Wasm drivers against their native pyusb twins.

Both sides drive their own copy of the simulated devices through the same layers below the driver: pyusb with
the simulator as its backend (no kernel, no libusb), so the ratio is what running the driver in Wasm adds
(crossings, guest work, the host's copying). A third case per ping runs the Wasm driver on the simulator
directly (no pyusb): the cost of the Wasm path alone. Samples of the sides of a comparison are interleaved
(edgeagent.bench.drivers.interleaved).

Layers: the native twin calls pyusb's ``Device.read/write/ctrl_transfer``; the Wasm host calls the pyusb
backend with the endpoint's interface resolved once per handle (edgeagent.hw.pyusb_backend: what pyusb's
``Device`` methods redo on every call). Both end in the same backend calls; on libusb the host's transfers
are libusb's synchronous calls into guest memory, the twin's the same calls into pyusb's arrays.
Cases: echo ping (bulk, interrupt, control) at 8, 64 and 512 bytes; mass storage sequential and random read
and write in MB/s (64 KiB sequential commands over 4 MiB, 4 KiB random commands over 1 MiB).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable

import wasmtime

from edgeagent.bench.drivers import interleaved
from edgeagent.bench.harness import Case, Report
from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.hosts.usb import UsbGrant
from edgeagent.drivers.native.usb_echo import NativeUsbEcho
from edgeagent.drivers.native.usb_storage import NativeMassStorage
from edgeagent.drivers.usb_driver import UsbEchoWasm, UsbStorageWasm
from edgeagent.hw.pyusb_backend import PyUsbBackend
from edgeagent.hw.sim.usb_bus import SimUsbBus
from edgeagent.hw.sim.usb_echo import EchoDevice
from edgeagent.hw.sim.usb_pyusb import SimPyusbBackend
from edgeagent.hw.sim.usb_storage import MassStorageDevice
from edgeagent.wasm import ModuleCache, Runtime

PING_SIZES = (8, 64, 512)
KINDS = ("bulk", "interrupt", "control")
DISK_BYTES = 8 << 20
SEQ_BYTES, SEQ_CHUNK = 4 << 20, 64 << 10
RANDOM_BYTES, RANDOM_CHUNK = 1 << 20, 4 << 10
BLOCK = 512
ECHO = UsbGrant(0x1209, 0x0001, 0)
DISK = UsbGrant(0x1209, 0x0002, 0)


def _bus() -> SimUsbBus:
    bus = SimUsbBus()
    bus.plug(EchoDevice())
    bus.plug(MassStorageDevice(size=DISK_BYTES))
    return bus


def _modules(runtime: Runtime) -> dict[str, wasmtime.Module]:
    cache = ModuleCache(None)
    config = AgentConfig()
    return {
        n: cache.load_file(runtime, registry.module_path(registry.get(n), config), name=n)
        for n in ("usb_echo", "usb_storage")
    }


def mbps(fns: dict[str, Callable[[], int]], repeat: int) -> dict[str, list[float]]:
    """Interleaved samples in MB/s (10^6 bytes/s) of each `fn`, which returns the bytes it moved."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeat):
        for k, fn in items[r % len(items) :] + items[: r % len(items)]:  # rotating order, as `interleaved`
            t0 = time.perf_counter()
            n = fn()
            out[k].append(n / 1e6 / (time.perf_counter() - t0))
    return out


def storage_work(
    read: Callable[[int, int], object],
    write: Callable[[int, bytes], object],
    blocks: int,
    *,
    seq: tuple[int, int] = (SEQ_BYTES, SEQ_CHUNK),
    rnd: tuple[int, int] = (RANDOM_BYTES, RANDOM_CHUNK),
) -> dict[str, Callable[[], int]]:
    """The four mass-storage workloads over ``read(lba, count)``/``write(lba, data)``; each returns the bytes
    it moved. ``seq``/``rnd`` are (total bytes, bytes per command). Same LBAs and data for every caller."""
    (seq_bytes, seq_chunk), (rnd_bytes, rnd_chunk) = seq, rnd
    rng = random.Random(1)
    seq_count, rnd_count = seq_chunk // BLOCK, rnd_chunk // BLOCK
    seq_data, rnd_data = rng.randbytes(seq_chunk), rng.randbytes(rnd_chunk)
    lbas = [rng.randrange(0, blocks - rnd_count) for _ in range(rnd_bytes // rnd_chunk)]

    def seq_read() -> int:
        for lba in range(0, seq_bytes // BLOCK, seq_count):
            read(lba, seq_count)
        return seq_bytes

    def seq_write() -> int:
        for lba in range(0, seq_bytes // BLOCK, seq_count):
            write(lba, seq_data)
        return seq_bytes

    def random_read() -> int:
        for lba in lbas:
            read(lba, rnd_count)
        return rnd_bytes

    def random_write() -> int:
        for lba in lbas:
            write(lba, rnd_data)
        return rnd_bytes

    return {
        "sequential read": seq_read,
        "sequential write": seq_write,
        "random read": random_read,
        "random write": random_write,
    }


def add_cases(report: Report, *, repeat: int) -> None:
    runtime = Runtime.default()
    modules = _modules(runtime)
    native_echo = NativeUsbEcho.find(backend=SimPyusbBackend(_bus()))
    wasm_echo = UsbEchoWasm(
        modules["usb_echo"],
        runtime=runtime,
        backend=PyUsbBackend(SimPyusbBackend(_bus())),
        grants=[ECHO],
    )
    direct_echo = UsbEchoWasm(
        modules["usb_echo"],
        runtime=runtime,
        backend=_bus(),
        grants=[ECHO],
    )
    wasm_echo.init()
    direct_echo.init()
    native_ping = {
        "bulk": native_echo.ping_bulk,
        "interrupt": native_echo.ping_interrupt,
        "control": native_echo.ping_control,
    }
    for kind in KINDS:
        for size in PING_SIZES:
            payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            got = interleaved(
                {
                    "native": functools.partial(native_ping[kind], payload),
                    "wasm": functools.partial(wasm_echo.ping, kind, size),
                    "direct": functools.partial(direct_echo.ping, kind, size),
                },
                repeat=repeat,
                inner=100,
            )
            base = report.add(Case(f"usb {kind} ping {size} B, native (pyusb on sim)", got["native"]))
            report.add(
                Case(
                    f"usb {kind} ping {size} B, Wasm (pyusb on sim)",
                    got["wasm"],
                    baseline=base.name,
                    note="same pyusb backend under both drivers",
                )
            )
            report.add(
                Case(
                    f"usb {kind} ping {size} B, Wasm (sim bus, no pyusb)",
                    got["direct"],
                    baseline=base.name,
                    note="null backend: the Wasm path alone",
                )
            )
    native_echo.close()
    wasm_echo.close()
    direct_echo.close()

    native_disk = NativeMassStorage.find(backend=SimPyusbBackend(_bus()))
    wasm_disk = UsbStorageWasm(
        modules["usb_storage"],
        runtime=runtime,
        backend=PyUsbBackend(SimPyusbBackend(_bus())),
        grants=[DISK],
    )
    wasm_disk.init()
    native_work = storage_work(native_disk.read, native_disk.write, native_disk.blocks)
    wasm_work = storage_work(wasm_disk.read_blocks, wasm_disk.write, wasm_disk.blocks)
    for name, fn in native_work.items():
        got = mbps({"native": fn, "wasm": wasm_work[name]}, max(3, repeat // 3))
        base = report.add(
            Case(
                f"usb storage {name}, native (pyusb on sim)",
                got["native"],
                unit="MB/s",
                higher_is_better=True,
            )
        )
        report.add(
            Case(
                f"usb storage {name}, Wasm (pyusb on sim)",
                got["wasm"],
                unit="MB/s",
                higher_is_better=True,
                baseline=base.name,
                note="64 KiB commands" if name.startswith("seq") else "4 KiB commands, random LBAs",
            )
        )
    native_disk.close()
    wasm_disk.close()
