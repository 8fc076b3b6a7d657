"""The emulator process: a umockdev testbed with USB and I2C devices, controlled by JSON lines on stdin.

Run under ``umockdev-wrapper`` (the `client.Emulator` does): umockdev's uevent sender resolves sysfs paths
through the preload library, so hot-plug events can only come from a preloaded process. Programs under test
run as other processes with ``LD_PRELOAD=libumockdev-preload.so.0`` and ``UMOCKDEV_DIR`` set to the testbed
root; their ioctls arrive here, in umockdev's handler thread.

Argument: a JSON spec ``{"usb": [{"name": "echo", "model": "echo"}, ...], "i2c": [{"bus": 1, "parts":
[{"model": "tmp102", "address": 72}]}]}`` (a part may be ``{"model_file": "model.toml", "address": 68}`` or
``{"entry_point": "sht31", "address": 68}`` instead, see ``i2c_part``). The parts time their conversions on
the monotonic clock, or with ``"clock_file": PATH`` in the spec on a shared ``SimClock``
(edgeagent.hw.sim.clock) that a program under test advances when it skips a wait (the benchmarks). The
first stdout line is ``{"ready": true, "root": ..., "usb": {...}, "i2c": {...}}``; then each command line
gets one reply line.
Commands: ``plug`` (name, model), ``unplug`` (name), ``halt`` (name, endpoint), ``wait_pending`` (name,
endpoint, timeout), ``stats``, ``i2c_detach`` (bus, address), ``i2c_inject`` (bus, address, code), ``quit``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402 - gi.require_version must come first

import edgeagent.hw.sim  # noqa: E402
from edgeagent.hw.emulation import i2cdev, usbdevfs  # noqa: E402
from edgeagent.hw.i2c import ErrorCode  # noqa: E402
from edgeagent.hw.sim.clock import Clock, SimClock, new_part  # noqa: E402
from edgeagent.hw.sim.i2c_bus import SimI2cBus  # noqa: E402
from edgeagent.hw.sim.usb_echo import EchoDevice  # noqa: E402
from edgeagent.hw.sim.usb_function import UsbFunction  # noqa: E402
from edgeagent.hw.sim.usb_storage import MassStorageDevice  # noqa: E402

USB_BUS = 1


def usb_model(spec: dict[str, Any]) -> UsbFunction:
    kind = spec.get("model")
    if kind == "echo":
        return EchoDevice(serial=spec.get("serial", "ECHO0001"), mute=bool(spec.get("mute", False)))
    if kind == "storage":
        return MassStorageDevice(size=int(spec.get("size", 4 << 20)), serial=spec.get("serial", "DISK0001"))
    raise ValueError(f"unknown USB model {kind!r}")


def i2c_part(spec: dict[str, Any], clock: Clock = time.monotonic) -> Any:
    """A new sim model: ``model_file`` (a declarative TOML model, placed at ``address`` when its straps allow
    it), ``entry_point`` (a factory of the ``edgeagent.sim_models`` group), or ``model``: a class of
    edgeagent.hw.sim whose ``name`` it is (e.g. "tmp102"). ``clock``: what its conversions are timed on."""
    if "model_file" in spec:
        from edgeagent.hw.sim.declarative import load_model

        model = load_model(Path(spec["model_file"]))
        return model.part(model.place(int(spec["address"])) if "address" in spec else None, clock=clock)
    if "entry_point" in spec:
        from edgeagent.hw.sim.declarative import python_model

        return new_part(python_model(spec["entry_point"]), int(spec.get("address", 0)), clock)
    name = spec["model"]
    for module_info in pkgutil.iter_modules(edgeagent.hw.sim.__path__):
        if module_info.name.startswith("usb_"):
            continue
        module = importlib.import_module(f"edgeagent.hw.sim.{module_info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and getattr(value, "name", None) == name
                and hasattr(value, "transfer")
            ):
                return new_part(value, int(spec.get("address", getattr(value, "address", 0))), clock)
    raise ValueError(f"no I2C model named {name!r}")


class Emulation:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.testbed = UMockdev.Testbed.new()
        self.clock = clock
        self.usb: dict[str, dict[str, Any]] = {}
        self.i2c: dict[int, tuple[SimI2cBus, i2cdev.I2cDevHandler]] = {}
        self._next_address = 2
        self._next_port = 1

    # ------------------------------------------------------------ USB
    def plug(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        if name in self.usb:
            raise ValueError(f"a device named {name!r} is already plugged")
        model = usb_model(spec)
        model.reset()
        model.configuration = model.configurations[
            0
        ].bConfigurationValue  # the kernel's generic driver does this
        address, port = self._next_address, self._next_port
        self._next_address += 1
        self._next_port += 1
        syspath, node, description = usbdevfs.sysfs_description(
            model, bus=USB_BUS, address=address, port=port
        )
        sys_syspath = "/sys" + syspath

        def on_configuration(value: int) -> None:
            self.testbed.set_attribute(sys_syspath, "bConfigurationValue", str(value) if value else "")

        handler = usbdevfs.UsbdevfsHandler(model, on_configuration=on_configuration)
        self.testbed.add_from_string(description)
        self.testbed.attach_ioctl(node, handler)
        self.testbed.uevent(sys_syspath, "add")
        self.usb[name] = {
            "model": model,
            "handler": handler,
            "syspath": sys_syspath,
            "node": node,
            "bus": USB_BUS,
            "address": address,
        }
        return self.describe(name)

    def describe(self, name: str) -> dict[str, Any]:
        d = self.usb[name]
        return {
            "bus": d["bus"],
            "address": d["address"],
            "node": d["node"],
            "vid": d["model"].descriptor.idVendor,
            "pid": d["model"].descriptor.idProduct,
        }

    def unplug(self, name: str) -> dict[str, Any]:
        d = self.usb.pop(name)
        d["handler"].unplug()  # in-flight URBs complete with -ESHUTDOWN, later ioctls fail with ENODEV
        self.testbed.uevent(d["syspath"], "remove")
        self.testbed.remove_device(d["syspath"])
        return {"bus": d["bus"], "address": d["address"]}

    def wait_pending(self, name: str, endpoint: int | None, timeout: float) -> bool:
        handler: usbdevfs.UsbdevfsHandler = self.usb[name]["handler"]
        deadline = time.monotonic() + timeout
        with handler.lock:
            while not any(
                u.fields[1] == endpoint or endpoint is None
                for c in handler.clients.values()
                for u in c.pending
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                handler.pending_event.wait(left)
        return True

    # ------------------------------------------------------------ I2C
    def add_i2c(self, spec: dict[str, Any]) -> str:
        bus_number = int(spec.get("bus", 1))
        parts = [i2c_part(p, self.clock) for p in spec.get("parts", [])]
        bus = SimI2cBus(parts, name=f"emulated-i2c-{bus_number}")
        _, node, description = i2cdev.sysfs_description(bus_number)
        handler = i2cdev.I2cDevHandler(bus)
        self.testbed.add_from_string(description)
        self.testbed.attach_ioctl(node, handler)
        self.i2c[bus_number] = (bus, handler)
        return node

    # ------------------------------------------------------------ commands
    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "plug":
            return {"ok": True, **self.plug(cmd["name"], cmd)}
        if op == "unplug":
            return {"ok": True, **self.unplug(cmd["name"])}
        if op == "halt":
            self.usb[cmd["name"]]["model"].halt(int(cmd["endpoint"]))
            return {"ok": True}
        if op == "wait_pending":
            return {
                "ok": True,
                "pending": self.wait_pending(cmd["name"], cmd.get("endpoint"), float(cmd.get("wait", 5))),
            }
        if op == "stats":
            return {
                "ok": True,
                "usb": {n: dict(d["handler"].stats) for n, d in self.usb.items()},
                "i2c": {str(b): dict(h.stats) for b, (_, h) in self.i2c.items()},
            }
        if op == "i2c_detach":
            self.i2c[int(cmd["bus"])][0].detach(int(cmd["address"]))
            return {"ok": True}
        if op == "i2c_inject":
            self.i2c[int(cmd["bus"])][0].inject(
                int(cmd["address"]), ErrorCode(cmd["code"]), int(cmd.get("count", 1))
            )
            return {"ok": True}
        raise ValueError(f"unknown command {op!r}")


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0]) if argv else {}
    clock_file = spec.get("clock_file")
    emu = Emulation(SimClock(path=Path(clock_file)).now if clock_file else time.monotonic)
    usb_nodes = {s["name"]: emu.plug(s["name"], s) for s in spec.get("usb", [])}
    i2c_nodes = {str(s.get("bus", 1)): emu.add_i2c(s) for s in spec.get("i2c", [])}
    print(
        json.dumps({"ready": True, "root": emu.testbed.get_root_dir(), "usb": usb_nodes, "i2c": i2c_nodes}),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            reply = emu.command(cmd)
        except Exception as e:  # a bad command is reported to the controller, the emulator keeps running
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
