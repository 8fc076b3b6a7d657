"""The bundled simulated parts keep their datasheet's time: read too early, get what the chip gives then.

Each part runs on a SimClock whose sleep does not really wait, so the tests step time exactly. For every part
there is a bus sequence (or a driver) that reads before the conversion is done and gets the not-ready answer,
and one that waits and gets the right reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.native import NATIVE_DRIVERS
from edgeagent.drivers.native.simbus import SimSMBus
from edgeagent.drivers.session import open_session
from edgeagent.hw.i2c import Read, Write
from edgeagent.hw.sim import bme280, hts221, pcf8574_lcd, tmp102
from edgeagent.hw.sim.bme280 import Bme280
from edgeagent.hw.sim.clock import Conversion, SimClock, new_part
from edgeagent.hw.sim.hts221 import Hts221
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.sim.pcf8574_lcd import Pcf8574Lcd
from edgeagent.hw.sim.tmp102 import Tmp102


def stepped() -> SimClock:
    """A clock that moves only when told: its sleep skips the wait and the skipped time is added."""
    return SimClock(lambda _: None)


class FrozenClock:
    """Time that never moves: what a part sees from a driver that never waits."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def reg(part: object, register: int, n: int = 1) -> bytes:
    return part.transfer([Write(bytes([register])), Read(n)])[0]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the clock itself
def test_sim_clock_adds_only_the_part_of_a_sleep_that_did_not_pass():
    clock = stepped()
    t = clock.now()
    clock.sleep(5.0)
    assert clock.now() - t >= 5.0
    real = SimClock()  # a real sleep: nothing is added, time is not counted twice
    real.sleep(0.002)
    assert real.offset < 0.002


def test_sim_clock_file_is_shared(tmp_path: Path):
    a = SimClock(lambda _: None, path=tmp_path / "clock")
    b = SimClock(path=tmp_path / "clock")  # another process's view, in the emulator
    t = b.now()
    a.sleep(3.0)
    assert b.offset == a.offset and b.now() - t >= 3.0
    a.close()
    b.close()


def test_a_frozen_clock_moves_only_by_sleeps(tmp_path: Path):
    a = SimClock(path=tmp_path / "clock")
    a.freeze()
    b = SimClock(lambda _: None, path=tmp_path / "clock")
    t = a.now()
    a.sleep(0.001)  # a real sleep: counted in full, as the real time no longer is
    b.sleep(0.5)
    assert a.now() - t == pytest.approx(0.501) and b.now() == a.now()


def test_conversion_is_done_once_when_its_time_is_up():
    clock = stepped()
    c = Conversion(clock.now)
    assert not c.busy and not c.done()
    c.start(0.01)
    assert c.busy and not c.done()
    clock.sleep(0.01)
    assert not c.busy and c.done() and not c.done()


def test_new_part_passes_the_clock_only_to_factories_that_take_one():
    frozen = FrozenClock()
    part = new_part(registry.get("tmp102").sim_model, 0x49, frozen.now)
    assert part.address == 0x49 and part.conversion.clock == frozen.now
    assert new_part(lambda address: ("no clock", address), 0x48, frozen.now) == ("no clock", 0x48)


# ---------------------------------------------------------------------- BME280
def test_bme280_conversion_time_follows_the_oversampling_settings():
    dev = Bme280(clock=stepped().now)
    dev.transfer([Write(bytes([bme280.CTRL_HUM, 0x01]))])
    dev.transfer([Write(bytes([bme280.CTRL_MEAS, (1 << 5) | (1 << 2)]))])
    assert dev.measure_time() == pytest.approx(9.3e-3)  # x1/x1/x1: datasheet 9.1
    dev.transfer([Write(bytes([bme280.CTRL_HUM, 0x00]))])
    dev.transfer([Write(bytes([bme280.CTRL_MEAS, 5 << 5]))])
    assert dev.measure_time() == pytest.approx((1.25 + 2.3 * 16) / 1000)  # x16 temperature only


