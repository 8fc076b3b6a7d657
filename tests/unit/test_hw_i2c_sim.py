"""I2C error mapping, the smbus2 backend's failure modes, and the simulated parts (pure models)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import HardwareError
from edgeagent.hw.i2c import (
    CODE_TO_ERRNO,
    ERRNO_TO_CODE,
    ErrorCode,
    I2cError,
    Read,
    Write,
    error_from_oserror,
)
from edgeagent.hw.sim.bme280 import Bme280
from edgeagent.hw.sim.clock import SimClock
from edgeagent.hw.sim.hts221 import Hts221
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.sim.i2c_device import RegisterDevice, smbus_ops
from edgeagent.hw.sim.pcf8574_lcd import Pcf8574Lcd
from edgeagent.hw.sim.tmp102 import Tmp102
from edgeagent.hw.smbus2_bus import Smbus2Bus, parse_bus


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.ENXIO, ErrorCode.NO_ACKNOWLEDGE_ADDRESS),
        (errno.EREMOTEIO, ErrorCode.NO_ACKNOWLEDGE_UNKNOWN),
        (errno.EAGAIN, ErrorCode.ARBITRATION_LOSS),
        (errno.ETIMEDOUT, ErrorCode.OTHER),
        (errno.EOVERFLOW, ErrorCode.OVERRUN),
        (errno.EIO, ErrorCode.BUS),
        (errno.ENODEV, ErrorCode.OTHER),
    ],
)
def test_errno_maps_to_wit_error_code(err, code):
    e = error_from_oserror(OSError(err, "x"), 0x48)
    assert e.code is code
    assert isinstance(e, HardwareError)
    assert str(e).startswith(f"i2c address 0x48: {code.value} ({errno.errorcode[err]})")


def test_every_code_maps_back_to_an_errno_that_maps_to_a_compatible_code():
    for code, err in CODE_TO_ERRNO.items():
        back = ERRNO_TO_CODE[err]
        # Data and address NACKs both travel as EREMOTEIO/ENXIO; the family is preserved.
        assert back.value.split("(")[0] == code.value.split("(")[0]


@pytest.mark.parametrize(("spec", "n"), [(1, 1), ("3", 3), ("i2c-2", 2), ("/dev/i2c-10", 10)])
def test_parse_bus(spec, n):
    assert parse_bus(spec) == n


def test_parse_bus_rejects_garbage():
    with pytest.raises(HardwareError, match="not an I2C bus"):
        parse_bus("spi0")


def test_opening_a_missing_bus_is_a_one_line_error():
    with pytest.raises(HardwareError, match=r"^no I2C bus /dev/i2c-250$"):
        Smbus2Bus(250)


def test_sim_bus_nacks_absent_addresses_and_unplugged_parts():
    bus = SimI2cBus([Tmp102()])
    with pytest.raises(I2cError) as ei:
        bus.transaction(0x49, [Read(1)])
    assert ei.value.code is ErrorCode.NO_ACKNOWLEDGE_ADDRESS
    bus.detach(0x48)
    with pytest.raises(I2cError):
        bus.transaction(0x48, [Read(2)])
    with pytest.raises(ValueError, match="already has"):
        SimI2cBus([Tmp102(), Tmp102()])


def test_sim_bus_injected_faults_are_one_shot():
    bus = SimI2cBus([Tmp102()])
    bus.inject(0x48, ErrorCode.OTHER, count=2)
    for _ in range(2):
        with pytest.raises(I2cError, match="other"):
            bus.transaction(0x48, [Write(b"\x00"), Read(2)])
    assert bus.transaction(0x48, [Write(b"\x01"), Read(2)]) == [b"\x60\xa0"]


@given(st.floats(min_value=-55, max_value=127.9))
def test_tmp102_encodes_temperature_in_12_bit_twos_complement(celsius):
    clock = SimClock(lambda _: None)
    t = Tmp102(temperature=celsius, clock=clock.now)
    clock.sleep(0.026)  # the first conversion after power-on
    (raw,) = t.transfer([Write(b"\x00"), Read(2)])
    value = int.from_bytes(raw, "big", signed=True) >> 4
    assert abs(value * 0.0625 - celsius) <= 0.0625 / 2 + 1e-9


def test_tmp102_register_writes_and_pointer():
    t = Tmp102()
    t.transfer([Write(b"\x02\x12\x34")])
    assert t.transfer([Write(b"\x02"), Read(4)]) == [b"\x12\x34\x12\x34"]
    t.transfer([Write(b"\x00\xff\xff")])  # temperature is read-only
    assert t.temperature == 23.5


def test_register_device_auto_increment_and_smbus_ops():
    d = RegisterDevice(0x50)
    d.transfer(smbus_ops(False, 0x10, "i2c_block_data", b"\x01\x02\x03"))
    assert d.transfer(smbus_ops(True, 0x10, "i2c_block_data", bytes(3))) == [b"\x01\x02\x03"]
    assert d.transfer(smbus_ops(True, 0x11, "byte_data")) == [b"\x02"]
    assert d.transfer(smbus_ops(True, 0x10, "word_data")) == [b"\x01\x02"]
    with pytest.raises(ValueError):
        smbus_ops(True, 0, "block_process_call")


def test_hts221_who_am_i_one_shot_and_auto_increment():
    clock = SimClock(lambda _: None)
    h = Hts221(temperature=30.0, humidity=60.0, clock=clock.now)
    assert h.transfer([Write(b"\x0f"), Read(1)]) == [b"\xbc"]
    h.transfer([Write(b"\x21\x01")])  # powered off: no conversion
    assert h.conversions == 0
    h.transfer([Write(b"\x20\x84")])
    h.transfer([Write(b"\x21\x01")])
    clock.sleep(0.01)
    assert h.transfer([Write(b"\x27"), Read(1)]) == [b"\x03"]
    assert h.conversions == 1
    assert h.transfer([Write(b"\x27"), Read(1)]) == [b"\x03"]
    with_ai = h.transfer([Write(bytes([0x28 | 0x80])), Read(4)])[0]
    without = h.transfer([Write(b"\x28"), Read(4)])[0]
    assert with_ai[0] == without[0] and len(set(without)) == 1


@settings(max_examples=25, deadline=None)
@given(
    st.floats(min_value=-20, max_value=60),
    st.floats(min_value=600, max_value=1100),
    st.floats(min_value=5, max_value=95),
)
def test_bme280_raw_values_invert_the_datasheet_compensation(t, p, h):
    from edgeagent.drivers.native.bme280 import Bme280Native
    from edgeagent.drivers.native.simbus import SimSMBus

    clock = SimClock(lambda _: None)
    dev = Bme280(temperature=t, pressure_hpa=p, humidity=h, clock=clock.now)
    drv = Bme280Native(SimSMBus(SimI2cBus([dev])), 0x76, sleep=clock.sleep)
    drv.init()
    got = drv.read()
    assert got["temperature"] == pytest.approx(t, abs=0.011)
    assert got["pressure"] == pytest.approx(p, abs=0.02)
    assert got["humidity"] == pytest.approx(h, abs=0.05)


def test_bme280_reset_and_skipped_measurements():
    clock = SimClock(lambda _: None)
    dev = Bme280(clock=clock.now)
    assert dev.transfer([Write(b"\xd0"), Read(1)]) == [b"\x60"]
    dev.transfer([Write(b"\xe0\xb6")])
    assert dev.resets == 1
    dev.transfer([Write(b"\xf4\x01")])  # forced, all oversampling off: "skipped" values
    clock.sleep(dev.measure_time())
    assert dev.transfer([Write(b"\xf7"), Read(8)]) == [b"\x80\x00\x00\x80\x00\x00\x80\x00"]


def test_lcd_model_follows_the_4_bit_protocol():
    clock = SimClock(lambda _: None)
    lcd = Pcf8574Lcd(clock=clock.now)

    def nibble(n, rs=0):
        v = (n << 4) | rs | 0x08
        return bytes([v | 0x04, v])

    def byte(b, rs=0):
        return nibble(b >> 4, rs) + nibble(b & 0xF, rs)

    clock.sleep(0.05)  # power-on
    lcd.transfer([Write(nibble(3))])
    clock.sleep(0.0045)  # the first function set
    lcd.transfer([Write(nibble(3) * 2 + nibble(2) + byte(0x28) + byte(0x0C) + byte(0x01))])
    clock.sleep(0.002)  # clear display
    seq = byte(0x06) + b"".join(byte(c, 1) for c in b"Hi") + byte(0xC0) + byte(ord("!"), 1)
    lcd.transfer([Write(seq)])
    assert lcd.lcd.four_bit and lcd.lcd.two_lines and lcd.lcd.display_on and lcd.backlight
    assert lcd.lines() == ["Hi" + " " * 14, "!" + " " * 15]
    assert lcd.transfer([Read(1)])[0][0] & 0x08
