"""`edgeagent bench drivers` runs end to end and reports every case it promises, with figures it measured.

Smoke only: three repetitions, and no assertion on a time or a ratio (those are the benchmark's business).
What would fail here is a case that crashes, goes missing, or reports no samples.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.bench import drivers_components, drivers_emulated

pytestmark = pytest.mark.integration

EDGEAGENT = Path(sys.executable).parent / "edgeagent"


def test_bench_drivers_reports_every_case(tmp_path: Path, wasm_build: Path, component_build: Path) -> None:
    out = tmp_path / "drivers.json"
    p = subprocess.run(
        [str(EDGEAGENT), "bench", "drivers", "-n", "3", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    cases = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    expected = [f"{s} read, Wasm (I2C_RDWR, emulated /dev/i2c-1)" for s in drivers_emulated.SENSORS]
    expected += [
        f"usb {k} ping {n} B, Wasm (emulated, libusb)"
        for k in drivers_emulated.KINDS
        for n in drivers_emulated.PING_SIZES
    ]
    expected += [f"usb storage {w}, Wasm (emulated, libusb)" for w in drivers_emulated.STORAGE_WORKLOADS]
    expected += [f"usb storage {w}, Wasm (pyusb on sim)" for w in drivers_emulated.STORAGE_WORKLOADS]
    expected += [
        f"{sensor} read, component {name} (I2C_RDWR, emulated)"
        for sensor, names in drivers_components.COMPONENTS.items()
        for name in names
    ]
    expected += [
        "component host call (component -> Python, null u32 function)",
        "component export call (Python -> component, null u32 function)",
        "cold: first reading component bme280_component from cache",
    ]
    expected += ["host call (Wasm -> Python, null function)", "cold: cache load bme280"]
    expected += ["cold: cache load component bme280_component"]
    missing = [name for name in expected if name not in cases]
    assert not missing, f"missing cases: {missing}"
    for name in expected:
        case = cases[name]
        assert len(case["samples"]) >= 3, name
        assert all(math.isfinite(x) and x > 0 for x in case["samples"]), name
    for name in expected[:-3]:  # compared cases: against a native baseline measured in the same run
        assert cases[name]["baseline"] in cases and cases[name]["ratio"] > 0, name
    assert "MB/s" in p.stdout and f"JSON written to {out}" in p.stdout.replace("\n", "")
