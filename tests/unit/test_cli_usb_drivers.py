"""`edgeagent run-driver` for USB drivers on the in-process simulated bus: readings, the table, bad input."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from edgeagent.cli.drivers import _table
from edgeagent.cli.main import main
from edgeagent.config import AgentConfig
from edgeagent.drivers import loader
from edgeagent.drivers.usb_session import UsbSelector, open_usb_session, parse_usb_device
from edgeagent.errors import HardwareError
from edgeagent.hw.sim.usb_bus import SimUsbBus
from edgeagent.hw.sim.usb_echo import EchoDevice
from edgeagent.hw.sim.usb_storage import MassStorageDevice
from edgeagent.wasm.cache import ModuleCache


@pytest.fixture
def cli(tmp_path, wasm_build, monkeypatch, capsys):
    monkeypatch.setenv("EDGEAGENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGEAGENT_POLICIES_DIR", str(tmp_path / "policies"))
    monkeypatch.delenv("EDGEAGENT_CONFIG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as ei:
            main(list(args))
        out, err = capsys.readouterr()
        return ei.value.code, out, err

    return run


@pytest.fixture
def config(tmp_path, wasm_build) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")


def test_echo_readings_are_ping_rounds(cli):
    code, out, err = cli("run-driver", "usb_echo", "--sim", "--count", "3", "--interval", "0", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["driver"] == "usb_echo"
        assert row["device"] == "1209:0001 on bus 1 addr 2"
        assert set(row["values"]) == {"size", "bulk", "interrupt", "control"}
        assert row["values"]["size"] == 64
        assert all(row["values"][k] > 0 for k in ("bulk", "interrupt", "control"))
        assert row["units"] == {"size": "B", "bulk": "us", "interrupt": "us", "control": "us"}


def test_echo_size_and_device_by_bus_address(cli):
    code, out, err = cli(
        "run-driver", "usb_echo", "--sim", "--device", "/dev/bus/usb/001/002", "--size", "512", "--count", "2"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["values"]["size"] for r in rows] == [512, 512]


def test_storage_header_then_block_checks(cli):
    code, out, err = cli("run-driver", "usb_storage", "--sim", "--count", "3", "--interval", "0")
    assert code == 0, err
    header, *rows = [json.loads(line) for line in out.splitlines()]
    assert header["inquiry"] == {"vendor": "EDGEAGNT", "product": "Simulated disk", "revision": "0100"}
    assert header["capacity"] == {"blocks": 8192, "block_size": 512, "bytes": 4 << 20}
    assert [r["values"]["lba"] for r in rows] == [0, 128, 256]
    assert all(r["values"]["bytes"] == 65536 for r in rows)
    assert all(r["values"]["read"] > 0 and r["values"]["write"] > 0 for r in rows)
    assert rows[0]["units"] == {"lba": "", "bytes": "B", "write": "MB/s", "read": "MB/s"}


def test_block_check_restores_what_was_on_the_disk(config, runtime, wasm_build):
    bus = SimUsbBus()
    bus.plug(EchoDevice())
    info = bus.plug(MassStorageDevice(size=1 << 20))
    disk = bus.model(info)
    assert isinstance(disk, MassStorageDevice)
    disk.media[:] = bytes(range(256)) * (len(disk.media) // 256)
    before = bytes(disk.media)
    source = loader.resolve("usb_storage", config)
    s = open_usb_session(
        source, config, sim=True, size=4096, runtime=runtime, cache=ModuleCache(None), backend=bus
    )
    try:
        rows = [s.read() for _ in range(3)]
    finally:
        s.close()
    assert [r["values"]["lba"] for r in rows] == [0, 8, 16]
    assert bytes(disk.media) == before


def test_unplugged_device_mid_run_is_no_device(config, runtime, wasm_build):
    bus = SimUsbBus()
    info = bus.plug(EchoDevice())
    source = loader.resolve("usb_echo", config)
    s = open_usb_session(source, config, sim=True, runtime=runtime, cache=ModuleCache(None), backend=bus)
    try:
        s.read()
        bus.unplug(info)
        with pytest.raises(HardwareError, match=r"^driver usb_echo: bulk ping: usb no-device"):
            s.read()
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["usb_echo", "usb_storage"])
def test_live_table_shows_the_readings(config, runtime, wasm_build, kind):
    source = loader.resolve(kind, config)
    s = open_usb_session(source, config, sim=True, runtime=runtime, cache=ModuleCache(None))
    try:
        rows = [s.read(), s.read()]
        buf = io.StringIO()
        Console(file=buf, width=200).print(_table(s, rows))
    finally:
        s.close()
    text = buf.getvalue()
    assert "(simulated)" in text
    if kind == "usb_echo":
        assert "bulk [us]" in text and "control [us]" in text and "64" in text
    else:
        assert "EDGEAGNT Simulated disk" in text and "8192 blocks" in text and "read [MB/s]" in text


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (
            ["run-driver", "usb_echo", "--sim", "--device", "1209:0002", "--count", "1"],
            13,
            "driver usb_echo: USB device 1209:0002 on bus 1 addr 3 is not granted by its policy (",
        ),
        (
            ["run-driver", "usb_echo", "--sim", "--device", "1/9", "--count", "1"],
            6,
            "driver usb_echo: no USB device 001/009 is attached",
        ),
        (["run-driver", "usb_echo", "--sim", "--device", "zz"], 6, "bad USB device 'zz': expected VID:PID"),
        (
            ["run-driver", "usb_echo", "--sim", "--size", "5000", "--count", "1"],
            6,
            "driver usb_echo: ping size 5000 is outside 1-4096 bytes",
        ),
        (
            ["run-driver", "usb_storage", "--sim", "--size", "1000", "--count", "1"],
            6,
            "driver usb_storage: check size 1000 must be a multiple of the 512-byte block",
        ),
        (
            ["run-driver", "tmp102", "--sim", "--size", "8", "--count", "1"],
            5,
            "driver tmp102: --size applies to USB drivers only",
        ),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(cli, args, exit_code, message):
    code, out, err = cli(*args)
    assert code == exit_code
    (line,) = err.strip().splitlines()
    assert line.startswith(f"edgeagent: error: {message}")
    assert out == ""


def test_policy_not_granting_the_drivers_device_is_access_denied(cli, tmp_path):
    policy = tmp_path / "disk-only.toml"
    policy.write_text("[[usb]]\nvid = 0x1209\npid = 0x0002\n")
    code, _, err = cli("run-driver", "usb_echo", "--sim", "--policy", str(policy), "--count", "1")
    assert code == 13
    assert (
        err.strip()
        == "edgeagent: error: driver usb_echo: init: access denied by policy to USB device 1209:0001"
    )


def test_usb_module_by_path_runs_with_its_policy(cli, tmp_path, wasm_build):
    policy = tmp_path / "echo.toml"
    policy.write_text("[[usb]]\nvid = 0x1209\npid = 0x0001\ninterface = 0\n")
    code, out, err = cli(
        "run-driver", str(wasm_build / "usb_echo.wasm"), "--policy", str(policy), "--sim", "--count", "1"
    )
    assert code == 0, err
    assert json.loads(out)["driver"] == "usb_echo"


@pytest.mark.parametrize(
    ("spec", "selector"),
    [
        ("1209:0001", UsbSelector(vid_pid=(0x1209, 1))),
        ("abcd:EF01", UsbSelector(vid_pid=(0xABCD, 0xEF01))),
        ("1/5", UsbSelector(bus_address=(1, 5))),
        ("001/005", UsbSelector(bus_address=(1, 5))),
        ("/dev/bus/usb/002/127", UsbSelector(bus_address=(2, 127))),
    ],
)
def test_parse_usb_device(spec, selector):
    assert parse_usb_device(spec) == selector


@pytest.mark.parametrize("spec", ["", "1209", "1209:00001", "1/0", "1/128", "/dev/bus/usb/1", "x:y"])
def test_parse_usb_device_rejects(spec):
    with pytest.raises(HardwareError, match="bad USB device"):
        parse_usb_device(spec)
