"""Component drivers (WASI 0.2, wasi:i2c) on the simulated bus, opened the way run-driver and the agent open
any driver: readings equal the core modules' and the native twins', a policy denial and a missing part are the
same clear errors, and the compiled components go through the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from wasmtime.component import Variant

from edgeagent.config import AgentConfig
from edgeagent.drivers import registry
from edgeagent.drivers.components.i2c_driver import ComponentI2cDriver
from edgeagent.drivers.native import NATIVE_DRIVERS
from edgeagent.drivers.native.simbus import SimSMBus
from edgeagent.drivers.session import open_session
from edgeagent.errors import AccessDenied, HardwareError
from edgeagent.hw.sim.clock import SimClock, new_part
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.wasm.host import HostTrap

COMPONENTS = [("hts221_component", "hts221"), ("bme280_component", "bme280"), ("bme280_rust", "bme280")]


@pytest.fixture
def config(tmp_path: Path, component_build: Path) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", policies_dir=tmp_path / "policies")


def no_sleep(_: float) -> None:
    pass


@pytest.mark.parametrize(("name", "part"), COMPONENTS)
def test_component_driver_reads_like_the_core_module_and_the_native_twin(config, runtime, name, part) -> None:
    comp = open_session(name, config, sim=True, runtime=runtime, sleep=no_sleep)
    core = open_session(part, config, sim=True, runtime=runtime, sleep=no_sleep)
    try:
        assert isinstance(comp.driver, ComponentI2cDriver)
        assert comp.driver.kind == "sensor"
        assert comp.driver.channels == core.driver.channels
        reading = comp.driver.read()
        assert reading.values == core.driver.read().values
        info = registry.get(part)
        clock = SimClock(no_sleep)  # the part sees the twin's waits pass
        native = NATIVE_DRIVERS[part](
            SimSMBus(SimI2cBus([new_part(info.sim_model, info.default_address, clock.now)])),
            info.default_address,
            sleep=clock.sleep,
        )
        native.init()
        assert reading.values == native.read()
        model = comp.bus.models[comp.device.address]
        assert reading.values["temperature"] == pytest.approx(model.temperature, abs=0.07)
        assert comp.driver.i2c.denials == []
    finally:
        comp.close()
        core.close()


@pytest.mark.parametrize("name", ["hts221_component", "bme280_rust"])
def test_an_address_outside_the_policy_is_denied_without_touching_the_bus(config, runtime, tmp_path, name):
    part_address = registry.get(name).default_address
    policy = tmp_path / "other-address.toml"
    policy.write_text("[[i2c]]\nbus = 1\naddresses = [0x10]\n")
    with pytest.raises(AccessDenied) as e:
        open_session(
            name,
            config,
            sim=True,
            runtime=runtime,
            sleep=no_sleep,
            policy_file=policy,
            device=f"1:{part_address:#04x}",
        )
    assert str(e.value) == (
        f"driver {name}: init: I2C address {part_address:#04x} on sim:/dev/i2c-1 is not granted by its "
        f"policy ({policy})"
    )


@pytest.mark.parametrize("name", ["bme280_component", "bme280_rust"])
def test_a_missing_part_is_a_nack_error_naming_the_device(config, runtime, name) -> None:
    bus = SimI2cBus(name="sim:/dev/i2c-1")  # nothing attached
    with pytest.raises(HardwareError) as e:
        open_session(name, config, sim=True, runtime=runtime, sleep=no_sleep, bus=bus)
    assert str(e.value) == (
        f"driver {name}: init failed: no-acknowledge(address) (ENXIO) at I2C address 0x76 on sim:/dev/i2c-1"
    )


def test_a_component_driver_given_by_path_runs_under_its_policy(config, runtime, component_build) -> None:
    policy = Path(registry.POLICY_DIR) / "bme280_component.toml"
    clock = SimClock(no_sleep)
    s = open_session(
        str(component_build / "bme280_component.wasm"),
        config,
        sim=False,
        runtime=runtime,
        sleep=clock.sleep,
        policy_file=policy,
        bus=SimI2cBus([new_part(registry.get("bme280").sim_model, 0x76, clock.now)], name="sim:/dev/i2c-1"),
    )
    try:
        assert set(s.driver.read().values) == {"temperature", "pressure", "humidity"}
    finally:
        s.close()


def test_components_are_compiled_once_then_loaded_from_the_cache(config, runtime) -> None:
    for _ in range(2):
        open_session("bme280_component", config, sim=True, runtime=runtime, sleep=no_sleep).close()
    entries = list((config.state_dir / "cache" / "wasm").glob("*.ccwasm"))
    assert len(entries) == 1 and entries[0].name.endswith(f"-{runtime.fingerprint}.ccwasm")


# ---------------------------------------------------------------------------------------------- USB
def echo_driver(runtime, component_build: Path, grants):  # type: ignore[no-untyped-def]
    from wasmtime.component import Component

    from edgeagent.drivers.components.usb_driver import ComponentUsbEcho
    from edgeagent.drivers.usb_session import sim_backend

    comp = Component(runtime.engine, (component_build / "usb_echo_component.wasm").read_bytes())
    return ComponentUsbEcho(comp, runtime=runtime, backend=sim_backend(), grants=grants)


def test_usb_echo_component_pings_the_simulated_device(runtime, component_build) -> None:
    from edgeagent.drivers.hosts.usb import UsbGrant

    with echo_driver(runtime, component_build, [UsbGrant(0x1209, 0x0001, 0)]) as d:
        d.init()
        assert [d.ping(kind, n) for kind in ("bulk", "interrupt", "control") for n in (1, 64, 512)] == [
            1,
            64,
            512,
        ] * 3
        assert d.usb.denials == []


def test_usb_component_claiming_an_interface_outside_the_grant_is_denied(runtime, component_build) -> None:
    from edgeagent.drivers.hosts.usb import UsbGrant

    with (
        echo_driver(runtime, component_build, [UsbGrant(0x1209, 0x0001, 1)]) as d,
        pytest.raises(AccessDenied) as e,
    ):
        d.init()
    assert str(e.value) == (
        "driver usb_echo_component: init: access denied by policy to interface 0 of 1209:0001 on bus 1 addr 2"
    )


def test_usb_component_sees_no_device_its_policy_does_not_grant(runtime, component_build) -> None:
    from edgeagent.drivers.hosts.usb import UsbGrant

    with echo_driver(runtime, component_build, [UsbGrant(0x1209, 0x0002)]) as d:  # the disk, not the echo
        with pytest.raises(HardwareError, match="driver usb_echo_component: init: usb not-found"):
            d.init()
        assert d.log.lines[-1][1] == "usb echo: no 1209:0001 among the granted devices"


def test_run_driver_opens_the_usb_component_like_the_core_driver(config) -> None:
    from edgeagent.drivers.session import open_driver

    s = open_driver("usb_echo_component", config, sim=True)
    try:
        row = s.read()  # type: ignore[union-attr]
        assert row["driver"] == "usb_echo_component"
        assert set(row["values"]) == {"size", "bulk", "interrupt", "control"}
    finally:
        s.close()


@pytest.mark.parametrize("name", ["bme280_rust", "usb_echo_component"])
def test_the_agents_driver_instance_runs_a_component_driver(config, name) -> None:
    """The agent service's driver thread (DriverWorker) opens a component like any driver: measured, read on
    its schedule, reported in its status."""
    import hashlib
    import threading
    import time

    from edgeagent.agent.backoff import Backoff
    from edgeagent.agent.driver_instances import DriverWorker
    from edgeagent.config import DriverInstance

    path = registry.module_path(registry.get(name), config)
    measured = {path: hashlib.sha256(path.read_bytes()).hexdigest()}
    policy = registry.policy_path(registry.get(name), config)
    assert policy is not None
    measured[policy] = hashlib.sha256(policy.read_bytes()).hexdigest()
    worker = DriverWorker(
        DriverInstance(name="component", driver=name, interval=0.01, sim="true"),
        config,
        digests=lambda p: measured.get(Path(p)),
        backoff=Backoff(),
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while worker.readings < 2 and time.monotonic() < deadline and not worker.last_error:
            threading.Event().wait(0.01)
        status = worker.status()
        assert status["readings"] >= 2, (status["state"], status["last_error"])
        assert status["state"] == "running" and status["module_sha256"] == measured[path]
        assert status["latest"]["values"], status["latest"]
    finally:
        worker.stop()


def test_every_wasi_i2c_method_and_error_case_crosses_the_component_boundary(
    runtime, component_build
) -> None:
    """tests/guests/components/i2c_ops.c: transaction (2 and 3 operations), write + read, write-read, a denied
    address (error-code other) and an empty one (no-acknowledge(address)), all through wit-bindgen's C."""
    from wasmtime.component import Component

    from edgeagent.hw.sim.hts221 import Hts221

    part = Hts221(0x5F)
    bus = SimI2cBus([part], name="sim:/dev/i2c-1")
    comp = Component(runtime.engine, (component_build / "tests" / "i2c_ops.wasm").read_bytes())
    with ComponentI2cDriver(
        "i2c_ops",
        comp,
        runtime=runtime,
        bus=bus,
        address=0x5F,
        granted=frozenset({0x5F, 0x10}),
        kind="sensor",
    ) as d:
        v = d.read_values()
        denials = list(d.i2c.denials)
    cal = int.from_bytes(bytes(part.regs[0x30:0x34]), "big")
    assert v == [0xBC, 0xBC, 0xBC, 2, cal, 4, 2, 0]
    assert [(x.bus, x.address) for x in denials] == [("sim:/dev/i2c-1", 0x60)]


