"""The common benchmark harness: repetitions, medians, ratios against a baseline measured in the same run.

A benchmark module builds a `Report` from `Case`s; each case holds raw samples (seconds, or a unit of its
own) so the JSON keeps everything needed to recompute a figure. A case may name a `baseline` case of the same
report: its ratio (this median / baseline median) is what a claim like "Wasm within +3% of native" is
checked against. A case may carry a `target` (upper bound on the median, or on the ratio) which the report
marks met or missed; targets are reported, never asserted in tests.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent import __version__


@dataclasses.dataclass
class Case:
    name: str
    samples: list[float]
    unit: str = "s"  # "s" samples are seconds; anything else is taken as is (e.g. "MB/s", "KiB")
    baseline: str | None = None
    target: float | None = None  # bound on the median (or on the ratio when target_is_ratio)
    target_is_ratio: bool = False
    higher_is_better: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


@dataclasses.dataclass
class Report:
    area: str
    cases: list[Case] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)

    def ratio(self, case: Case) -> float | None:
        if case.baseline is None:
            return None
        base = self.case(case.baseline).median
        return case.median / base if base else None

    def target_met(self, case: Case) -> bool | None:
        if case.target is None:
            return None
        value = self.ratio(case) if case.target_is_ratio else case.median
        if value is None:
            return None
        return value >= case.target if case.higher_is_better else value <= case.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "edgeagent": __version__,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": {
                "machine": platform.machine(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            "meta": self.meta,
            "cases": [
                {
                    "name": c.name,
                    "unit": c.unit,
                    "n": len(c.samples),
                    "median": c.median,
                    "p90": c.p90,
                    "stdev": c.stdev,
                    "min": min(c.samples),
                    "max": max(c.samples),
                    "baseline": c.baseline,
                    "ratio": self.ratio(c),
                    "target": c.target,
                    "target_is_ratio": c.target_is_ratio,
                    "higher_is_better": c.higher_is_better,
                    "target_met": self.target_met(c),
                    "note": c.note,
                    "samples": c.samples,
                }
                for c in self.cases
            ],
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)


def timeit(fn: Callable[[], Any], *, repeat: int, warmup: int = 1, inner: int = 1) -> list[float]:
    """Runs ``fn`` ``warmup`` times, then ``repeat`` samples of ``inner`` calls each; seconds per call.

    GC is paused during a sample so a collection does not land in one sample of a few microseconds.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    enabled = gc.isenabled()
    try:
        for _ in range(repeat):
            gc.disable()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            dt = time.perf_counter() - t0
            if enabled:
                gc.enable()
            samples.append(dt / inner)
    finally:
        if enabled:
            gc.enable()
    return samples


def format_value(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.2f} us"
        if value < 1:
            return f"{value * 1e3:.3f} ms"
        return f"{value:.3f} s"
    return f"{value:.3g} {unit}"
