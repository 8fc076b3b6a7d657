"""The controllers benchmark's report assembly (measuring needs a cluster: `bench controllers`)."""

from __future__ import annotations

import pytest

from edgeagent.bench.controllers import SIZES, VARIANTS, _add_cases
from edgeagent.bench.harness import Report

# Synthetic PSS in MiB: fixed part + N x per-controller KiB, per variant.
FIXED = {"a": 30.0, "b": 29.0, "c": 0.0, "d": 37.0}
PER_KIB = {"a": 40.0, "b": 64.0, "c": 30_000.0, "d": 8.0}


def results() -> dict[tuple[str, int], dict[str, list[float]]]:
    out = {}
    for v in VARIANTS:
        for n in SIZES:
            mem = FIXED[v] + n * PER_KIB[v] / 1024
            out[(v, n)] = {"memory": [mem, mem + 0.01, mem - 0.01], "round": [0.1, 0.2, 0.3]}
            if v == "a":
                out[(v, n)]["wake"] = [0.001, 0.002, 0.003]
    return out


def test_report_derives_per_controller_fixed_part_and_the_swap_bound() -> None:
    report = Report("controllers")
    _add_cases(report, results())
    cases = {c.name: c for c in report.cases}
    per_a = cases["memory per additional controller (a) wasm host, swapping"]
    assert per_a.median == pytest.approx(40.0, abs=0.5) and per_a.target == 64.0
    fixed_a = cases["host fixed memory (a) wasm host, swapping, extrapolated to N=0"]
    assert fixed_a.median == pytest.approx(30.0, abs=0.05)
    bound = cases["swapped / resident controller (a)/(b), per additional controller"]
    assert bound.median == pytest.approx(40.0 / 64.0, abs=0.02)
    vs_b = cases["memory (a) vs (b), N=50"]
    assert vs_b.target == 0.5 and vs_b.baseline == "memory (b) wasm host, no swapping, N=50"
    assert cases["wake latency (a), N=50"].median == 0.002
