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
