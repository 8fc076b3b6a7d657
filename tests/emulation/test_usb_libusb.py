"""The unmodified pyusb/libusb-1.0 stack against umockdev-emulated USB devices (usbdevfs ioctls in Python)."""

from __future__ import annotations

import json
import textwrap

import pytest

from edgeagent.hw.emulation.client import Emulator

pytestmark = pytest.mark.integration


def run(emulator: Emulator, code: str) -> dict:
    return emulator.run_python(textwrap.dedent(code))


def test_pyusb_enumerates_descriptors_and_strings(emulator: Emulator) -> None:
    got = run(
        emulator,
        """
        import json, usb.core, usb.util
        out = []
        for d in usb.core.find(find_all=True):
            cfg = d[0]
            out.append({"vid": d.idVendor, "pid": d.idProduct, "bus": d.bus, "address": d.address,
                        "class": cfg[(0, 0)].bInterfaceClass,
                        "endpoints": [e.bEndpointAddress for e in cfg[(0, 0)]],
                        "product": usb.util.get_string(d, d.iProduct),
                        "serial": usb.util.get_string(d, d.iSerialNumber)})
        print(json.dumps(sorted(out, key=lambda x: x["pid"])))
    """,
    )
    assert got == [
        {
            "vid": 0x1209,
            "pid": 1,
            "bus": 1,
            "address": emulator.usb["echo"]["address"],
            "class": 0xFF,
            "endpoints": [0x01, 0x81, 0x02, 0x82],
            "product": "USB echo",
            "serial": "ECHO0001",
        },
        {
            "vid": 0x1209,
            "pid": 2,
            "bus": 1,
            "address": emulator.usb["disk"]["address"],
            "class": 0x08,
            "endpoints": [0x81, 0x02],
            "product": "USB disk",
            "serial": "DISK0001",
        },
    ]


def test_native_echo_pings_bulk_interrupt_control(emulator: Emulator) -> None:
    got = run(
        emulator,
        """
        import json, os
        from edgeagent.drivers.native.usb_echo import NativeUsbEcho
        echo = NativeUsbEcho.find()
        out = {}
        for n in (8, 64, 512):
            payload = os.urandom(n)
            out[n] = [echo.ping_bulk(payload) == payload, echo.ping_interrupt(payload) == payload,
                      echo.ping_control(payload) == payload]
        echo.close()
        print(json.dumps(out))
    """,
    )
    assert got == {"8": [True] * 3, "64": [True] * 3, "512": [True] * 3}


def test_native_mass_storage_detaches_kernel_driver_and_moves_blocks(emulator: Emulator) -> None:
    got = run(
        emulator,
        """
        import json, os, random, usb.core
        from edgeagent.drivers.native.usb_storage import NativeMassStorage
        dev = usb.core.find(idVendor=0x1209, idProduct=2)
        bound = dev.is_kernel_driver_active(0)
        try:
            dev.set_configuration(1); usb.util.claim_interface(dev, 0); claim = "ok"
        except usb.core.USBError as e:
            claim = e.backend_error_code
        usb.util.dispose_resources(dev)
        disk = NativeMassStorage.find()
        inquiry = disk.inquiry()
        blobs = {lba: os.urandom(4096) for lba in random.Random(7).sample(range(0, disk.blocks - 8, 8), 16)}
        for lba, blob in blobs.items():
            disk.write(lba, blob)
        ok = all(disk.read(lba, 8) == blob for lba, blob in blobs.items())
        print(json.dumps({"bound": bound, "claim": claim, "vendor": inquiry[8:16].decode(),
                          "capacity": [disk.blocks, disk.block_size], "roundtrip": ok}))
    """,
    )
    assert got == {
        "bound": True,
        "claim": -6,
        "vendor": "EDGEAGNT",
        "capacity": [8192, 512],
        "roundtrip": True,
    }


