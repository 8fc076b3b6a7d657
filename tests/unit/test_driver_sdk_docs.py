"""The driver SDK documentation is enough to write a driver: the README's I2C and USB skeletons build with the
documented flags and run against simulated devices, through the library and through `edgeagent run-driver`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from edgeagent.cli.main import main
from edgeagent.drivers.hosts.usb import UsbGrant
from edgeagent.drivers.runner import I2cDriver
from edgeagent.drivers.usb_driver import UsbEchoWasm
from edgeagent.errors import AccessDenied, HardwareError
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.sim.i2c_device import RegisterDevice
from edgeagent.hw.sim.usb_bus import SimUsbBus
from edgeagent.hw.sim.usb_echo import EchoDevice
from edgeagent.wasm import ModuleCache

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "drivers" / "README.md"


def build_skeleton(tmp_path: Path, kind: str, name: str | None = None) -> Path:
    """The README's ``<!-- skeleton: KIND -->`` C block, built with the README's command line."""
    text = README.read_text()
    (code,) = re.findall(rf"<!-- skeleton: {kind}\b[^>]*-->\n```c\n(.*?)```", text, re.S)
    (cmd,) = re.findall(r"```\n(clang-14 .*?)```", text, re.S)
    src = tmp_path / f"{kind}.c"
    src.write_text(code)
    clang = shutil.which("clang-14")
    assert clang, "clang-14 is a system dependency (scripts/install-system-deps.sh)"
    argv = cmd.replace("\\\n", " ").split()
    argv = [a.replace("-Iinclude", f"-I{ROOT / 'drivers' / 'include'}") for a in argv]
    out = tmp_path / f"{name or kind}.wasm"
    argv[argv.index("-o") + 1] = str(out)
    argv[-1] = str(src)
    subprocess.run(argv, check=True, cwd=tmp_path)
    return out


@pytest.fixture
def skeleton(tmp_path) -> Path:
    return build_skeleton(tmp_path, "i2c")


def test_readme_skeleton_builds_and_reads(runtime, skeleton):
    part = RegisterDevice(0x40)
    part.regs[0x0F] = 0x42
    part.regs[0x00:0x02] = bytes([0x19, 0x80])  # 25.5 in the skeleton's 8.8 fixed point
    module = ModuleCache(None).load_file(runtime, skeleton)
    with I2cDriver(
        "x", module, runtime=runtime, bus=SimI2cBus([part]), address=0x40, granted=frozenset({0x40})
    ) as drv:
        assert drv.read().values == {"temperature": 25.5}
    absent = SimI2cBus()
    with pytest.raises(HardwareError, match=r"driver x: init failed: no-acknowledge\(address\)"):
        I2cDriver("x", module, runtime=runtime, bus=absent, address=0x40, granted=frozenset({0x40}))


def test_readme_usb_skeleton_builds_and_pings(runtime, tmp_path):
    module = ModuleCache(None).load_file(runtime, build_skeleton(tmp_path, "usb"))
    bus = SimUsbBus()
    bus.plug(EchoDevice())
    with UsbEchoWasm(
        module, name="myecho", runtime=runtime, backend=bus, grants=[UsbGrant(0x1209, 1, 0)]
    ) as drv:
        drv.init()
        assert [drv.ping(kind, n) for kind in ("bulk", "interrupt", "control") for n in (1, 64, 512)] == [
            1,
            64,
            512,
        ] * 3
    with (
        UsbEchoWasm(module, name="myecho", runtime=runtime, backend=bus, grants=[UsbGrant(0x1209, 2)]) as drv,
        pytest.raises(
            AccessDenied, match="driver myecho: init: access denied by policy to USB device 1209:0001"
        ),
    ):
        drv.init()


def test_readme_usb_skeleton_runs_with_run_driver(tmp_path, monkeypatch, capsys, wasm_build):
    """Step 7 of the README, as written: the module by path, the README's policy, simulated devices."""
    wasm = build_skeleton(tmp_path, "usb", "myecho")
    (policy_text,) = re.findall(r"```toml\n( *driver = \"myecho\".*?)```", README.read_text(), re.S)
    policy = tmp_path / "myecho.toml"
    policy.write_text(textwrap.dedent(policy_text))
    monkeypatch.setenv("EDGEAGENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGEAGENT_POLICIES_DIR", str(tmp_path / "policies"))
    with pytest.raises(SystemExit) as ei:
        main(["run-driver", str(wasm), "--policy", str(policy), "--sim", "--count", "2", "--interval", "0"])
    out, err = capsys.readouterr()
    assert ei.value.code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["driver"] for r in rows] == ["myecho", "myecho"]
    assert all(r["values"]["bulk"] > 0 and r["values"]["control"] > 0 for r in rows)
