"""The component:usb host with the C drivers (drivers/usb_echo.c, usb_storage.c) on the in-process sim."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgeagent.drivers.hosts.usb import UsbGrant
from edgeagent.drivers.usb_driver import UsbEchoWasm, UsbStorageWasm
from edgeagent.errors import AccessDenied, HardwareError
from edgeagent.hw.sim import usb_echo
from edgeagent.hw.sim.usb_bus import SimUsbBus
from edgeagent.hw.sim.usb_echo import EchoDevice
from edgeagent.hw.sim.usb_storage import MassStorageDevice
from edgeagent.wasm.cache import ModuleCache

ECHO = UsbGrant(0x1209, 0x0001, 0)
DISK = UsbGrant(0x1209, 0x0002, 0)


@pytest.fixture
def bus() -> SimUsbBus:
    b = SimUsbBus()
    b.plug(EchoDevice())
    b.plug(MassStorageDevice(size=1 << 20))
    return b


@pytest.fixture
def modules(wasm_build: Path, runtime):
    cache = ModuleCache(None)
    return {n: cache.load_file(runtime, wasm_build / f"{n}.wasm") for n in ("usb_echo", "usb_storage")}


def echo(modules, runtime, bus, grants=(ECHO,)) -> UsbEchoWasm:
    return UsbEchoWasm(modules["usb_echo"], runtime=runtime, backend=bus, grants=list(grants))


@pytest.mark.parametrize("kind", ["bulk", "interrupt", "control"])
def test_echo_driver_pings_8_to_512_bytes(modules, runtime, bus, kind) -> None:
    with echo(modules, runtime, bus) as drv:
        drv.init()
        assert [drv.ping(kind, n) for n in (8, 64, 512)] == [8, 64, 512]


def test_denied_device_is_invisible_and_opening_it_is_access(modules, runtime, bus) -> None:
    with echo(modules, runtime, bus) as drv:
        assert drv.device_count() == 1  # the disk is plugged in but not granted
        with pytest.raises(AccessDenied, match=r"driver usb_echo: open 1209:0002: access denied by policy"):
            drv.try_open(0x1209, 0x0002)
        assert drv.usb.denials[-1].what == "USB device 1209:0002"
    with echo(modules, runtime, bus, grants=()) as drv:
        assert drv.device_count() == 0
        with pytest.raises(AccessDenied, match="driver usb_echo: init"):
            drv.init()


def test_interface_outside_the_grant_is_access(modules, runtime, bus) -> None:
    with (
        echo(modules, runtime, bus, grants=(UsbGrant(0x1209, 0x0001, 1),)) as drv,
        pytest.raises(AccessDenied, match="interface 0 of 1209:0001"),
    ):
        drv.init()


def test_stall_is_pipe_and_clear_halt_recovers(modules, runtime, bus) -> None:
    with echo(modules, runtime, bus) as drv:
        drv.init()
        bus.model(bus.devices()[0]).halt(0x81)
        with pytest.raises(
            HardwareError, match=r"driver usb_echo: bulk ping: usb pipe \(1209:0001 .*stalled\)"
        ):
            drv.ping("bulk", 8)
        drv.recover()
        drv.set_timeout(10)
        with pytest.raises(HardwareError):  # the 8 bytes sent before the stall are still queued: mismatch
            drv.ping("bulk", 4)
        assert drv.ping("interrupt", 8) == 8


def test_nak_is_timeout(modules, runtime, bus) -> None:
    with echo(modules, runtime, bus) as drv:
        drv.init()
        bus.model(bus.devices()[0]).queues[0x81] += bytes(usb_echo.QUEUE_LIMIT)  # full: OUT is NAKed
        with pytest.raises(HardwareError, match="driver usb_echo: bulk ping: usb timeout"):
            drv.ping("bulk", 8)


def test_unplugged_device_is_no_device_naming_the_driver(modules, runtime, bus) -> None:
    with echo(modules, runtime, bus) as drv:
        drv.init()
        info = bus.devices()[0]
        bus.unplug(info)
        with pytest.raises(HardwareError, match=r"driver usb_echo: interrupt ping: usb no-device"):
            drv.ping("interrupt", 8)
        assert drv.hotplug() == (2, info.address)
        assert drv.hotplug() is None
        added = bus.plug(EchoDevice())
        bus.plug(MassStorageDevice())  # not granted: no event
        assert drv.hotplug() == (1, added.address)
        assert drv.hotplug() is None
        drv.init()
        assert drv.ping("bulk", 64) == 64


def test_storage_driver_reads_and_writes_blocks(modules, runtime, bus) -> None:
    with UsbStorageWasm(modules["usb_storage"], runtime=runtime, backend=bus, grants=[DISK]) as disk:
        disk.init()
        assert (disk.blocks, disk.block_size) == (2048, 512)
        assert disk.inquiry()[8:16] == b"EDGEAGNT"
        rng = random.Random(3)
        written = {}
        for lba in rng.sample(range(0, 2048 - 16, 16), 20):
            blob = rng.randbytes(16 * 512)
            disk.write(lba, blob)
            written[lba] = blob
        assert all(disk.read(lba, 16) == blob for lba, blob in written.items())
        model = bus.model(bus.devices()[1])
        assert all(model.media[lba * 512 : (lba + 16) * 512] == blob for lba, blob in written.items())
        with pytest.raises(HardwareError, match="CHECK CONDITION, sense key 0x5, ASC 0x21"):
            disk.read_blocks(2047, 2)
        assert disk.read(0, 1) == bytes(512)


def test_isochronous_is_not_supported(modules, runtime, bus) -> None:
    with echo(modules, runtime, bus) as drv:
        drv.init()
        assert len(drv.usb.handles) == 1  # the driver's open device: handle 1
        assert drv.usb.isochronous_in(1, 0x81, 0, 0, 100) == -12


def test_transfers_to_an_ungranted_interface_are_access_without_a_claim(bus) -> None:
    """pyusb and usbdevfs claim an interface implicitly on its first transfer: the host checks the grant per
    endpoint (and per control recipient) so a guest cannot reach an interface by skipping claim_interface."""
    from edgeagent.drivers.hosts.usb import UsbHost

    host = UsbHost(bus, [UsbGrant(0x1209, 0x0001, 1)])  # the echo device, but only its (absent) interface 1
    handle = host.open(host.find(0x1209, 0x0001))
    assert handle > 0
    assert host.bulk_out(handle, 0x01, 0, 8, 100) == -3
    assert host.interrupt_in(handle, 0x82, 0, 8, 100) == -3
    assert host.denials[-1].what == (
        "endpoint 0x82 of 1209:0001 on bus 1 addr 2 (its interface is not granted)"
    )
    assert host.control_out(handle, 0x41, 0x01, 0, 0, 0, 0, 100) == -3  # vendor request to interface 0
    assert host.control_in(handle, 0x82, 0x00, 0, 0x81, 0, 2, 100) == -3  # GET_STATUS of endpoint 0x81
    assert host.claim_interface(handle, 0) == -3
    host.close()