def test_bme280_read_before_the_forced_conversion_ends_gets_measuring_and_reset_values():
    clock = stepped()
    dev = Bme280(temperature=25.0, clock=clock.now)
    dev.transfer([Write(bytes([bme280.RESET, 0xB6]))])
    dev.transfer([Write(bytes([bme280.CTRL_HUM, 0x01]))])
    dev.transfer([Write(bytes([bme280.CTRL_MEAS, (1 << 5) | (1 << 2) | 1]))])  # forced, x1/x1/x1
    clock.sleep(9.0e-3)  # less than t_measure,max (9.3 ms)
    assert reg(dev, bme280.STATUS)[0] & bme280.STATUS_MEASURING
    assert reg(dev, bme280.CTRL_MEAS)[0] & 0x03 == 1  # still in forced mode
    assert reg(dev, bme280.PRESS_MSB, 8) == bme280.DATA_RESET  # 0x80000, 0x80000, 0x8000
    clock.sleep(0.4e-3)
    assert not reg(dev, bme280.STATUS)[0] & bme280.STATUS_MEASURING
    assert reg(dev, bme280.CTRL_MEAS)[0] & 0x03 == 0  # back to sleep
    adc_t, adc_p, adc_h = dev.raw_values()
    want = bme280._adc20(adc_p) + bme280._adc20(adc_t) + adc_h.to_bytes(2, "big")
    assert reg(dev, bme280.PRESS_MSB, 8) == want


def test_bme280_driver_that_does_not_wait_times_out_and_one_that_waits_reads_the_values():
    dev = Bme280(temperature=25.0, pressure_hpa=990.0, humidity=55.0, clock=FrozenClock().now)
    hasty = NATIVE_DRIVERS["bme280"](SimSMBus(SimI2cBus([dev])), 0x76, sleep=lambda _: None)
    hasty.init()
    with pytest.raises(OSError, match="timed out"):
        hasty.read()
    clock = stepped()
    dev = Bme280(temperature=25.0, pressure_hpa=990.0, humidity=55.0, clock=clock.now)
    patient = NATIVE_DRIVERS["bme280"](SimSMBus(SimI2cBus([dev])), 0x76, sleep=clock.sleep)
    patient.init()
    got = patient.read()
    assert got["temperature"] == pytest.approx(25.0, abs=0.011)
    assert got["pressure"] == pytest.approx(990.0, abs=0.02)
    assert got["humidity"] == pytest.approx(55.0, abs=0.05)


# ---------------------------------------------------------------------- HTS221
def test_hts221_one_shot_before_the_conversion_ends_gets_status_not_ready_and_old_outputs():
    clock = stepped()
    h = Hts221(temperature=30.0, humidity=60.0, clock=clock.now)
    h.transfer([Write(bytes([hts221.CTRL_REG1, 0x84]))])  # power on, BDU
    h.transfer([Write(bytes([hts221.CTRL_REG2, 0x01]))])  # ONE_SHOT
    assert reg(h, hts221.STATUS_REG)[0] & 0x03 == 0
    assert reg(h, hts221.CTRL_REG2)[0] & 0x01  # ONE_SHOT still set: converting
    assert reg(h, hts221.HUMIDITY_OUT_L | hts221.AUTO_INCREMENT, 4) == bytes(4)  # nothing converted yet
    clock.sleep(hts221.CONVERSION_S)
    assert reg(h, hts221.STATUS_REG)[0] & 0x03 == 0x03
    assert not reg(h, hts221.CTRL_REG2)[0] & 0x01
    first = reg(h, hts221.HUMIDITY_OUT_L | hts221.AUTO_INCREMENT, 4)
    assert first != bytes(4) and reg(h, hts221.STATUS_REG)[0] & 0x03 == 0  # reading the MSBs cleared them
    h.temperature = 35.0
    h.transfer([Write(bytes([hts221.CTRL_REG2, 0x01]))])
    clock.sleep(hts221.CONVERSION_S / 2)
    assert reg(h, hts221.STATUS_REG)[0] & 0x03 == 0
    assert reg(h, hts221.HUMIDITY_OUT_L | hts221.AUTO_INCREMENT, 4) == first  # the previous conversion's
    clock.sleep(hts221.CONVERSION_S / 2)
    assert reg(h, hts221.STATUS_REG)[0] & 0x03 == 0x03
    assert reg(h, hts221.HUMIDITY_OUT_L | hts221.AUTO_INCREMENT, 4) != first


