"""The reference docs name every key the parsers accept, and the bundled files point at them (not at code)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (ROOT / "docs" / "reference.md").read_text()
SIMULATE = (ROOT / "docs" / "simulate.md").read_text()


def keys_read_in(path: Path) -> set[str]:
    src = path.read_text()
    return set(re.findall(r'\.(?:string|strs|number|size|tables|_get|get)\(\s*"([a-z_-]+)"', src))


def test_every_manifest_key_is_in_the_reference() -> None:
    keys = keys_read_in(ROOT / "edgeagent" / "controllers" / "manifest.py")
    assert {"name", "module", "watches", "grants", "api_groups", "log_lines_per_second"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in REFERENCE and f"`[[{k}]]`" not in REFERENCE)
    assert not missing, missing
    for camel in ("apiGroups", "resourceNames", "labelSelector"):
        assert f"`{camel}`" in REFERENCE


def test_every_policy_key_is_in_the_reference() -> None:
    from edgeagent.drivers import policy

    keys = set(policy._TOP_KEYS) | {"bus", "addresses", "vid", "pid", "interface"}
    missing = sorted(k for k in keys if f"`{k}`" not in REFERENCE and f"[[{k}]]" not in REFERENCE)
    assert not missing, missing


def test_every_model_key_is_in_the_simulation_doc() -> None:
    keys = keys_read_in(ROOT / "edgeagent" / "hw" / "sim" / "declarative.py")
    assert {"address", "conversion_ms", "crc", "busy"} <= keys
    missing = sorted(k for k in keys if not re.search(rf"^\s*\[*{k}\b|\b{k} =|{{ {k} =", SIMULATE, re.M))
    assert not missing, missing


def test_bundled_policies_point_at_the_docs_not_at_code() -> None:
    # Before: "see edgeagent/drivers/policy.py for the format".
    for p in (ROOT / "policies").rglob("*.toml"):
        text = p.read_text()
        assert ".py" not in text, p
        assert "docs/reference.md" in text, p
    assert (ROOT / "docs" / "reference.md").is_file()