def test_pyusb_backend_maps_stall_and_recovers_with_clear_halt(emulator: Emulator) -> None:
    proc = emulator.spawn_python(
        textwrap.dedent("""
        import json, sys
        from edgeagent.hw.pyusb_backend import PyUsbBackend
        from edgeagent.hw.usb import UsbError
        be = PyUsbBackend()
        info = next(i for i in be.devices() if i.vid_pid == (0x1209, 1))
        dev = be.open(info)
        dev.claim_interface(0)
        print("READY", flush=True)
        sys.stdin.readline()  # the test halts bulk IN in the device
        out = {}
        dev.bulk_out(0x01, b"ping", 1000)
        try:
            dev.bulk_in(0x81, 4, 1000)
        except UsbError as e:
            out["stalled"] = [e.code.wit_name, str(e)]
        dev.clear_halt(0x81)
        out["after_clear"] = dev.bulk_in(0x81, 4, 1000).decode()
        try:
            dev.control_in(0xC0, 0x7F, 0, 0, 1, 1000)
        except UsbError as e:
            out["bad_request"] = e.code.wit_name
        print(json.dumps(out))
    """),
        stdin=-1,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "READY"
    emulator.halt("echo", 0x81)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    got = emulator.result(proc)
    assert got["stalled"][0] == "pipe"
    assert "1209:0001" in got["stalled"][1] and "bulk IN 0x81" in got["stalled"][1]
    assert got["after_clear"] == "ping"
    assert got["bad_request"] == "pipe"


def test_pyusb_backend_times_out_on_a_nak(emulator: Emulator) -> None:
    got = run(
        emulator,
        """
        import json
        from edgeagent.hw.pyusb_backend import PyUsbBackend
        from edgeagent.hw.usb import UsbError
        be = PyUsbBackend()
        dev = be.open(next(i for i in be.devices() if i.vid_pid == (0x1209, 1)))
        try:
            dev.interrupt_in(0x82, 8, 150)   # nothing queued: the device NAKs until libusb gives up
            out = "no error"
        except UsbError as e:
            out = e.code.wit_name
        dev.interrupt_out(0x02, b"late", 1000)  # the discarded URB left the endpoint usable
        print(json.dumps({"error": out, "after": dev.interrupt_in(0x82, 8, 1000).decode()}))
    """,
    )
    assert got == {"error": "timeout", "after": "late"}


def test_unplug_mid_transfer_is_no_device(emulator: Emulator) -> None:
    proc = emulator.spawn_python(
        textwrap.dedent("""
        import json
        from edgeagent.hw.pyusb_backend import PyUsbBackend
        from edgeagent.hw.usb import UsbError
        be = PyUsbBackend()
        dev = be.open(next(i for i in be.devices() if i.vid_pid == (0x1209, 1)))
        dev.claim_interface(0)
        out = {}
        try:
            dev.bulk_in(0x81, 64, 20000)     # pending until the device goes away
        except UsbError as e:
            out["in_flight"] = e.code.wit_name
        try:
            dev.bulk_out(0x01, b"x", 1000)
        except UsbError as e:
            out["after"] = e.code.wit_name
        out["events"] = [(ev.kind.name, ev.device.address) for ev in be.poll_events(2000)]
        print(json.dumps(out))
    """)
    )
    assert emulator.wait_pending("echo", 0x81, timeout=30)
    address = emulator.usb["echo"]["address"]
    emulator.unplug("echo")
    got = emulator.result(proc)
    assert got["in_flight"] == "no-device"
    assert got["after"] == "no-device"
    assert got["events"] == [["LEFT", address]]


def test_hotplug_arrived_and_left_through_libusb(emulator: Emulator) -> None:
    proc = emulator.spawn_python(
        textwrap.dedent("""
        import json, sys, time
        from edgeagent.hw.pyusb_backend import PyUsbBackend
        be = PyUsbBackend()
        print("READY", flush=True)
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(seen) < 2:
            for ev in be.poll_events(200):
                seen.append([ev.kind.name, ev.device.vid_pid[1], ev.device.address])
                if ev.kind.name == "ARRIVED":
                    print("ARRIVED", flush=True)
        print(json.dumps(seen))
    """)
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    info = emulator.plug("echo2", "echo", serial="ECHO0002")
    assert proc.stdout.readline().strip() == "ARRIVED"
    emulator.unplug("echo2")
    got = emulator.result(proc)
    assert got == [["ARRIVED", 1, info["address"]], ["LEFT", 1, info["address"]]]


def test_emulator_reports_bad_commands(emulator: Emulator) -> None:
    from edgeagent.hw.emulation.client import EmulationError

    with pytest.raises(EmulationError, match="unknown USB model"):
        emulator.plug("x", "toaster")
    assert json.dumps(emulator.stats()["usb"]["echo"])  # still alive and answering
