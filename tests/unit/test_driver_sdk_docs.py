"""The driver SDK documentation is enough to write a driver: the README's skeleton builds with the documented
flags and runs against a simulated part."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeagent.drivers.runner import I2cDriver
from edgeagent.errors import HardwareError
from edgeagent.hw.sim.i2c_bus import SimI2cBus
from edgeagent.hw.sim.i2c_device import RegisterDevice
from edgeagent.wasm import ModuleCache

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "drivers" / "README.md"


@pytest.fixture
def skeleton(tmp_path) -> Path:
    text = README.read_text()
    (code,) = re.findall(r"```c\n(.*?)```", text, re.S)
    (cmd,) = re.findall(r"```\n(clang-14 .*?)```", text, re.S)
    src = tmp_path / "x.c"
    src.write_text(code)
    clang = shutil.which("clang-14")
    assert clang, "clang-14 is a system dependency (scripts/install-system-deps.sh)"
    argv = cmd.replace("\\\n", " ").split()
    argv = [a.replace("-Iinclude", f"-I{ROOT / 'drivers' / 'include'}") for a in argv]
    argv[argv.index("-o") + 1] = str(tmp_path / "x.wasm")
    argv[-1] = str(src)
    subprocess.run(argv, check=True, cwd=tmp_path)
    return tmp_path / "x.wasm"


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
