"""Release selection of the testbed control plane (EDGEAGENT_KUBE) and the version probe that picks flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.errors import ConfigError
from edgeagent.testbed import kube


def test_release_selects_its_bin_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEAGENT_CACHE", str(tmp_path))
    monkeypatch.delenv("EDGEAGENT_KUBE", raising=False)  # the default: the current release
    assert kube.kube_bin_dir() == tmp_path / "kubernetes-1.36.5" / "bin"
    monkeypatch.setenv("EDGEAGENT_KUBE", "1.20")
    assert kube.kube_bin_dir() == tmp_path / "kubernetes-1.20.2" / "bin"


def test_unknown_release_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEAGENT_KUBE", "1.99")
    with pytest.raises(ConfigError, match=r"EDGEAGENT_KUBE='1.99': the testbed runs 1.20, 1.36"):
        kube.kube_bin_dir()


def _fake_binary(path: Path, output: str) -> Path:
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_binary_version_reads_what_the_binary_reports(tmp_path: Path) -> None:
    assert kube.binary_version(_fake_binary(tmp_path / "new", "Kubernetes v1.36.5")) == (1, 36)
    assert kube.binary_version(_fake_binary(tmp_path / "old", "Kubernetes v1.20.2")) == (1, 20)


def test_binary_without_a_version_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Kubernetes version"):
        kube.binary_version(_fake_binary(tmp_path / "etcd", "etcd Version: 3.6.16"))
    with pytest.raises(ConfigError, match="cannot run"):
        kube.binary_version(tmp_path / "absent")
