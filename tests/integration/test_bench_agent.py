"""`edgeagent bench agent` end to end with short windows: every promised case is there, with finite samples
and baselines from the same run. Figures are reported, never asserted (the machine is shared)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from edgeagent.bench import agent as bench_agent
from edgeagent.cli.bench import AREAS
from edgeagent.config import AgentConfig

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def guests(wasm_build: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(REPO / "controllers")], check=True)


def test_bench_agent_reports_every_case(tmp_path: Path) -> None:
    assert AREAS["agent"][0] == "edgeagent.bench.agent"
    report = bench_agent.run(AgentConfig(state_dir=tmp_path / "unused"), repeat=3, window=2.0)

    a = "(a) agent: attesting + 3 drivers"
    b = "(b) agent: (a) + 20 controllers swapped"
    s1a = "(1a) separate: enroll + 3 run-driver"
    s1b = "(1b) separate: (1a) + controllers run"
    floor = "floor: python + tpm2_pytss/wasmtime/cryptography.x509/ssl"
    expected = {
        f"{floor}, RSS": ("MiB", None, None),
        f"{floor}, PSS": ("MiB", None, None),
        f"{a}, RSS": ("MiB", f"{floor}, RSS", None),
        f"{a}, PSS": ("MiB", f"{floor}, PSS", None),
        f"{a} - floor, RSS": ("MiB", None, 6.0),
        f"{a} - floor, PSS": ("MiB", None, 6.0),
        f"{b}, RSS": ("MiB", f"{floor}, RSS", None),
        f"{b}, PSS": ("MiB", f"{floor}, PSS", None),
        f"{b} - floor, RSS": ("MiB", None, 14.0),
        f"{b} - floor, PSS": ("MiB", None, 14.0),
        f"{s1a}, RSS": ("MiB", None, None),
        f"{s1a}, PSS": ("MiB", None, None),
        f"{s1b}, RSS": ("MiB", None, None),
        f"{s1b}, PSS": ("MiB", None, None),
        f"{a} vs (1a), PSS": ("MiB", f"{s1a}, PSS", None),
        f"{b} vs (1b), PSS": ("MiB", f"{s1b}, PSS", None),
        f"idle CPU {a}": ("%", None, 1.0),
        f"idle CPU {b}": ("%", None, 1.0),
        f"idle CPU {s1a}": ("%", None, None),
        f"idle CPU {s1b}": ("%", None, None),
        "start -> READY=1 (edgeagent agent, enrolled)": ("s", None, 1.0),
        "start -> READY=1 (python -m edgeagent.agent)": ("s", None, None),
        "SIGKILL -> new process -> READY=1": ("s", None, 1.0),
    }
    working = "working floor: the floor + one Wasm instance called + one TLS handshake"
    for kind in ("RSS", "PSS"):
        expected[f"{working}, {kind}"] = ("MiB", None, None)
        expected[f"(a) agent - working floor, {kind}"] = ("MiB", None, None)
        expected[f"(b) agent + 20 controllers - working floor, {kind}"] = ("MiB", None, None)
    cases = {c.name: c for c in report.cases}
    assert sorted(cases) == sorted(expected)
    for name, (unit, baseline, target) in expected.items():
        c = cases[name]
        assert (c.unit, c.baseline, c.target) == (unit, baseline, target), name
        assert len(c.samples) >= 3 and all(math.isfinite(v) for v in c.samples), name
        if baseline is not None:
            ratio = report.ratio(c)  # the baseline is a case of this same report
            assert ratio is not None and math.isfinite(ratio), name
        if target is not None:
            assert report.target_met(c) in (True, False), name
    for name, c in cases.items():  # memory and times are positive, whatever their size
        if c.unit in ("MiB", "s") and " - " not in name:
            assert min(c.samples) > 0, name
    meta = report.meta
    assert meta["quote_interval_s"] > 0 and meta["wasmtime"] and meta["python"]
    assert len(meta["load_before"]) == 3 and len(meta["load_after"]) == 3
    assert set(meta["load_during"]) == {"a", "b", "1a", "1b"}
    assert [s["import"] for s in meta["imports"]][:2] == ["python", "ssl"]
    kinds = meta["memory_kinds_mib"]
    assert {"floor", "working floor", "a", "b", "1a", "1b"} <= set(kinds)
    for k in kinds.values():  # anonymous + file-backed = resident, for every process measured
        assert k["rss"] > 0 and abs(k["anonymous"] + k["file"] - k["rss"]) < 0.05
    # the working floor ran the libraries the plain floor only loaded: more of their code is resident
    assert kinds["working floor"]["file"] > kinds["floor"]["file"]
    out = tmp_path / "agent.json"
    report.write_json(out)
    assert {c["name"] for c in json.loads(out.read_text())["cases"]} == set(expected)
