"""Kubeconfig files: readable by the official client, private, never half-written."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from kubernetes import config as k8s_config

from edgeagent.errors import StateError
from edgeagent.kube import kubeconfig

CA, CERT, KEY = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"


def test_render_embeds_credentials() -> None:
    cfg = kubeconfig.render(server="https://127.0.0.1:6443", ca_pem=CA, cert_pem=CERT, key_pem=KEY,
                            user="system:node:edge1")
    assert cfg["current-context"] == "system:node:edge1@edgeagent"
    user = cfg["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == KEY
    assert base64.b64decode(user["client-certificate-data"]) == CERT
    assert base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]) == CA


def test_write_is_private_and_loadable(tmp_path: Path) -> None:
    cfg = kubeconfig.render(server="https://127.0.0.1:6443", ca_pem=CA, cert_pem=CERT, key_pem=KEY, user="u")
    path = kubeconfig.write(tmp_path / "sub" / "kubelet.kubeconfig", cfg)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["kubelet.kubeconfig"]  # no temp file left behind
    _contexts, active = k8s_config.list_kube_config_contexts(config_file=str(path))
    assert active["name"] == "u@edgeagent"
    # overwriting keeps the mode even when the old file was looser
    os.chmod(path, 0o644)
    kubeconfig.write(path, cfg)
    assert path.stat().st_mode & 0o777 == 0o600


def test_write_failure_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot write kubeconfig"):
        kubeconfig.write(blocker / "kubeconfig", {})
