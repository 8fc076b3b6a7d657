"""Reference policy: format, atomic write, checker, and the documented example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeagent.errors import ReferencePolicyError
from edgeagent.measure import policy

A, B, C = "a" * 64, "b" * 64, "c" * 64
REPO = Path(__file__).resolve().parents[3]


def test_write_load_round_trip(tmp_path: Path) -> None:
    pol = policy.from_measurements(
        23,
        [
            ("package", "edgeagent/x.py", A),
            ("package", "edgeagent/x.py", B),
            ("config", "/etc/edgeagent/agent.toml", C),
        ],
    )
    out = tmp_path / "sub" / "policy.json"
    policy.write(out, pol)
    assert policy.load(out) == pol
    assert json.loads(out.read_text())["components"]["edgeagent/x.py"] == {
        "component": "package",
        "sha256": [A, B],
    }
    assert [p.name for p in out.parent.iterdir()] == ["policy.json"]  # no temp file left behind
    policy.write(out, policy.from_measurements(23, []))  # replaced atomically
    assert policy.load(out).components == {}


def test_checker_findings() -> None:
    pol = policy.from_measurements(23, [("package", "p", A), ("driver", "drivers/tmp102.wasm", B)])
    assert policy.check(pol, {"p": ("package", A), "drivers/tmp102.wasm": ("driver", B)}, pcr=23) == []
    found = policy.check(pol, {"p": ("package", C), "new": ("extra", A)}, pcr=22)
    assert [(f.kind, f.name) for f in found] == [
        ("pcr", ""),
        ("unknown", "new"),
        ("digest", "p"),
        ("missing", "drivers/tmp102.wasm"),
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a JSON object"),
        ({"version": 2, "pcr": 23, "components": {}}, "version 2"),
        ({"version": 1, "pcr": 99, "components": {}}, "pcr 99"),
        ({"version": 1, "pcr": 23, "components": {}, "extra": 1}, "unknown key 'extra'"),
        (
            {"version": 1, "pcr": 23, "components": {"x": {"component": "p", "sha256": ["AB"]}}},
            "64 lowercase hex",
        ),
        ({"version": 1, "pcr": 23, "components": {"x": {"component": "p", "sha256": []}}}, "sha256 list"),
        ({"version": 1, "pcr": 23, "hash_alg": "sha1", "components": {}}, "hash_alg"),
    ],
)
def test_malformed_policies(tmp_path: Path, doc: object, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferencePolicyError, match=message):
        policy.load(path)


def test_unreadable_policy(tmp_path: Path) -> None:
    with pytest.raises(ReferencePolicyError, match="cannot read policy"):
        policy.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ReferencePolicyError, match="not valid JSON"):
        policy.load(tmp_path / "bad.json")


def test_documented_example_is_a_valid_policy() -> None:
    example = policy.load(REPO / "policies" / "measurement-policy.example.json")
    assert example.pcr == 23 and example.components