def test_hts221_driver_that_does_not_wait_times_out_and_one_that_waits_reads_the_values():
    dev = Hts221(temperature=30.0, humidity=60.0, clock=FrozenClock().now)
    hasty = NATIVE_DRIVERS["hts221"](SimSMBus(SimI2cBus([dev])), 0x5F, sleep=lambda _: None)
    hasty.init()
    with pytest.raises(OSError, match="timed out"):
        hasty.read()
    clock = stepped()
    dev = Hts221(temperature=30.0, humidity=60.0, clock=clock.now)
    patient = NATIVE_DRIVERS["hts221"](SimSMBus(SimI2cBus([dev])), 0x5F, sleep=clock.sleep)
    patient.init()
    got = patient.read()
    assert got["temperature"] == pytest.approx(30.0, abs=0.05)
    assert got["humidity"] == pytest.approx(60.0, abs=0.05)


# ---------------------------------------------------------------------- TMP102
def test_tmp102_reads_0_degc_until_the_first_conversion_after_power_on():
    clock = stepped()
    t = Tmp102(temperature=23.5, clock=clock.now)
    clock.sleep(tmp102.CONVERSION_S * 0.9)
    assert reg(t, tmp102.REG_TEMPERATURE, 2) == b"\x00\x00"
    clock.sleep(tmp102.CONVERSION_S * 0.1)
    assert int.from_bytes(reg(t, tmp102.REG_TEMPERATURE, 2), "big") >> 4 == round(23.5 / 0.0625)


def test_tmp102_one_shot_in_shutdown_reads_os_0_and_the_old_value_until_done():
    clock = stepped()
    t = Tmp102(temperature=20.0, clock=clock.now)
    clock.sleep(tmp102.CONVERSION_S)
    t.transfer([Write(bytes([tmp102.REG_CONFIG, 0x61, 0xA0]))])  # SD: shutdown
    t.temperature = 30.0
    clock.sleep(1.0)
    assert int.from_bytes(reg(t, tmp102.REG_TEMPERATURE, 2), "big") >> 4 == 20 * 16  # no conversions
    t.transfer([Write(bytes([tmp102.REG_CONFIG, 0xE1, 0xA0]))])  # OS: one-shot
    clock.sleep(tmp102.CONVERSION_S / 2)
    assert not reg(t, tmp102.REG_CONFIG, 2)[0] & 0x80  # OS reads 0 while converting
    assert int.from_bytes(reg(t, tmp102.REG_TEMPERATURE, 2), "big") >> 4 == 20 * 16
    clock.sleep(tmp102.CONVERSION_S / 2)
    assert reg(t, tmp102.REG_CONFIG, 2)[0] & 0x80  # OS reads 1: done
    assert int.from_bytes(reg(t, tmp102.REG_TEMPERATURE, 2), "big") >> 4 == 30 * 16


def test_tmp102_driver_that_does_not_wait_after_power_on_reads_0_and_one_that_waits_reads_the_value():
    bus = SimI2cBus([Tmp102(temperature=23.5, clock=FrozenClock().now)])
    hasty = NATIVE_DRIVERS["tmp102"](SimSMBus(bus), 0x48, sleep=lambda _: None)
    hasty.init()
    assert hasty.read() == {"temperature": 0.0}
    clock = stepped()
    bus = SimI2cBus([Tmp102(temperature=23.5, clock=clock.now)])
    patient = NATIVE_DRIVERS["tmp102"](SimSMBus(bus), 0x48, sleep=clock.sleep)
    patient.init()
    assert patient.read() == {"temperature": 23.5}


