"""`edgeagent dev cluster up|env|down`: a local control plane that outlives the command starting it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.kube.api import KubeApi, connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def ea(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_up_env_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    r = ea("dev", "cluster", "env", "--dir", str(root))
    assert r.returncode == 74 and "no local cluster runs from" in r.stderr and r.stderr.count("\n") == 1
    r = ea("dev", "cluster", "up", "--dir", str(root))
    try:
        assert r.returncode == 0, r.stderr
        line = r.stdout.strip()
        assert line.startswith("export KUBECONFIG=")
        kubeconfig = Path(line.removeprefix("export KUBECONFIG="))
        # the command has exited: the cluster still answers
        body = KubeApi(connect(kubeconfig)).request_json("GET", "/api/v1/namespaces", what="list namespaces")
        assert any(ns["metadata"]["name"] == "default" for ns in body["items"])
        assert ea("dev", "cluster", "env", "--dir", str(root)).stdout.strip() == line
        again = ea("dev", "cluster", "up", "--dir", str(root))  # already up: the same cluster
        assert again.returncode == 0 and again.stdout.strip() == line
        pgids = json.loads((root / "cluster.json").read_text())["pgids"]
        assert set(pgids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    finally:
        down = ea("dev", "cluster", "down", "--dir", str(root))
    assert down.returncode == 0 and "stopped" in down.stderr
    for pgid in pgids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert ea("dev", "cluster", "env", "--dir", str(root)).returncode == 74


def test_up_with_a_software_tpm_and_keylime(tmp_path: Path) -> None:
    import urllib.request

    from edgeagent.tpm import Tpm

    root = tmp_path / "cluster"
    r = ea("dev", "cluster", "up", "--dir", str(root), "--keylime", "--no-controller-manager")
    try:
        assert r.returncode == 0, r.stderr
        env = dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.splitlines())
        assert set(env) == {
            "KUBECONFIG",
            "EDGEAGENT_TPM",
            "EDGEAGENT_ENROLL_REGISTRAR_URL",
            "EDGEAGENT_ENROLL_KEYLIME_CA",
        }
        with Tpm.open(env["EDGEAGENT_TPM"]) as tpm:
            assert tpm.pcr_read([23])
        with urllib.request.urlopen(f"{env['EDGEAGENT_ENROLL_REGISTRAR_URL']}/version", timeout=10) as resp:
            assert resp.status == 200
        assert Path(env["EDGEAGENT_ENROLL_KEYLIME_CA"]).is_file()
        pgids = json.loads((root / "cluster.json").read_text())["pgids"]
        assert {"swtpm", "keylime-verifier", "keylime-registrar", "etcd", "kube-apiserver"} == set(pgids)
    finally:
        ea("dev", "cluster", "down", "--dir", str(root))
    for pgid in pgids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
