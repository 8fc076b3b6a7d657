"""`edgeagent attestation-controller`: options as deploy/ uses them; bad input is one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}  # rich help must not truncate option names
    return subprocess.run(
        [sys.executable, "-m", "edgeagent.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_help_lists_every_option_the_deployment_uses() -> None:
    out = _run("attestation-controller", "--help")
    assert out.returncode == 0, out.stderr
    dep = next(
        d for d in yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text()) if d["kind"] == "Deployment"
    )
    for arg in dep["spec"]["template"]["spec"]["containers"][0]["args"][1:]:
        assert arg.split("=")[0] in out.stdout, arg


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kubeconfig", "/nonexistent/kubeconfig"], "cannot load Kubernetes credentials"),
        (["--webhook-listen", "nonsense"], "is not HOST:PORT"),
        (["--credential-lifetime", "999999"], "credential-lifetime"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    out = _run(
        "attestation-controller",
        "--registrar-url",
        "https://127.0.0.1:1",
        "--verifier-url",
        "https://127.0.0.1:2",
        "--keylime-ca-dir",
        str(tmp_path),
        "--ek-ca-store",
        str(tmp_path),
        *extra,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_keylime_ca_dir(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    out = _run(
        "attestation-controller",
        "--kubeconfig",
        str(kubeconfig),
        "--api-server-ca",
        str(kubeconfig),
        "--registrar-url",
        "https://127.0.0.1:1",
        "--verifier-url",
        "https://127.0.0.1:2",
        "--keylime-ca-dir",
        str(tmp_path / "nope"),
        "--ek-ca-store",
        str(tmp_path),
    )
    assert out.returncode == 78
    assert "Keylime CA dir" in out.stderr and "Traceback" not in out.stderr
