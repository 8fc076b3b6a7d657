"""Component drivers through the real smbus2 stack on the umockdev-emulated /dev/i2c-1, as a user runs them:
`edgeagent run-driver` in its own process, the component's wasi:i2c calls ending in I2C_RDWR ioctls."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgeagent.hw.emulation.client import Emulator

pytestmark = pytest.mark.integration

EDGEAGENT = Path(sys.executable).parent / "edgeagent"
SENSORS = {"i2c": [{"bus": 1, "parts": [{"model": "hts221"}, {"model": "bme280"}]}]}


@pytest.fixture
def sensors(emulator_factory: Callable[[Mapping[str, Any]], Emulator]) -> Emulator:
    return emulator_factory(SENSORS)


def run_driver(emulator: Emulator, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    env = {
        "EDGEAGENT_STATE_DIR": str(tmp_path / "state"),
        "EDGEAGENT_POLICIES_DIR": str(tmp_path / "policies"),
    }
    return emulator.run([str(EDGEAGENT), "run-driver", *args], env=env, timeout=120)


def transactions(emulator: Emulator) -> int:
    return int(emulator.stats()["i2c"]["1"]["transactions"])


@pytest.mark.parametrize(
    ("component", "core"),
    [("hts221_component", "hts221"), ("bme280_component", "bme280"), ("bme280_rust", "bme280")],
)
def test_component_driver_reads_the_emulated_part_through_smbus2(
    sensors: Emulator, tmp_path: Path, component_build: Path, component: str, core: str
) -> None:
    before = transactions(sensors)
    p = run_driver(sensors, tmp_path, component, "--hardware", "--count", "2", "--interval", "0")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["driver"] for r in rows] == [component] * 2
    # Each read is several transactions (trigger, status poll, data); init more: all through the kernel.
    assert transactions(sensors) - before >= 6
    q = run_driver(sensors, tmp_path, core, "--hardware", "--count", "1", "--interval", "0")
    assert q.returncode == 0, q.stderr
    assert rows[0]["values"] == json.loads(q.stdout.splitlines()[0])["values"]
    assert rows[0]["units"] == json.loads(q.stdout.splitlines()[0])["units"]


def test_a_component_driver_denied_an_address_is_one_line_and_exit_13(
    sensors: Emulator, tmp_path: Path, component_build: Path
) -> None:
    policy = tmp_path / "elsewhere.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x10]\n")
    before = transactions(sensors)
    p = run_driver(
        sensors,
        tmp_path,
        "bme280_rust",
        "--policy",
        str(policy),
        "--device",
        "1:0x76",
        "--hardware",
        "--count",
        "1",
    )
    assert p.returncode == 13
    assert p.stderr.strip() == (
        "edgeagent: error: driver bme280_rust: init: I2C address 0x76 on /dev/i2c-1 is not granted by its "
        f"policy ({policy})"
    )
    assert transactions(sensors) == before  # refused before the bus moved


def test_a_component_driver_whose_part_is_gone_reports_the_nack(
    sensors: Emulator, tmp_path: Path, component_build: Path
) -> None:
    sensors.command("i2c_detach", bus=1, address=0x5F)
    p = run_driver(sensors, tmp_path, "hts221_component", "--hardware", "--count", "1")
    assert p.returncode == 6
    assert p.stderr.strip() == (
        "edgeagent: error: driver hts221_component: init failed: no-acknowledge(address) (ENXIO) at I2C "
        "address 0x5f on /dev/i2c-1"
    )


def test_usb_echo_component_pings_through_libusb(
    emulator: Emulator, tmp_path: Path, component_build: Path
) -> None:
    before = int(emulator.stats()["usb"]["echo"]["urbs"])
    p = run_driver(emulator, tmp_path, "usb_echo_component", "--count", "3", "--interval", "0", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["device"] == f"1209:0001 on bus 1 addr {emulator.usb['echo']['address']}"
        assert row["values"]["size"] == 64
        assert all(row["values"][k] > 0 for k in ("bulk", "interrupt", "control"))
    # 3 rounds + the warm-up round, each a bulk and an interrupt OUT + IN, through usbdevfs.
    assert int(emulator.stats()["usb"]["echo"]["urbs"]) - before >= 16


def test_usb_component_denied_the_device_is_one_line_and_exit_13(
    emulator: Emulator, tmp_path: Path, component_build: Path
) -> None:
    policy = tmp_path / "other-interface.toml"
    policy.write_text("[[usb]]\nvid = 0x1209\npid = 0x0001\ninterface = 1\n")
    p = run_driver(emulator, tmp_path, "usb_echo_component", "--policy", str(policy), "--count", "1")
    assert p.returncode == 13
    assert p.stderr.strip() == (
        "edgeagent: error: driver usb_echo_component: init: access denied by policy to interface 0 of "
        f"1209:0001 on bus 1 addr {emulator.usb['echo']['address']}"
    )
