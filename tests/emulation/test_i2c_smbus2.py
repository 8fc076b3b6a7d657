"""The unmodified smbus2 stack against a umockdev-emulated /dev/i2c-1 whose parts are the sim models."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from edgeagent.hw.emulation.client import Emulator

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
