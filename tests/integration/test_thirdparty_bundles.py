"""A third party's driver and controller, end to end on real components: made outside the repository (their
own folders and Makefiles, a declarative model), built, signed, installed and measured into PCR 23 of a real
software TPM, simulated, emulated through the real smbus2/i2c-dev stack (umockdev), and the controller run by
`edgeagent controllers run` against a real kube-apiserver, its module checked against the measured digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.config import load_config
from edgeagent.controllers.measured import measured_digests
from edgeagent.measure import cel, measurer
from edgeagent.tpm import Tpm
from tests.fixtures import procs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def ea(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture
def third_party(tmp_path: Path) -> dict[str, Path]:
    """The examples copied out of the repository, built and packed into signed bundles; a device trusting
    the key."""
    script = tmp_path / "bin" / "edgeagent"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m edgeagent "$@"\n')
    script.chmod(0o755)
    key = tmp_path / "author" / "release.key"
    subprocess.run([str(script), "bundle", "keygen", str(key)], check=True, timeout=60, env=ENV)
    out: dict[str, Path] = {}
    for name, bundle in (("sht31-driver", "sht31"), ("configmap-mirror", "configmap-mirror")):
        d = tmp_path / "author" / name
        shutil.copytree(EXAMPLES / name, d, ignore=shutil.ignore_patterns("build", "dist", ".state"))
        make = ["make", "-s", "-C", str(d), f"EDGEAGENT={script}", f"KEY={key}"]
        subprocess.run([*make, "bundle"], check=True, timeout=300, env=ENV)
        out[name] = d / "dist" / f"{bundle}.tar.gz"
        assert out[name].is_file()
    device = tmp_path / "device"
    (device / "policies" / "trusted-keys").mkdir(parents=True)
    shutil.copyfile(key.with_name("release.key.pub"), device / "policies" / "trusted-keys" / "release.pub")
    config = device / "agent.toml"
    config.write_text(
        f'state_dir = "{device / "state"}"\npolicies_dir = "{device / "policies"}"\n'
        f'[drivers]\nmodules_dir = "{device / "drivers"}"\n[controllers]\ndir = "{device / "controllers"}"\n'
    )
    out["config"] = config
    out["device"] = device
    return out


def check_measured(config: Path, tcti: str, files: list[Path]) -> None:
    """Each file's digest is in the event log, and the log replays to the TPM's PCR 23."""
    cfg = load_config(config)
    lookup = measured_digests(cfg)
    assert lookup is not None
    for f in files:
        assert lookup(f) == hashlib.sha256(f.read_bytes()).hexdigest(), f
    segment = cel.segment(cel.read_log(measurer.log_path(cfg)), cfg.measure.pcr)
    with Tpm.open(tcti) as tpm:
        banks = measurer.active_banks(tpm)
        actual = measurer.read_pcr(tpm, cfg.measure.pcr, banks)
    assert cel.replay(segment, banks)[cfg.measure.pcr] == actual


def test_a_third_party_driver_is_installed_measured_simulated_and_emulated(
    third_party: dict[str, Path], fresh_swtpm: Any
) -> None:
    config = str(third_party["config"])
    r = ea("-c", config, "--tpm", fresh_swtpm.tcti, "drivers", "install", str(third_party["sht31-driver"]))
    assert r.returncode == 0, r.stderr
    assert "installed driver sht31 0.1.0 (signed by" in r.stdout and "into PCR 23" in r.stdout
    installed = third_party["device"] / "drivers" / "sht31"
    check_measured(
        third_party["config"],
        fresh_swtpm.tcti,
        [installed / "build" / "sht31.wasm", installed / "policy.toml", installed / "model.toml"],
    )
    for command in (["run-driver", "sht31", "--sim"], ["emulate", "sht31"]):
        r = ea("-c", config, *command, "-n", "2", "-i", "0.1", "--json")
        assert r.returncode == 0, (command, r.stderr)
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == 2, (command, r.stdout)
        for row in rows:
            assert row["values"]["temperature"] == pytest.approx(22.5, abs=0.01)
            assert row["values"]["humidity"] == pytest.approx(41.0, abs=0.01)


def test_a_third_party_controller_is_installed_measured_and_run_against_a_cluster(
    third_party: dict[str, Path], fresh_swtpm: Any, kube_cluster: Any
) -> None:
    config = str(third_party["config"])
    r = ea(
        "-c",
        config,
        "--tpm",
        fresh_swtpm.tcti,
        "controllers",
        "install",
        str(third_party["configmap-mirror"]),
    )
    assert r.returncode == 0 and "installed controller configmap-mirror" in r.stdout, r.stderr
    module = third_party["device"] / "controllers" / "configmap-mirror" / "build" / "mirror.wasm"
    check_measured(third_party["config"], fresh_swtpm.tcti, [module])

    core = k8s.CoreV1Api(kube_cluster.client())
    src, dst = f"src-{uuid.uuid4().hex[:6]}", f"dst-{uuid.uuid4().hex[:6]}"
    for ns in (src, dst):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
    # the installed manifest mirrors "src" to "dst": point it at this test's namespaces (re-measured below)
    manifest = module.parents[1] / "mirror.toml"
    manifest.write_text(
        manifest.read_text()
        .replace('from = "src", to = "dst"', f'from = "{src}", to = "{dst}"')
        .replace('namespace = "src"', f'namespace = "{src}"')
        .replace('["dst"]', f'["{dst}"]')
    )
    r = ea("-c", config, "--tpm", fresh_swtpm.tcti, "measure")
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "-c",
            config,
            "controllers",
            "run",
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
        ],
        env={**ENV, "XDG_RUNTIME_DIR": str(third_party["device"])},  # its pointer for `list`: not in /run
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        core.create_namespaced_config_map(
            src,
            k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name="settings", labels={"mirror": "yes"}), data={"colour": "green"}
            ),
        )

        def copy() -> dict[str, str] | None:
            try:
                return core.read_namespaced_config_map("settings", dst).data
            except k8s.ApiException as e:
                if e.status == 404:
                    return None
                raise

        procs.wait_for(lambda: copy() == {"colour": "green"}, timeout=60, what="the mirrored copy")
        # leaving the selector is a DELETED for the controller (issue 13): the copy goes
        core.patch_namespaced_config_map("settings", src, {"metadata": {"labels": {"mirror": "no"}}})
        procs.wait_for(lambda: copy() is None, timeout=60, what="the copy deleted")
        r = ea("-c", config, "controllers", "list", "--json")  # config's state_dir: no pointer needed
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(r.stdout)["controllers"]
        assert row["name"] == "configmap-mirror" and row["healthy"] and row["errors"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    snapshot = third_party["device"] / "state" / "controllers" / "snapshots" / "configmap-mirror.snap"
    assert snapshot.is_file()  # its state saved on the graceful stop
