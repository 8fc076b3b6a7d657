"""The unmodified smbus2 stack against a umockdev-emulated /dev/i2c-1 whose parts are the sim models."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgeagent.hw.emulation.client import Emulator
from edgeagent.hw.sim.clock import SimClock

pytestmark = pytest.mark.integration

SENSORS = {
    "i2c": [
        {"bus": 1, "parts": [{"model": "tmp102", "address": 0x48}, {"model": "hts221"}, {"model": "bme280"}]}
    ]
}


@pytest.fixture
def sensors(emulator_factory: Callable[[Mapping[str, Any]], Emulator]) -> Emulator:
    return emulator_factory(SENSORS)


def test_smbus2_reads_registers_and_runs_combined_transactions(sensors: Emulator) -> None:
    got = sensors.run_python(
        textwrap.dedent("""
        import json
        from smbus2 import SMBus, i2c_msg
        with SMBus(1) as bus:
            who = bus.read_byte_data(0x5F, 0x0F)                # HTS221 WHO_AM_I
            chip = bus.read_byte_data(0x76, 0xD0)               # BME280 chip id
            word = bus.read_word_data(0x48, 0x01)               # TMP102 config, SMBus word (LSB first)
            block = bus.read_i2c_block_data(0x48, 0x01, 2)      # the same register, wire order
            bus.write_i2c_block_data(0x48, 0x02, [0x12, 0x30])  # T_LOW
            wr, rd = i2c_msg.write(0x48, [0x02]), i2c_msg.read(0x48, 2)
            bus.i2c_rdwr(wr, rd)                                # one combined transaction
        print(json.dumps({"who": who, "chip": chip, "word": word, "block": block, "tlow": list(rd)}))
    """)
    )
    assert got == {"who": 0xBC, "chip": 0x60, "word": 0xA060, "block": [0x60, 0xA0], "tlow": [0x12, 0x30]}


def test_absent_address_is_enxio_and_smbus2_bus_maps_it(sensors: Emulator) -> None:
    got = sensors.run_python(
        textwrap.dedent("""
        import json
        from smbus2 import SMBus
        from edgeagent.hw.i2c import I2cError, Read, Write
        from edgeagent.hw.smbus2_bus import Smbus2Bus
        out = {}
        with SMBus(1) as bus:
            try:
                bus.read_byte_data(0x49, 0)
            except OSError as e:
                out["errno"] = e.errno
        bus = Smbus2Bus(1)
        out["temp"] = list(bus.transaction(0x48, [Write(b"\\x00"), Read(2)])[0])
        try:
            bus.transaction(0x49, [Read(1)])
        except I2cError as e:
            out["code"] = e.code.value
        print(json.dumps(out))
    """)
    )
    assert got["errno"] == 6
    assert got["code"] == "no-acknowledge(address)"
    assert len(got["temp"]) == 2


def test_injected_bus_faults_reach_smbus2_as_errno(sensors: Emulator) -> None:
    sensors.command("i2c_inject", bus=1, address=0x48, code="arbitration-loss")
    got = sensors.run_python(
        textwrap.dedent("""
        import json
        from smbus2 import SMBus
        with SMBus(1) as bus:
            try:
                bus.read_byte_data(0x48, 0)
                first = 0
            except OSError as e:
                first = e.errno
            second = bus.read_byte_data(0x48, 1)
        print(json.dumps({"first": first, "second": second}))
    """)
    )
    assert got == {"first": 11, "second": 0x60}


def test_native_sensor_twins_read_through_smbus2(sensors: Emulator) -> None:
    got = sensors.run_python(
        textwrap.dedent("""
        import json
        from smbus2 import SMBus
        from edgeagent.drivers.native.tmp102 import Tmp102Native
        with SMBus(1) as bus:
            t = Tmp102Native(bus, 0x48)
            t.init()
            print(json.dumps(t.read()))
    """)
    )
    assert got == {"temperature": 23.5}


def test_emulated_parts_keep_their_datasheet_time(
    emulator_factory: Callable[[Mapping[str, Any]], Emulator], tmp_path: Path
) -> None:
    """The emulator's parts are the sim models with their conversion times: through the real smbus2 stack a
    read before a conversion ends gets the chip's not-ready answer, a read after it the value. The parts run
    on a frozen shared clock only the program's skipped sleeps move, so "before" and "after" are exact."""
    clock_file = tmp_path / "clock"
    SimClock(path=clock_file).freeze()
    emu = emulator_factory({**SENSORS, "clock_file": str(clock_file)})
    got = emu.run_python(
        textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from smbus2 import SMBus, i2c_msg
        from edgeagent.hw.sim.clock import SimClock

        clock = SimClock(lambda _: None, path=Path(sys.argv[1]))

        def read(bus, address, register, n):
            w, r = i2c_msg.write(address, [register]), i2c_msg.read(address, n)
            bus.i2c_rdwr(w, r)
            return list(r)

        def write(bus, address, *data):
            bus.i2c_rdwr(i2c_msg.write(address, list(data)))

        out = {}
        with SMBus(1) as bus:
            out["tmp102 early"] = read(bus, 0x48, 0x00, 2)
            write(bus, 0x76, 0xF2, 0x01)
            write(bus, 0x76, 0xF4, 0x25)                 # BME280 forced, x1/x1/x1: 9.3 ms
            out["bme280 status early"] = read(bus, 0x76, 0xF3, 1)[0]
            out["bme280 data early"] = read(bus, 0x76, 0xF7, 8)
            write(bus, 0x5F, 0x20, 0x84)
            write(bus, 0x5F, 0x21, 0x01)                 # HTS221 one-shot
            out["hts221 status early"] = read(bus, 0x5F, 0x27, 1)[0]
            clock.sleep(0.03)
            out["tmp102 late"] = read(bus, 0x48, 0x00, 2)
            out["bme280 status late"] = read(bus, 0x76, 0xF3, 1)[0]
            out["bme280 data late"] = read(bus, 0x76, 0xF7, 8)
            out["hts221 status late"] = read(bus, 0x5F, 0x27, 1)[0]
        print(json.dumps(out))
    """),
        [str(clock_file)],
    )
    assert got["tmp102 early"] == [0, 0]  # 0 degC until the first conversion after power-on
    assert got["tmp102 late"] == [0x17, 0x80]  # 23.5 degC
    assert got["bme280 status early"] & 0x08 and not got["bme280 status late"] & 0x08
    assert got["bme280 data early"] == [0x80, 0, 0, 0x80, 0, 0, 0x80, 0]
    assert got["bme280 data late"] != got["bme280 data early"]
    assert got["hts221 status early"] & 0x03 == 0 and got["hts221 status late"] & 0x03 == 0x03
