"""Controllers from a ConfigMap: parsing its keys, reconciling the host when it changes (no API server)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeagent.controllers.host import ControllerHost, HostOptions, State
from edgeagent.controllers.source import ConfigMapSource, parse_configmap
from tests.unit.test_controller_host import RecordingApi, event

CONTROLLERS = Path(__file__).resolve().parents[2] / "controllers"
PROBE = CONTROLLERS / "build" / "testing" / "probe.wasm"
RING = CONTROLLERS / "build" / "ring.wasm"
ORIGIN = "configmap t/ctl"


@pytest.fixture(scope="module", autouse=True)
def guests() -> None:
    subprocess.run(["make", "-s", "-C", str(CONTROLLERS)], check=True)


def manifest(name: str = "p", module: str = "probe.wasm", **extra: Any) -> str:
    return json.dumps(
        {
            "name": name,
            "module": module,
            "config": {"namespace": "t", "out": "o"},
            "watches": [{"version": "v1", "kind": "ConfigMap", "plural": "configmaps", "namespace": "t"}],
            "grants": [{"verbs": ["create", "patch"], "resources": ["configmaps"], "namespaces": ["t"]}],
            **extra,
        }
    )


def configmap(data: dict[str, str], modules: dict[str, bytes] | None = None) -> dict[str, Any]:
    modules = {"probe.wasm": PROBE.read_bytes()} if modules is None else modules
    return {
        "metadata": {"namespace": "t", "name": "ctl"},
        "data": data,
        "binaryData": {k: base64.b64encode(v).decode() for k, v in modules.items()},
    }


def test_parse_reports_each_bad_key_and_keeps_the_good_ones() -> None:
    cm = configmap(
        {
            "good.controller.json": manifest(),
            "README": "not a manifest: ignored",
            "bad.toml": "name = [",
            "nomodule.controller.json": manifest("q", module="absent.wasm"),
            "elsewhere.controller.json": manifest("r", module="/usr/lib/x.wasm"),
            "twice.controller.json": manifest(),  # sorted after good: the second "p"
        }
    )
    entries, errors = parse_configmap(cm, ORIGIN)
    assert list(entries) == ["p"]
    (entry,) = entries.values()
    assert entry.module == PROBE.read_bytes()
    assert entry.sha256 == hashlib.sha256(PROBE.read_bytes()).hexdigest()
    assert entry.manifest.module == Path("controllers/probe.wasm")  # the measured name of such a module
    assert "not valid TOML" in errors["bad.toml"]
    assert "'absent.wasm' is not in the binaryData" in errors["nomodule.controller.json"]
    assert "must name a binaryData key" in errors["elsewhere.controller.json"]
    assert "defined twice" in errors["twice.controller.json"]
    cm["binaryData"]["probe.wasm"] = "***"
    _, errors = parse_configmap(cm, ORIGIN)
    assert "not base64" in errors["good.controller.json"]


@pytest.fixture
def host(tmp_path: Path) -> Any:
    h = ControllerHost(RecordingApi(), HostOptions(state_dir=tmp_path))  # type: ignore[arg-type]
    h.hub = None
    yield h
    h.stop()


def test_reload_keeps_unchanged_restarts_changed_module_and_removes_dropped(host: ControllerHost) -> None:
    source = ConfigMapSource(host, host.api, "t", "ctl")  # type: ignore[arg-type]
    api: RecordingApi = host.api  # type: ignore[assignment]
    try:
        assert source.apply(configmap({"p.controller.json": manifest()})) == []
        host.start()
        p = host.controllers["p"]
        assert p.origin == ORIGIN and p.manifest.module == Path("controllers/probe.wasm")
        p.post(event("1"))
        assert host.wait_idle(10)

        # The same content again (the watch's first list): nothing restarts.
        source.apply(configmap({"p.controller.json": manifest()}))
        assert host.controllers["p"] is p

        # Only the grants change: the state is handed over through the snapshot.
        wider = manifest(grants=[{"verbs": ["*"], "resources": ["configmaps"], "namespaces": ["t"]}])
        source.apply(configmap({"p.controller.json": wider}))
        p2 = host.controllers["p"]
        assert p2 is not p and p2.state == State.SWAPPED
        p2.post(event("2"))
        assert host.wait_idle(10)
        assert (api.published()["count"], api.published()["seq"]) == ("2", "1,2")

        # A new module: a fresh start, the snapshot discarded.
        patched = PROBE.read_bytes() + b"\0\x05\x04note"  # a custom section: same code, another digest
        source.apply(configmap({"p.controller.json": wider}, {"probe.wasm": patched}))
        p3 = host.controllers["p"]
        assert p3.sha256 == hashlib.sha256(patched).hexdigest() and p3.state == State.ACTIVE
        p3.post(event("3"))
        assert host.wait_idle(10)
        assert (api.published()["count"], api.published()["seq"]) == ("1", "3")

        # A broken edit stops the controller it replaced and says why; a deleted ConfigMap stops all.
        errors = source.apply(configmap({"p.controller.json": "{"}))
        assert "p" not in host.controllers and "not valid JSON" in errors[0]
        assert any(k.startswith(ORIGIN) for k in host.failed_loads)
        source.apply(configmap({"p.controller.json": manifest(), "r.controller.json": manifest("r")}))
        assert sorted(host.controllers) == ["p", "r"] and not host.failed_loads
        source.apply({})
        assert host.controllers == {}
    finally:
        source.stop()


def test_configmap_module_is_checked_under_its_measured_name(tmp_path: Path) -> None:
    seen: list[Path] = []

    def lookup(path: Path) -> str | None:
        seen.append(path)
        return "0" * 64

    h = ControllerHost(RecordingApi(), HostOptions(state_dir=tmp_path, digest_for=lookup))  # type: ignore[arg-type]
    h.hub = None
    source = ConfigMapSource(h, h.api, "t", "ctl")  # type: ignore[arg-type]
    try:
        (error,) = source.apply(configmap({"p.controller.json": manifest()}))
        assert "does not match its measured digest" in error
        assert seen == [Path("controllers/probe.wasm")]
        assert h.controllers == {}
    finally:
        source.stop()
        h.stop()
