"""USB protocol types, the simulated devices and the in-process bus, and pyusb over the simulator."""

from __future__ import annotations

import struct

import pytest
import usb.core
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.drivers.native.usb_echo import NativeUsbEcho
from edgeagent.drivers.native.usb_storage import NativeMassStorage, ScsiError
from edgeagent.hw import usb as hw
from edgeagent.hw.pyusb_backend import PyUsbBackend, usb_error
from edgeagent.hw.sim import usb_storage as bot
from edgeagent.hw.sim.usb_bus import SimUsbBus
from edgeagent.hw.sim.usb_echo import EchoDevice
from edgeagent.hw.sim.usb_function import Stall
from edgeagent.hw.sim.usb_pyusb import SimPyusbBackend
from edgeagent.hw.sim.usb_storage import MassStorageDevice

E = hw.UsbErrorCode


def test_error_codes_are_libusb_numbers_with_wit_names() -> None:
    assert [
        (c.value, c.wit_name) for c in (E.IO, E.ACCESS, E.NO_DEVICE, E.PIPE, E.NOT_SUPPORTED, E.OTHER)
    ] == [(-1, "io"), (-3, "access"), (-4, "no-device"), (-9, "pipe"), (-12, "not-supported"), (-99, "other")]
    assert E.from_libusb(-42) is E.OTHER
    err = hw.UsbError(E.TIMEOUT, "1209:0001: bulk IN 0x81")
    assert str(err) == "usb timeout: 1209:0001: bulk IN 0x81" and err.exit_code == 6


def test_pyusb_errors_map_to_codes() -> None:
    assert usb_error(usb.core.USBError("Pipe error", -9, 32), "x").code is E.PIPE
    assert usb_error(usb.core.USBError("gone", None, 19), "x").code is E.NO_DEVICE
    assert usb_error(NotImplementedError(), "iso").code is E.NOT_SUPPORTED


@pytest.mark.parametrize("model", [EchoDevice(), MassStorageDevice()])
def test_descriptors_pack_and_parse_back(model) -> None:
    blob = model.descriptors_blob()
    assert hw.DeviceDescriptor.parse(blob[:18]) == model.descriptor
    assert hw.parse_configuration(blob[18:]) == model.configurations[0]


def test_malformed_descriptors_are_usb_io_errors() -> None:
    with pytest.raises(hw.UsbError, match="malformed"):
        hw.DeviceDescriptor.parse(b"\x12\x01")
    with pytest.raises(hw.UsbError, match="malformed"):
        hw.parse_configuration(b"\x09\x02\x20\x00\x01\x01\x00\x80\x32\x09\x04\x00")


@given(st.lists(st.binary(min_size=1, max_size=700), min_size=1, max_size=8))
def test_echo_returns_everything_in_order(chunks: list[bytes]) -> None:
    dev = EchoDevice()
    dev.configuration = 1
    for c in chunks:
        assert dev.transfer_out(0x01, c) == len(c)
    joined = b"".join(chunks)
    got = b""
    while len(got) < len(joined):
        got += dev.transfer_in(0x81, 512) or b""
    assert got == joined and dev.transfer_in(0x81, 512) is None  # empty: NAK


def test_halted_endpoint_stalls_until_cleared() -> None:
    dev = EchoDevice()
    dev.configuration = 1
    dev.control(0x02, hw.REQ_SET_FEATURE, hw.FEATURE_ENDPOINT_HALT, 0x81, b"", 0)
    with pytest.raises(Stall):
        dev.transfer_in(0x81, 8)
    assert dev.control(0x82, hw.REQ_GET_STATUS, 0, 0x81, b"", 2) == b"\x01\x00"
    dev.control(0x02, hw.REQ_CLEAR_FEATURE, hw.FEATURE_ENDPOINT_HALT, 0x81, b"", 0)
    assert dev.transfer_in(0x81, 8) is None


def test_unconfigured_device_stalls_data_endpoints() -> None:
    with pytest.raises(Stall):
        EchoDevice().transfer_out(0x01, b"x")


def _cbw(tag: int, length: int, flags: int, cdb: bytes) -> bytes:
    return struct.pack(bot.CBW_FMT, bot.CBW_SIGNATURE, tag, length, flags, 0, len(cdb), cdb.ljust(16, b"\0"))


def test_storage_invalid_cbw_halts_until_reset_recovery() -> None:
    dev = MassStorageDevice(size=64 * 512)
    dev.configuration = 1
    dev.transfer_out(bot.EP_OUT, b"garbage")
    with pytest.raises(Stall):
        dev.transfer_in(bot.EP_IN, 13)
    dev.control(0x21, bot.REQ_BOMS_RESET, 0, 0, b"", 0)
    for ep in (bot.EP_IN, bot.EP_OUT):
        dev.control(0x02, hw.REQ_CLEAR_FEATURE, 0, ep, b"", 0)
    dev.transfer_out(bot.EP_OUT, _cbw(9, 0, 0, bytes(6)))
    assert struct.unpack(bot.CSW_FMT, dev.transfer_in(bot.EP_IN, 13)) == (bot.CSW_SIGNATURE, 9, 0, 0)


def test_storage_unknown_command_is_check_condition_with_sense() -> None:
    dev = MassStorageDevice(size=64 * 512)
    dev.configuration = 1
    dev.transfer_out(bot.EP_OUT, _cbw(1, 0, 0, b"\xee" + bytes(5)))
    assert struct.unpack(bot.CSW_FMT, dev.transfer_in(bot.EP_IN, 13))[3] == bot.CSW_FAILED
    dev.transfer_out(bot.EP_OUT, _cbw(2, 18, 0x80, bytes([bot.REQUEST_SENSE, 0, 0, 0, 18, 0])))
    sense = dev.transfer_in(bot.EP_IN, 18)
    assert (sense[2], sense[12]) == (bot.SENSE_ILLEGAL_REQUEST, bot.ASC_INVALID_OPCODE)