@pytest.mark.parametrize(
    ("code", "tag", "source"),
    [
        ("BUS", "bus", None),
        ("ARBITRATION_LOSS", "arbitration-loss", None),
        ("NO_ACKNOWLEDGE_ADDRESS", "no-acknowledge", "address"),
        ("NO_ACKNOWLEDGE_DATA", "no-acknowledge", "data"),
        ("NO_ACKNOWLEDGE_UNKNOWN", "no-acknowledge", "unknown"),
        ("OVERRUN", "overrun", None),
        ("OTHER", "other", None),
    ],
)
def test_each_bus_error_is_its_error_code_case(code: str, tag: str, source: str | None) -> None:
    """The full wasi:i2c error-code variant: every bus failure the backends report maps to its own case, for
    each method, and back (error_code) to what the runner reports."""
    from wasmtime.component import Variant

    from edgeagent.drivers.components.i2c import ComponentI2cHost, error_code
    from edgeagent.drivers.hosts.i2c import I2cGrant
    from edgeagent.hw.i2c import ErrorCode, I2cError
    from edgeagent.wasm.component import Err

    class FailingBus:
        name = "failing"

        def transaction(self, address, operations):  # type: ignore[no-untyped-def]
            raise I2cError(ErrorCode[code], address)

        def close(self) -> None:
            pass

    host = ComponentI2cHost()
    rep = host.handles.add(I2cGrant(FailingBus(), frozenset({0x40})))
    expected = Err(Variant(tag, source) if source else Variant(tag))
    assert host.read(rep, 0x40, 2) == expected
    assert host.write(rep, 0x40, b"\x01") == expected
    assert host.write_read(rep, 0x40, b"\x01", 2) == expected
    assert host.transaction(rep, 0x40, [b"\x01", 2]) == expected
    assert error_code(expected.value) == ErrorCode[code]


