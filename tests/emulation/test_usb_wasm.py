"""The Wasm USB drivers through the real pyusb/libusb stack on umockdev-emulated devices, bad input too."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgeagent.hw.emulation.client import Emulator

pytestmark = pytest.mark.integration

PRELUDE = """
import json, sys
from pathlib import Path
from edgeagent.drivers.usb_driver import UsbEchoWasm, UsbStorageWasm
from edgeagent.errors import EdgeAgentError
from edgeagent.hw.pyusb_backend import PyUsbBackend
from edgeagent.wasm import ModuleCache, Runtime
from edgeagent.drivers.hosts.usb import UsbGrant
BUILD = Path(sys.argv[1])
runtime = Runtime.default()
backend = PyUsbBackend()
def module(name):
    return ModuleCache(None).load_file(runtime, BUILD / f"{name}.wasm")
def echo(*grants):
    return UsbEchoWasm(module("usb_echo"), runtime=runtime, backend=backend,
                       grants=list(grants) or [UsbGrant(0x1209, 1, 0)])
def failure(fn, *args):
    try:
        fn(*args)
    except EdgeAgentError as e:
        return [type(e).__name__, str(e)]
    return None
"""


def program(body: str) -> str:
    return PRELUDE + textwrap.dedent(body)


@pytest.fixture
def mute_echo(emulator_factory: Callable[[Mapping[str, Any]], Emulator]) -> Emulator:
    """An echo device that swallows what it gets: its IN endpoints stay pending."""
    return emulator_factory({"usb": [{"name": "echo", "model": "echo", "mute": True}]})


def test_wasm_drivers_ping_and_move_blocks_through_libusb(emulator: Emulator, wasm_build: Path) -> None:
    got = emulator.run_python(
        program("""
        drv = echo()
        drv.init()
        pings = {k: [drv.ping(k, n) for n in (8, 64, 512)] for k in ("bulk", "interrupt", "control")}
        disk = UsbStorageWasm(module("usb_storage"), runtime=runtime, backend=backend,
                              grants=[UsbGrant(0x1209, 2, 0)])
        disk.init()
        blob = bytes(range(256)) * 128
        disk.write(40, blob)
        print(json.dumps({"pings": pings, "capacity": [disk.blocks, disk.block_size],
                          "roundtrip": disk.read(40, 64) == blob, "vendor": disk.inquiry()[8:16].decode()}))
    """),
        [str(wasm_build)],
    )
    assert got == {
        "pings": {k: [8, 64, 512] for k in ("bulk", "interrupt", "control")},
        "capacity": [8192, 512],
        "roundtrip": True,
        "vendor": "EDGEAGNT",
    }


def test_denied_device_is_invisible_and_open_is_access(emulator: Emulator, wasm_build: Path) -> None:
    got = emulator.run_python(
        program("""
        drv = echo()
        print(json.dumps({"visible": drv.device_count(), "open": failure(drv.try_open, 0x1209, 2)}))
    """),
        [str(wasm_build)],
    )
    assert got["visible"] == 1
    assert got["open"] == [
        "AccessDenied",
        "driver usb_echo: open 1209:0002: access denied by policy to USB device 1209:0002",
    ]


def test_stall_is_pipe_and_clear_halt_recovers(emulator: Emulator, wasm_build: Path) -> None:
    proc = emulator.spawn_python(
        program("""
        drv = echo()
        drv.init()
        print("READY", flush=True)
        sys.stdin.readline()
        out = {"stalled": failure(drv.ping, "interrupt", 8)}
        drv.recover()
        out["after"] = drv.ping("interrupt", 8)
        print(json.dumps(out))
    """),
        [str(wasm_build)],
        stdin=-1,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "READY"
    emulator.halt("echo", 0x02)  # interrupt OUT: the ping stalls before any data is queued
    proc.stdin.write("go\n")
    proc.stdin.flush()
    got = emulator.result(proc)
    assert got["stalled"][0] == "HardwareError"
    assert got["stalled"][1].startswith("driver usb_echo: interrupt ping: usb pipe")
    assert got["after"] == 8


def test_timeout(mute_echo: Emulator, wasm_build: Path) -> None:
    got = mute_echo.run_python(
        program("""
        drv = echo()
        drv.init()
        drv.set_timeout(150)
        print(json.dumps(failure(drv.ping, "bulk", 64)))
    """),
        [str(wasm_build)],
    )
    assert got == [
        "HardwareError",
        "driver usb_echo: bulk ping: usb timeout (1209:0001 on bus 1 addr 2: "
        "bulk IN 0x81: Operation timed out)",
    ]


def test_unplug_mid_transfer_is_no_device(mute_echo: Emulator, wasm_build: Path) -> None:
    proc = mute_echo.spawn_python(
        program("""
        drv = echo()
        drv.init()
        drv.set_timeout(20000)
        out = {"in_flight": failure(drv.ping, "bulk", 64), "after": failure(drv.ping, "control", 8)}
        out["event"] = drv.hotplug()
        print(json.dumps(out))
    """),
        [str(wasm_build)],
    )
    assert mute_echo.wait_pending("echo", 0x81, timeout=30)
    mute_echo.unplug("echo")
    got = mute_echo.result(proc)
    assert got["in_flight"][0] == "HardwareError"
    assert got["in_flight"][1].startswith("driver usb_echo: bulk ping: usb no-device")
    assert got["after"][1].startswith("driver usb_echo: control ping: usb no-device")
    assert got["event"] in ([2, 2], None)  # libusb may deliver the LEFT event a moment later
