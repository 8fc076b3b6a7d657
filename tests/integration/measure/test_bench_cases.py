"""The measurement bench cases run against a real swtpm and report figures (never asserted on time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.bench.harness import Report
from edgeagent.bench.measure_cases import add_cases, tcg2_log
from edgeagent.config import AgentConfig
from edgeagent.measure import tcg2
from edgeagent.tpm import Tpm
from edgeagent.tpm.swtpm import SoftwareTpm

pytestmark = pytest.mark.integration


def test_generated_log_has_1000_events() -> None:
    log = tcg2.parse(tcg2_log())
    assert len(log.events) == 1000 and log.pcrs == list(range(10))


def test_add_cases(tmp_path: Path, fresh_swtpm: SoftwareTpm) -> None:
    report = Report("tpm")
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        add_cases(report, AgentConfig(state_dir=tmp_path / "state"), tpm, repeat=3)
    assert [c.name.split(",")[0] for c in report.cases] == [
        "replay TCG2 log",
        "replay CEL log",
        "cold measure of the agent's package",
    ]
    assert all(len(c.samples) == 3 and min(c.samples) > 0 for c in report.cases)
    assert report.case("replay TCG2 log, 1,000 events (sha1+sha256)").target == 0.020
