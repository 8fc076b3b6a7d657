"""The host's transport: which kubeconfigs it serves itself, and which it hands to the official client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import ConfigError
from edgeagent.kube import transport


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


def test_token_kubeconfig_is_served_without_the_official_client(tmp_path: Path) -> None:
    t = transport.from_kubeconfig(kubeconfig(tmp_path, {"token": "abc"}))
    assert isinstance(t, transport.DirectTransport) and t.host == "https://127.0.0.1:6443"
    assert t._token is not None and t._token() == "abc"


def test_token_file_is_reread(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("one\n")
    t = transport.from_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "tok"}))
    assert isinstance(t, transport.DirectTransport) and t._token is not None
    assert t._token() == "one"
    (tmp_path / "tok").write_text("two\n")
    assert t._token() == "two"


def test_exec_plugin_goes_to_the_official_client(tmp_path: Path) -> None:
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "true"}}
    t = transport.from_kubeconfig(kubeconfig(tmp_path, user))
    assert isinstance(t, transport.ClientTransport)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid YAML"),
        ('{"current-context": "nope", "contexts": []}', "no context named 'nope'"),
    ],
)
def test_unusable_kubeconfig_is_one_config_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        transport.from_kubeconfig(path)


def test_bad_tls_material_is_a_config_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"client-certificate-data": "bm90IGEgY2VydA==", "client-key-data": "eA=="})
    with pytest.raises(ConfigError, match="cannot load TLS material"):
        transport.from_kubeconfig(path)
