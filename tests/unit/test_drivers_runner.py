"""The bundled Wasm drivers on the simulated bus: readings equal the native twins', denials and NACKs are
clear
errors, and a broken driver does not stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.native import NATIVE_DRIVERS
from edgeagent.drivers.native.simbus import SimSMBus
from edgeagent.drivers.runner import I2cDriver, parse_device
from edgeagent.drivers.session import open_session
from edgeagent.errors import AccessDenied, DriverError, HardwareError, PolicyError
from edgeagent.hw.i2c import ErrorCode
from edgeagent.hw.sim.clock import SimClock, new_part
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.wasm import Limits, ModuleCache


@pytest.fixture
def config(tmp_path, wasm_build) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")


def policy(tmp_path: Path, addresses: str, bus: int = 1) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(f"[[i2c]]\nbus = {bus}\naddresses = [{addresses}]\n")
    return p


@pytest.mark.parametrize("name", ["tmp102", "hts221", "bme280"])
def test_sensor_driver_matches_its_native_twin(config, runtime, name):
    s = open_session(name, config, sim=True, runtime=runtime, sleep=lambda x: None)
    try:
        wasm = s.driver.read()
        info = registry.get(name)
        clock = SimClock(lambda x: None)  # the part sees the twin's waits pass
        native = NATIVE_DRIVERS[name](
            SimSMBus(SimI2cBus([new_part(info.sim_model, info.default_address, clock.now)])),
            info.default_address,
            sleep=clock.sleep,
        )
        native.init()
        assert wasm.values == native.read()
        assert list(wasm.units.items()) == list(native.channels)
        model = s.bus.models[s.device.address]
        assert wasm.values["temperature"] == pytest.approx(model.temperature, abs=0.07)
    finally:
        s.close()


def test_lcd_driver_writes_text_like_its_native_twin(config, runtime):
    s = open_session("hd44780_pcf8574", config, sim=True, runtime=runtime, sleep=lambda x: None)
    s.driver.write("edgeagent\nwasm drivers, clipped here")
    assert s.bus.models[0x27].lines() == ["edgeagent       ", "wasm drivers, cl"]
    with pytest.raises(DriverError, match="output driver: it has no readings"):
        s.driver.read()
    clock = SimClock(lambda x: None)
    bus = SimI2cBus([new_part(registry.get("hd44780_pcf8574").sim_model, 0x27, clock.now)])
    native = NATIVE_DRIVERS["hd44780_pcf8574"](SimSMBus(bus), 0x27, sleep=clock.sleep)
    native.init()
    native.write("edgeagent\nwasm drivers, clipped here")
    assert bus.models[0x27].lines() == s.bus.models[0x27].lines()
    s.close()


def test_cache_is_used_on_second_open(config, runtime):
    cache = ModuleCache(config.state_path(Path("cache/wasm")))
    open_session("tmp102", config, sim=True, runtime=runtime, cache=cache).close()
    open_session("tmp102", config, sim=True, runtime=runtime, cache=cache).close()
    assert (cache.stats.compiles, cache.stats.hits) == (1, 1)


def test_denied_device_is_access_denied_naming_driver_address_and_policy(config, runtime, tmp_path):
    pol = policy(tmp_path, "0x48")
    with pytest.raises(
        AccessDenied,
        match=r"driver tmp102: init: I2C address 0x49 on sim:/dev/i2c-1 is not "
        r"granted by its policy \(.*policy\.toml\)",
    ):
        open_session("tmp102", config, sim=True, runtime=runtime, policy_file=pol, device="1:0x49")


def test_device_on_an_ungranted_bus_is_denied(config, runtime, tmp_path):
    with pytest.raises(AccessDenied, match="0x48 on sim:/dev/i2c-2"):
        open_session(
            "tmp102", config, sim=True, runtime=runtime, policy_file=policy(tmp_path, "0x48"), device="2:0x48"
        )


def test_nack_is_a_hardware_error_naming_driver_and_cause(config, runtime):
    bus = SimI2cBus()  # nothing plugged in
    with pytest.raises(
        HardwareError,
        match=r"driver tmp102: init failed: no-acknowledge\(address\) \(ENXIO\) "
        r"at I2C address 0x48 on sim-i2c-1",
    ):
        open_session("tmp102", config, sim=True, runtime=runtime, bus=bus)


def test_unplugged_mid_run_and_timeout(config, runtime):
    s = open_session("bme280", config, sim=True, runtime=runtime, sleep=lambda x: None)
    s.bus.inject(0x76, ErrorCode.OTHER)
    with pytest.raises(HardwareError, match=r"read failed: other \(injected\)"):
        s.driver.read()
    assert s.driver.read().values["pressure"] > 900
    s.bus.detach(0x76)
    with pytest.raises(HardwareError, match=r"no-acknowledge\(address\)"):
        s.driver.read()
    s.close()


def test_looping_driver_is_stopped_and_others_keep_reading(config, runtime, tmp_path, wasm_build):
    good = open_session("tmp102", config, sim=True, runtime=runtime)
    module = ModuleCache(None).load_file(runtime, wasm_build / "tests" / "looping_driver.wasm")
    bad = I2cDriver(
        "looper",
        module,
        runtime=runtime,
        bus=SimI2cBus(),
        address=0x10,
        granted=frozenset({0x10}),
        limits=Limits(compute_ms=20),
    )
    with pytest.raises(
        DriverError, match=r"driver looper: stopped in read: ran past its 20 ms compute limit"
    ):
        bad.read()
    assert good.driver.read().values["temperature"] == 23.5
    with pytest.raises(DriverError, match="driver looper: stopped in read"):
        bad.read()
    assert good.driver.read().values["temperature"] == 23.5
    good.close()
    bad.close()


def test_module_without_driver_exports(config, runtime, tmp_path, wasm_build):
    with pytest.raises(
        DriverError, match=r"driver no_driver_exports: does not export ea_abi_version, ea_buffer, init"
    ):
        open_session(
            str(wasm_build / "tests" / "no_driver_exports.wasm"),
            config,
            sim=True,
            runtime=runtime,
            policy_file=policy(tmp_path, "0x48"),
            bus=SimI2cBus(),  # a module outside a bundle has no simulated part of its own
        )


def test_module_by_path_needs_a_policy(config, runtime, wasm_build):
    with pytest.raises(PolicyError, match="needs --policy"):
        open_session(str(wasm_build / "tmp102.wasm"), config, sim=True, runtime=runtime)


def test_unknown_driver_lists_the_bundled_ones(config, runtime):
    with pytest.raises(DriverError, match=r"unknown driver 'nope' \(bundled: .*tmp102"):
        open_session("nope", config, sim=True, runtime=runtime)


def test_site_policy_overrides_the_bundled_one(config, runtime):
    site = config.policies_dir / "drivers"
    site.mkdir(parents=True)
    (site / "tmp102.toml").write_text("[[i2c]]\nbus = 4\naddresses = [0x4b]\n")
    s = open_session("tmp102", config, sim=True, runtime=runtime)
    assert (s.device.bus, s.device.address) == (4, 0x4B)
    s.close()


@pytest.mark.parametrize(
    ("spec", "bus", "addr"),
    [("0x48", 1, 0x48), ("2:0x49", 2, 0x49), ("/dev/i2c-3:72", 3, 72), ("i2c-0:0x10", 0, 0x10)],
)
def test_parse_device(spec, bus, addr):
    d = parse_device(spec, default_bus=1)
    assert (d.bus, d.address) == (bus, addr)


@pytest.mark.parametrize("spec", ["zz", "1:0x800", "spi:0x48"])
def test_parse_device_rejects(spec):
    with pytest.raises(HardwareError):
        parse_device(spec, default_bus=1)
