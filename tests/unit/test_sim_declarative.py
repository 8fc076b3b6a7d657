"""Declarative (TOML) models of I2C parts: register maps, commands with a conversion time, CRC-8, values that
vary over time, strap addresses; and one clear line for a model file with errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.errors import ModelError
from edgeagent.hw.i2c import ErrorCode, I2cError, Read, Write
from edgeagent.hw.sim.declarative import crc8, load_model, parse_model
from edgeagent.hw.sim.i2c_bus import SimI2cBus

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sht31-driver" / "model.toml"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_crc8_matches_the_sensirion_datasheet_vector() -> None:
    assert crc8(b"\xbe\xef") == 0x92


def test_a_command_part_enforces_its_conversion_time_and_appends_crcs() -> None:
    clock = Clock()
    part = load_model(EXAMPLE).part(clock=clock)
    bus = SimI2cBus([part])
    bus.write(0x44, b"\x24\x00")
    clock.t += 0.010  # before the 15 ms conversion time: the part NACKs, as the SHT31 does
    with pytest.raises(I2cError) as e:
        bus.transaction(0x44, [Read(6)])
    assert e.value.code == ErrorCode.NO_ACKNOWLEDGE_ADDRESS and "conversion in progress" in str(e.value)
    clock.t += 0.006
    (data,) = bus.transaction(0x44, [Read(6)])
    assert crc8(data[0:2]) == data[2] and crc8(data[3:5]) == data[5]
    t = -45 + 175 * int.from_bytes(data[0:2], "big") / 65535
    rh = 100 * int.from_bytes(data[3:5], "big") / 65535
    assert t == pytest.approx(22.5, abs=0.01) and rh == pytest.approx(41.0, abs=0.01)
    status = bus.write_read(0x44, b"\xf3\x2d", 3)
    assert status[:2] == b"\x80\x10" and crc8(status[:2]) == status[2]
    with pytest.raises(I2cError) as e:  # a command the part does not know
        bus.write(0x44, b"\x12\x34")
    assert e.value.code == ErrorCode.NO_ACKNOWLEDGE_DATA


def test_a_part_answers_only_at_its_strap_addresses() -> None:
    spec = load_model(EXAMPLE)
    assert spec.place(0x45) == 0x45 and spec.place(0x46) == 0x44
    bus = SimI2cBus([spec.part(spec.place(0x46))])
    with pytest.raises(I2cError) as e:
        bus.write(0x46, b"\x24\x00")
    assert e.value.code == ErrorCode.NO_ACKNOWLEDGE_ADDRESS


REGISTER_PART = """
name = "thermo"
address = 0x48
[values.temperature]
value = 20.0
amplitude = 5.0
period_s = 40.0
[[registers]]
at = 0x00
value = "temperature"
bytes = 2
scale = 256.0
signed = true
[[registers]]
at = 0x02
reset = 0x60A0
bytes = 2
access = "read-write"
[[registers]]
at = 0x0F
reset = [0xBB]
"""


def test_a_register_part_reads_values_that_vary_over_time_and_keeps_writes() -> None:
    import tomllib

    clock = Clock()
    part = parse_model(tomllib.loads(REGISTER_PART)).part(clock=clock)
    bus = SimI2cBus([part])

    def temperature() -> float:
        return int.from_bytes(bus.write_read(0x48, b"\x00", 2), "big", signed=True) / 256

    assert temperature() == 20.0
    clock.t += 10.0  # a quarter period: the top of the sine
    assert temperature() == pytest.approx(25.0, abs=0.01)
    assert bus.write_read(0x48, b"\x0f", 1) == b"\xbb"
    bus.write(0x48, b"\x0f\x00")  # read-only: ignored, like the hardware
    assert bus.write_read(0x48, b"\x0f", 1) == b"\xbb"
    assert bus.write_read(0x48, b"\x02", 2) == b"\x60\xa0"
    bus.write(0x48, b"\x02\x12\x34")
    assert bus.write_read(0x48, b"\x02", 2) == b"\x12\x34"
    assert bus.transaction(0x48, [Write(b"\x02"), Read(2), Read(2)])[1] == b"\x12\x34"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 1\n", "name must be a string"),
        ('name = "x"\n', "missing key 'address'"),
        ('name = "x"\naddress = 0x90\n', "address 0x90 is not a 7-bit device address"),
        ('name = "x"\naddress = 0x40\n', "at least one [[registers]] or [[commands]]"),
        ('name = "x"\naddress = 0x40\n[[registers]]\nat = 1\nvalue = "t"\n', "value 't' is not defined"),
        ('name = "x"\naddress = 0x40\n[[registers]]\nat = 1\nreset = [300]\n', "reset must be bytes"),
        (
            'name = "x"\naddress = 0x40\n[[registers]]\nat = 1\nreset = [1]\ncolour = 2\n',
            "unknown key 'colour'",
        ),
        ('name = "x"\naddress = 0x40\naddresses = [0x41]\n', "address 0x40 is not among addresses"),
        (
            'name = "x"\naddress = 0x40\n[[commands]]\nat = 0x2400\nresult = [{ reset = [1] }]\n',
            "at 0x2400 does not fit in pointer_bytes = 1",
        ),
        ('name = "x"\naddress = 0x40\n[[commands]]\nat = 1\nbusy = "wait"\nresult = []\n', "busy must be"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_a_model_with_errors_is_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "model.toml"
    path.write_text(text)
    with pytest.raises(ModelError) as e:
        load_model(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_python_model_from_the_entry_point_group_simulates_a_bundles_part(
    tmp_path: Path, wasm_build
) -> None:
    """A part the TOML format cannot describe: a Python class registered under edgeagent.sim_models by an
    installed package (here a dist-info on PYTHONPATH), named in the bundle as model = "entry-point:NAME"."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "fakesim-0.1.dist-info").mkdir(parents=True)
    (site / "fakesim-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakesim\nVersion: 0.1\n"
    )
    (site / "fakesim-0.1.dist-info" / "entry_points.txt").write_text(
        "[edgeagent.sim_models]\nthermo = fakesim:Thermo\n"
    )
    (site / "fakesim.py").write_text(
        "from edgeagent.hw.sim.tmp102 import Tmp102\n\n"
        "class Thermo(Tmp102):\n    name = 'thermo'\n\n"
        "    def __init__(self, address):\n        super().__init__(address, temperature=31.25)\n"
    )
    b = tmp_path / "bundle"
    b.mkdir()
    shutil.copyfile(wasm_build / "tmp102.wasm", b / "tmp102.wasm")
    (b / "policy.toml").write_text("[[i2c]]\nbus = 1\naddresses = [0x48]\n")
    (b / "bundle.toml").write_text(
        '[bundle]\nname = "thermo"\nkind = "driver"\nabi = 1\nmodule = "tmp102.wasm"\n'
        'policy = "policy.toml"\nmodel = "entry-point:thermo"\n[driver]\ndefault_address = 0x48\n'
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{site}"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "--state-dir",
            str(tmp_path / "s"),
            "run-driver",
            str(b),
            "--sim",
            "-n",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["values"] == {"temperature": 31.25}
    (b / "bundle.toml").write_text(
        (b / "bundle.toml").read_text().replace("entry-point:thermo", "entry-point:nope")
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "--state-dir",
            str(tmp_path / "s"),
            "run-driver",
            str(b),
            "--sim",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 78 and r.stderr.count("\n") == 1
    assert "no simulated-device model 'nope' in the edgeagent.sim_models entry points" in r.stderr
