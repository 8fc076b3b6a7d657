"""What an agent with I2C drivers and no controllers loads: parts it does not use stay unimported, because a
Python module costs resident memory for the life of the service (issue 10's memory target; the figures are
`edgeagent bench agent`'s import breakdown)."""

from __future__ import annotations

import subprocess
import sys

# Everything the service process imports on that path: at start, and lazily as its parts run.
AGENT_PATH = ", ".join(
    [
        "edgeagent.agent.__main__",
        "edgeagent.agent.supervisor",
        "edgeagent.agent.metrics",
        "edgeagent.measure.measurer",
        "edgeagent.attest.enroll",
        "edgeagent.drivers.session",
        "edgeagent.drivers.bundled",
        "edgeagent.drivers.loader",
        "edgeagent.controllers.measured",
        "edgeagent.controllers.manifest",
        "edgeagent.wasm.bundle",
    ]
)
NOT_LOADED = (
    "wasmtime.component",  # component drivers only
    "edgeagent.wasm.component",
    "edgeagent.drivers.usb_session",  # USB drivers only
    "edgeagent.controllers.host",  # controllers only
    "concurrent.futures",
    "tarfile",  # bundle archives only
    "statistics",
    "kubernetes",
)


def test_an_i2c_only_agent_without_controllers_leaves_the_rest_unimported() -> None:
    check = f"import {AGENT_PATH}, sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert "edgeagent.drivers.session" in loaded and "wasmtime" in loaded  # the check itself ran
    assert sorted(m for m in NOT_LOADED if m in loaded) == []
