"""Driver ABI 2: a driver's own data errors (EA_ERR_DATA + ea_fail) and skipped readings (EA_SKIP), the stream
going on after a bad reading, and ABI 1 drivers still running. Real guests (make -C drivers) on the simulated
bus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeagent.cli.main import main
from edgeagent.drivers.runner import I2cDriver
from edgeagent.errors import DeviceDataError, DriverError, HardwareError
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.wasm import ModuleCache


def driver(runtime, wasm_build: Path, guest: str, address: int = 0x40) -> I2cDriver:
    module = ModuleCache(None).load_file(runtime, wasm_build / "tests" / f"{guest}.wasm")
    return I2cDriver(
        guest, module, runtime=runtime, bus=SimI2cBus(), address=address, granted=frozenset({address})
    )


def test_a_data_error_names_the_drivers_message_and_the_next_reading_works(runtime, wasm_build) -> None:
    # Before: EA_ERR_DATA did not exist; a CRC failure could only surface as "read failed: other".
    d = driver(runtime, wasm_build, "flaky_sensor")
    try:
        assert d.read().values == {"n": 1.0}
        with pytest.raises(DeviceDataError) as e:
            d.read()
        assert str(e.value) == (
            "driver flaky_sensor: read: data error: CRC mismatch (got 0x12, computed 0x34) "
            "at I2C address 0x40 on sim-i2c-1"
        )
        assert isinstance(e.value, HardwareError)  # what the agent's driver loop already rides out
        skipped = d.read()
        assert skipped.skipped and skipped.values == {} and skipped.to_dict()["skipped"] is True
        good = d.read()
        assert good.values == {"n": 4.0} and "skipped" not in good.to_dict()
        with pytest.raises(DeviceDataError, match="CRC mismatch"):  # the benchmark's hot path too
            d.read_values()
        assert d.read_values() == []  # skipped
        assert d.read_values() == [7.0]
    finally:
        d.close()


def test_a_data_error_in_init_is_reported_as_such(runtime, wasm_build) -> None:
    with pytest.raises(
        DeviceDataError, match=r"init: data error: chip ID 0x58, expected 0x60 at I2C address 0x77"
    ):
        driver(runtime, wasm_build, "flaky_sensor", address=0x77)


def test_drivers_built_for_abi_1_keep_working_and_unknown_versions_are_refused(runtime, wasm_build) -> None:
    d = driver(runtime, wasm_build, "abi1_sensor")
    try:
        assert d.abi_version == 1 and d.read().values == {"x": 42.0}
    finally:
        d.close()
    with pytest.raises(
        DriverError, match=r"^driver abi99_sensor: ABI version 99, this agent speaks 1 and 2$"
    ):
        driver(runtime, wasm_build, "abi99_sensor")


def test_run_driver_streams_on_past_bad_readings(
    wasm_build, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: one bad reading ended the whole stream. (A bundle, so that --sim has a part to put on the bus.)
    b = tmp_path / "flaky"
    b.mkdir()
    shutil.copyfile(wasm_build / "tests" / "flaky_sensor.wasm", b / "flaky_sensor.wasm")
    policy = b / "policy.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x40]\n")
    (b / "model.toml").write_text('name = "dummy"\naddress = 0x40\n[[registers]]\nat = 0\nreset = [0]\n')
    (b / "bundle.toml").write_text(
        '[bundle]\nname = "flaky_sensor"\nkind = "driver"\nabi = 2\nmodule = "flaky_sensor.wasm"\n'
        'policy = "policy.toml"\nmodel = "model.toml"\n'
    )
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--state-dir",
                str(tmp_path / "s"),
                "run-driver",
                str(b),
                "--sim",
                "-n",
                "6",
                "-i",
                "0",
                "--json",
            ]
        )
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["values"] for r in rows] == [{"n": 1.0}, {}, {"n": 4.0}, {}]
    assert [r.get("skipped", False) for r in rows] == [False, True, False, True]
    warnings = [line for line in err.splitlines() if "data error" in line]
    assert len(warnings) == 2 and all(
        w.startswith("edgeagent: warning: driver flaky_sensor: read: data error: CRC mismatch")
        for w in warnings
    )


def test_the_agents_driver_loop_records_good_readings_skips_skipped_and_rides_out_data_errors(
    wasm_build, tmp_path: Path
) -> None:
    import hashlib

    from edgeagent.agent.backoff import Backoff
    from edgeagent.agent.driver_instances import DriverWorker
    from edgeagent.config import AgentConfig, DriverInstance
    from edgeagent.testbed.procs import wait_for

    b = tmp_path / "flaky"
    b.mkdir()
    shutil.copyfile(wasm_build / "tests" / "flaky_sensor.wasm", b / "flaky_sensor.wasm")
    (b / "policy.toml").write_text("[[i2c]]\nbus = 1\naddresses = [0x40]\n")
    (b / "model.toml").write_text('name = "dummy"\naddress = 0x40\n[[registers]]\nat = 0\nreset = [0]\n')
    (b / "bundle.toml").write_text(
        '[bundle]\nname = "flaky_sensor"\nkind = "driver"\nabi = 2\nmodule = "flaky_sensor.wasm"\n'
        'policy = "policy.toml"\nmodel = "model.toml"\n'
    )
    seen: list[dict[str, object]] = []
    worker = DriverWorker(
        DriverInstance(name="flaky", driver=str(b), interval=0.0, sim="true"),
        AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies"),
        digests=lambda p: hashlib.sha256(p.read_bytes()).hexdigest(),  # as if measured
        backoff=Backoff(base=0.0, cap=0.0),
        on_reading=lambda _name, reading: seen.append(reading),
    )
    worker.start()
    try:
        wait_for(lambda: len(seen) >= 3, timeout=20, what="three recorded readings")
    finally:
        worker.stop()
    values = [r["values"] for r in seen[:3]]
    # 2, 5: data errors; 3, 6: skipped; one instance throughout (a reopened driver would count from 1 again)
    assert values == [{"n": 1.0}, {"n": 4.0}, {"n": 7.0}]
    assert worker.errors >= 2 and "data error: CRC mismatch" in worker.last_error
