"""Fleet scale on real components: devices that are separate processes (their own swtpm with its own EK,
their own `edgeagent agent`), one Keylime and one controller process, as `edgeagent bench fleet` runs them.

- With Keylime's "agent" notifier off (it tells every agent of every revocation: N x N requests when a
  fleet is revoked at once), the controller itself tells the revoked device, and only it: the device drops
  its credential, the other keeps its own.
- `edgeagent bench fleet` runs end to end at a small N and reports what the issue asks for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.testbed import fleet
from edgeagent.testbed.cluster_side import ClusterSide, pin_device
from tests.fixtures import procs

pytestmark = pytest.mark.integration


def test_the_controller_tells_only_the_revoked_device(tmp_path: Path) -> None:
    ca, tpms = fleet.manufacture(2)
    side = ClusterSide(tmp_path / "cluster", [ca], controller_process=True,
                       keylime_settings={"agent_notifications": False})
    devices: list[fleet.FleetDevice] = []
    try:
        side.start(timeout=60)
        for i, tpm in enumerate(tpms):
            d = fleet.FleetDevice(tmp_path / f"device-{i}", f"told-{i}", tpm, side.keylime)
            devices.append(d)
            d.power_on()
            pin_device(side.api, d.name, ek_cert=d.ek_cert, agent_uuid=d.agent_uuid,
                       agent_address=f"127.0.0.1:{d.port}", register_node=False)
            d.boot()
        _, failed = fleet.wait_all(devices, timeout=180)
        assert not failed, failed
        victim, bystander = devices
        victim.tamper()
        # the device deletes its files, saves its state, and only then logs: wait for all of it
        told = ("verifier revoked this agent (edgeagent.QuoteFailed",
                "verifier revoked this agent (edgeagent.RevocationNotified")

        def dropped_on_our_word() -> bool:
            log = (victim.root / "agent.log").read_text()
            return not victim.kubeconfig.exists() and any(t in log for t in told)

        procs.wait_for(dropped_on_our_word, timeout=60,
                       what="the revoked device to drop its credential on the controller's revocation")
        assert bystander.kubeconfig.exists()
        assert "revoked another agent" not in (bystander.root / "agent.log").read_text()
    finally:
        for d in devices:
            d.stop()
        side.stop()


def test_bench_fleet_reports_a_small_fleet(tmp_path: Path) -> None:
    out, plot = tmp_path / "fleet.json", tmp_path / "fleet.png"
    done = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.entry", "bench", "fleet", "-N", "2", "--settle", "1",
         "--window", "3", "--webhook-only", "-o", str(out), "--plot", str(plot)],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["meta"]["per_n"]["2"]
    assert "error" not in figures and not figures["failed"]
    assert len(figures["enroll_s"]["all"]) == 2
    assert figures["cpu_s"]["devices"] > 0 and figures["cpu_s"]["controller"] > 0
    assert figures["controller_requests_enroll_total"] > 0  # the audit log saw the controller's user
    assert figures["tamper_to_denied_s"] > 0 and figures["disturbed"] == [] and figures["stalled"] == []
    assert plot.stat().st_size > 10_000
    assert "edgeagent bench fleet" in done.stdout and str(out) in done.stdout.replace("\n", "")
