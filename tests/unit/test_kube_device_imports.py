"""The device side reaches the API server through edgeagent.kube only: the official kubernetes client's import
alone costs ~18 MB of RSS, on a device that sends two CSR requests."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules",
    ["edgeagent.attest.enroll", "edgeagent.kube.api, edgeagent.kube.watch, edgeagent.kube.errors"],
)
def test_the_device_side_does_not_import_the_official_kubernetes_client(modules: str) -> None:
    check = f"import {modules}, sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