# ---------------------------------------------------------------- the in-process bus
@pytest.fixture
def bus() -> SimUsbBus:
    b = SimUsbBus()
    b.plug(EchoDevice())
    b.plug(MassStorageDevice(size=1 << 20))
    return b


def test_bus_errors_follow_usbdevfs(bus: SimUsbBus) -> None:
    echo, disk = bus.devices()
    d = bus.open(disk)
    d.set_configuration(1)
    with pytest.raises(hw.UsbError) as busy:
        d.claim_interface(0)  # usb-storage is bound
    assert busy.value.code is E.BUSY and "usb-storage" in str(busy.value)
    assert d.kernel_driver_active(0)
    d.detach_kernel_driver(0)
    d.claim_interface(0)
    with pytest.raises(hw.UsbError) as other:
        bus.open(disk).claim_interface(0)
    assert other.value.code is E.BUSY
    with pytest.raises(hw.UsbError) as missing:
        d.claim_interface(3)
    assert missing.value.code is E.NOT_FOUND

    e = bus.open(echo)
    e.set_configuration(1)
    with pytest.raises(hw.UsbError) as nak:
        e.bulk_in(0x81, 8, 100)
    assert nak.value.code is E.TIMEOUT
    with pytest.raises(hw.UsbError) as stall:
        e.control_in(0xC0, 0x7F, 0, 0, 1, 100)
    assert stall.value.code is E.PIPE
    assert e.get_string(2) == "USB echo"
    bus.unplug(echo)
    with pytest.raises(hw.UsbError) as gone:
        e.bulk_out(0x01, b"x", 100)
    assert gone.value.code is E.NO_DEVICE
    kinds = [(ev.kind, ev.device.address) for ev in bus.poll_events()]
    assert kinds == [
        (hw.HotplugKind.ARRIVED, echo.address),
        (hw.HotplugKind.ARRIVED, disk.address),
        (hw.HotplugKind.LEFT, echo.address),
    ]


def test_native_twins_on_pyusb_over_the_simulator(bus: SimUsbBus) -> None:
    backend = SimPyusbBackend(bus)
    echo = NativeUsbEcho.find(backend=backend)
    for kind in (echo.ping_bulk, echo.ping_interrupt, echo.ping_control):
        assert kind(b"\x5a" * 512) == b"\x5a" * 512
    disk = NativeMassStorage.find(backend=backend)
    assert (disk.blocks, disk.block_size) == (2048, 512)
    disk.write(100, bytes(range(256)) * 8)
    assert disk.read(100, 4) == bytes(range(256)) * 8
    with pytest.raises(ScsiError, match="sense key 0x5, ASC 0x21"):
        disk.read(2048, 1)
    assert disk.read(0, 1) == bytes(512)  # the stall was recovered: the next command works


def test_pyusb_backend_over_the_simulator_reports_hotplug_by_diff(bus: SimUsbBus) -> None:
    backend = PyUsbBackend(SimPyusbBackend(bus))
    infos = backend.devices()
    assert [i.vid_pid for i in infos] == [(0x1209, 1), (0x1209, 2)]
    dev = backend.open(infos[0])
    dev.set_configuration(1)
    with pytest.raises(hw.UsbError) as wrong:
        dev.bulk_in(0x82, 8, 100)  # an interrupt endpoint
    assert wrong.value.code is E.INVALID_PARAM
    added = bus.plug(EchoDevice(serial="ECHO0002"))
    bus.unplug(infos[1])
    events = {(e.kind, e.device.address) for e in backend.poll_events()}
    assert events == {(hw.HotplugKind.ARRIVED, added.address), (hw.HotplugKind.LEFT, infos[1].address)}


def test_pyusb_raw_transfers_move_data_through_raw_memory_and_keep_the_type_check(bus: SimUsbBus) -> None:
    """The Wasm host's data path (raw_read/raw_write/raw_control_*) on pyusb over the simulator."""
    import ctypes

    from edgeagent.hw.usb import TRANSFER_BULK, TRANSFER_INTERRUPT, RawTransfers, UsbError

    backend = PyUsbBackend(SimPyusbBackend(bus))
    dev = backend.open(next(i for i in backend.devices() if i.vid_pid == (0x1209, 1)))
    dev.set_configuration(1)
    dev.claim_interface(0)
    raw = RawTransfers(dev)
    buf = ctypes.create_string_buffer(b"hello raw", 64)
    address = ctypes.addressof(buf)
    assert raw.write(0x01, address, 9, 1000, TRANSFER_BULK) == 9
    assert raw.read(0x81, address + 32, 32, 1000, TRANSFER_BULK) == 9
    assert buf.raw[32:41] == b"hello raw"
    assert raw.control_out(0x40, 0x01, 0, 0, address, 5, 1000) == 5
    assert raw.control_in(0xC0, 0x02, 0, 0, address + 48, 16, 1000) == 5
    assert buf.raw[48:53] == b"hello"
    with pytest.raises(UsbError) as ei:  # the route of 0x81 is cached for bulk, not for interrupt
        raw.read(0x81, address, 8, 1000, TRANSFER_INTERRUPT)
    assert ei.value.code.wit_name == "invalid-param"
    dev.close()
