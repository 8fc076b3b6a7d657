"""etc/agent.toml, the installed default configuration: valid, and documenting every key there is."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from edgeagent.config import AgentConfig, DriverInstance, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "agent.toml"


def test_the_example_config_loads():
    cfg = load_config(EXAMPLE, env={})
    assert cfg.drivers.instances[0].name == "climate"
    assert cfg.drivers.instances[0].policy is None  # "" is "not set"


def _keys(obj: object) -> set[str]:
    return {f.name for f in dataclasses.fields(obj) if f.name != "source"}  # type: ignore[arg-type]


def test_the_example_config_shows_every_key():
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = AgentConfig()
    top = {k for k in _keys(cfg) if not dataclasses.is_dataclass(getattr(cfg, k))}
    assert top <= set(data), f"missing top-level keys: {top - set(data)}"
    for section in _keys(cfg) - top:
        want = _keys(getattr(cfg, section))
        assert want <= set(data[section]), f"[{section}] misses {want - set(data[section])}"
    assert _keys(DriverInstance()) <= set(data["drivers"]["instances"][0])