def test_component_write_and_write_read_use_the_buses_shortcuts_within_the_policy() -> None:
    """Like the core host: a bus's write/write_read shortcuts (one I2C_RDWR each, no operation list) are
    looked up once per grant, and the address is checked against the grant before the bus moves."""
    from types import SimpleNamespace

    from edgeagent.drivers.components.i2c import ComponentI2cHost
    from edgeagent.drivers.hosts.i2c import I2cGrant
    from edgeagent.hw.i2c import ErrorCode, I2cError
    from edgeagent.wasm.component import Err

    class ShortcutBus:
        name = "shortcuts"

        def __init__(self) -> None:
            self.calls: list[tuple[str, int, bytes]] = []
            self.fail = False

        def transaction(self, address: int, operations: object) -> list[bytes]:
            self.calls.append(("transaction", address, b""))
            return []

        def write(self, address: int, data: bytes) -> None:
            if self.fail:
                raise I2cError(ErrorCode.NO_ACKNOWLEDGE_DATA, address)
            self.calls.append(("write", address, data))

        def write_read(self, address: int, data: bytes, length: int) -> bytes:
            self.calls.append(("write_read", address, data))
            return bytes(range(length))

        def close(self) -> None:
            pass

    bus = ShortcutBus()
    host = ComponentI2cHost()
    host.bind(SimpleNamespace(name="t"))  # type: ignore[arg-type]
    host.grant(I2cGrant(bus, frozenset({0x40})))
    rep = next(iter(host.handles.mapping))
    assert host.write(rep, 0x40, b"\x20\x84") is None
    assert host.write_read(rep, 0x40, b"\x0f", 3) == b"\x00\x01\x02"
    assert bus.calls == [("write", 0x40, b"\x20\x84"), ("write_read", 0x40, b"\x0f")]
    # Outside the grant: the err case `other`, recorded as a denial, the bus untouched.
    assert host.write(rep, 0x41, b"\x00") == Err(Variant("other"))
    assert host.write_read(rep, 0x41, b"\x00", 1) == Err(Variant("other"))
    assert [(d.bus, d.address) for d in host.denials] == [("shortcuts", 0x41)] * 2
    assert len(bus.calls) == 2
    bus.fail = True
    assert host.write(rep, 0x40, b"\x00") == Err(Variant("no-acknowledge", "data"))
    host.drop("i2c", rep)  # the guest dropped it: its shortcuts go with it
    with pytest.raises(HostTrap):
        host.write(rep, 0x40, b"\x00")
