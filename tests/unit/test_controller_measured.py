"""Module verification against `edgeagent measure`'s event log (the CEL file records of the last segment)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from edgeagent.config import AgentConfig
from edgeagent.controllers.measured import measured_digests
from edgeagent.measure import cel, measurer

MODULE = Path(__file__).resolve().parents[2] / "controllers" / "build" / "ring.wasm"


def write_log(config: AgentConfig, files: dict[Path, str]) -> None:
    records = [
        cel.make_record(
            i,
            config.measure.pcr,
            {"type": cel.FILE, "component": "controller", "name": p.name, "path": str(p), "sha256": sha},
            ["sha256"],
        )
        for i, (p, sha) in enumerate(files.items())
    ]
    with cel.CelLog.open(measurer.log_path(config), write=True) as log:
        log.append(records)


@pytest.fixture
def module(tmp_path: Path) -> Path:
    if not MODULE.exists():
        pytest.fail("controllers not built: make -C controllers")
    dst = tmp_path / "ring.wasm"
    shutil.copy(MODULE, dst)
    return dst


def test_no_log_means_no_policy(tmp_path: Path) -> None:
    assert measured_digests(AgentConfig(state_dir=tmp_path)) is None


def test_lookup_returns_the_measured_digest(tmp_path: Path, module: Path) -> None:
    cfg = AgentConfig(state_dir=tmp_path)
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    write_log(cfg, {module: digest})
    lookup = measured_digests(cfg)
    assert lookup is not None
    assert lookup(module) == digest
    assert lookup(tmp_path / "other.wasm") is None


def test_host_refuses_a_module_changed_after_measurement(tmp_path: Path, module: Path) -> None:
    from edgeagent.controllers.host import ControllerHost, HostOptions
    from edgeagent.controllers.manifest import parse_manifest
    from edgeagent.errors import ControllerError

    cfg = AgentConfig(state_dir=tmp_path)
    write_log(cfg, {module: hashlib.sha256(b"what was measured").hexdigest()})
    host = ControllerHost(None, HostOptions(state_dir=tmp_path, digest_for=measured_digests(cfg)))
    try:
        with pytest.raises(ControllerError, match="does not match its measured digest"):
            host.add(
                parse_manifest(
                    {
                        "name": "ring",
                        "module": str(module),
                        "config": {"next": "x"},
                        "watches": [{"version": "v1", "kind": "ConfigMap", "plural": "configmaps"}],
                    }
                )
            )
    finally:
        host.stop()