# ---------------------------------------------------------------------- HD44780 on a PCF8574
def nibble(n: int, rs: int = 0) -> bytes:
    v = (n << 4) | rs | pcf8574_lcd.BACKLIGHT
    return bytes([v | pcf8574_lcd.E, v])


def byte(b: int, rs: int = 0) -> bytes:
    return nibble(b >> 4, rs) + nibble(b & 0xF, rs)


def init_lcd(lcd: Pcf8574Lcd, clock: SimClock) -> None:
    clock.sleep(0.05)
    for wait in (4.5e-3, 150e-6, 150e-6):
        lcd.transfer([Write(nibble(3))])
        clock.sleep(wait)
    lcd.transfer([Write(nibble(2) + byte(0x28) + byte(0x0C) + byte(0x01))])
    clock.sleep(2e-3)
    lcd.transfer([Write(byte(0x06))])


def test_lcd_ignores_the_interface_during_power_on_and_the_first_function_set():
    clock = stepped()
    lcd = Pcf8574Lcd(clock=clock.now)
    lcd.transfer([Write(nibble(3))])  # at once after power-on: lost
    assert lcd.lcd.lost == 1 and lcd.lcd.commands == 0
    clock.sleep(0.05)
    lcd.transfer([Write(nibble(3) + nibble(3))])  # the second 4.1 ms too early
    assert lcd.lcd.lost == 2 and lcd.lcd.commands == 1


def test_lcd_text_written_before_clear_display_finishes_is_lost_and_after_it_is_shown():
    clock = stepped()
    lcd = Pcf8574Lcd(clock=clock.now)
    init_lcd(lcd, clock)
    assert lcd.lcd.four_bit and lcd.lcd.display_on and lcd.lcd.lost == 0
    lcd.transfer([Write(byte(0x01) + b"".join(byte(c, 1) for c in b"Hi"))])  # no wait after clear
    assert not lcd.lines()[0].startswith("Hi") and lcd.lcd.lost > 0
    clock.sleep(2e-3)
    lcd.transfer([Write(byte(0x01))])
    clock.sleep(2e-3)  # clear display: 1.52 ms
    lcd.transfer([Write(b"".join(byte(c, 1) for c in b"Hi"))])  # data need no wait: the bus covers 41 us
    assert lcd.lines() == ["Hi" + " " * 14, " " * 16]


# ---------------------------------------------------------------------- the bundled drivers wait
@pytest.mark.parametrize("name", ["tmp102", "hts221", "bme280"])
def test_bundled_wasm_driver_waits_for_its_part(tmp_path: Path, name: str):
    """The session's parts run on a clock the driver's sleeps advance: a driver that waited as the datasheet
    says reads the set values; one that did not would read 0 degC, time out or read reset values."""
    config = AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")
    s = open_session(name, config, sim=True, sleep=lambda _: None)
    try:
        assert isinstance(s.bus, SimI2cBus)
        model: Any = s.bus.models[s.device.address]
        got = s.driver.read().values
        assert got["temperature"] == pytest.approx(model.temperature, abs=0.07)
        assert model.conversions >= 1
    finally:
        s.close()


def test_bundled_lcd_driver_waits_for_the_controller(tmp_path: Path):
    config = AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")
    s = open_session("hd44780_pcf8574", config, sim=True, sleep=lambda _: None)
    try:
        s.driver.write("timed\nright")
        assert isinstance(s.bus, SimI2cBus)
        model: Any = s.bus.models[0x27]
        assert model.lines() == ["timed" + " " * 11, "right" + " " * 11] and model.lcd.lost == 0
    finally:
        s.close()
