"""`edgeagent run-driver` as a user runs it, end to end through the real libraries on emulated devices.

The console script runs in its own process under umockdev (not --sim): USB through the unmodified
pyusb/libusb-1.0 on the emulated usbdevfs, I2C through smbus2 on the emulated /dev/i2c-1. The emulator's own
counters show the traffic really crossed the kernel interfaces (the simulator would read the same values).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeagent.hw.emulation.client import Emulator

pytestmark = pytest.mark.integration

EDGEAGENT = Path(sys.executable).parent / "edgeagent"


def edgeagent(emulator: Emulator, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    env = {
        "EDGEAGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGEAGENT_POLICIES_DIR": str(tmp_path / "policies"),
    }
    return emulator.run([str(EDGEAGENT), *args], env=env, timeout=120)


def urbs(emulator: Emulator, name: str) -> int:
    return int(emulator.stats()["usb"][name]["urbs"])


def test_usb_echo_pings_through_libusb(emulator: Emulator, tmp_path: Path, wasm_build: Path) -> None:
    before = urbs(emulator, "echo")
    p = edgeagent(emulator, tmp_path, "run-driver", "usb_echo", "--count", "3", "--interval", "0", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 3
    address = emulator.usb["echo"]["address"]
    for row in rows:
        assert row["driver"] == "usb_echo"
        assert row["device"] == f"1209:0001 on bus 1 addr {address}"
        assert row["values"]["size"] == 64
        assert all(row["values"][k] > 0 for k in ("bulk", "interrupt", "control"))
        assert row["units"]["bulk"] == "us"
    # 3 rounds (+ the warm-up round), each a bulk and an interrupt OUT + IN: at least 16 URBs went through
    # usbdevfs. (Control transfers are USBDEVFS_CONTROL ioctls, not URBs.)
    assert urbs(emulator, "echo") - before >= 16


def test_usb_storage_checks_blocks_through_libusb(
    emulator: Emulator, tmp_path: Path, wasm_build: Path
) -> None:
    p = edgeagent(
        emulator, tmp_path, "run-driver", "usb_storage", "--hardware", "--count", "2", "--interval", "0"
    )
    assert p.returncode == 0, p.stderr
    header, *rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert header["inquiry"]["vendor"] == "EDGEAGNT"
    assert header["capacity"] == {"blocks": 8192, "block_size": 512, "bytes": 8192 * 512}
    assert header["device"] == f"1209:0002 on bus 1 addr {emulator.usb['disk']['address']}"
    assert [(r["values"]["lba"], r["values"]["bytes"]) for r in rows] == [(0, 65536), (128, 65536)]
    assert all(r["values"]["read"] > 0 and r["values"]["write"] > 0 for r in rows)


def test_denied_usb_device_is_one_line_and_exit_13(
    emulator: Emulator, tmp_path: Path, wasm_build: Path
) -> None:
    before = urbs(emulator, "disk")
    p = edgeagent(emulator, tmp_path, "run-driver", "usb_echo", "--device", "1209:0002", "--count", "1")
    assert p.returncode == 13
    (line,) = p.stderr.strip().splitlines()
    disk = emulator.usb["disk"]["address"]
    assert line.startswith(
        f"edgeagent: error: driver usb_echo: USB device 1209:0002 on bus 1 addr {disk} is not granted by its "
        "policy ("
    )
    assert p.stdout == ""
    assert urbs(emulator, "disk") == before  # refused before anything touched the device


def test_policy_without_the_device_denies_the_driver_inside(
    emulator: Emulator, tmp_path: Path, wasm_build: Path
) -> None:
    policy = tmp_path / "disk-only.toml"
    policy.write_text("[[usb]]\nvid = 0x1209\npid = 0x0002\n")
    p = edgeagent(emulator, tmp_path, "run-driver", "usb_echo", "--policy", str(policy), "--count", "1")
    assert p.returncode == 13
    assert p.stderr.strip() == (
        "edgeagent: error: driver usb_echo: init: access denied by policy to USB device 1209:0001"
    )


def test_i2c_driver_reads_through_smbus2(emulator: Emulator, tmp_path: Path, wasm_build: Path) -> None:
    before = emulator.stats()["i2c"]["1"]["transactions"]
    p = edgeagent(emulator, tmp_path, "run-driver", "tmp102", "--hardware", "--count", "2", "--interval", "0")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["values"] for r in rows] == [{"temperature": 23.5}] * 2
    assert emulator.stats()["i2c"]["1"]["transactions"] - before >= 3  # init probe + two reads


def test_i2c_part_gone_is_a_nack_naming_the_bus(emulator: Emulator, tmp_path: Path, wasm_build: Path) -> None:
    emulator.command("i2c_detach", bus=1, address=0x48)
    p = edgeagent(emulator, tmp_path, "run-driver", "tmp102", "--hardware", "--count", "1")
    assert p.returncode == 6
    assert p.stderr.strip() == (
        "edgeagent: error: driver tmp102: init failed: no-acknowledge(address) (ENXIO) at I2C address 0x48 "
        "on /dev/i2c-1"
    )
