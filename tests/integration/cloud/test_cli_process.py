"""`edgeagent attestation-controller` as a process: it leads, acts, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import edgenode_for, require_custom_resources, wait_edgenode

pytestmark = pytest.mark.integration


def test_controller_process(
    kube_cluster: KubeCluster, keylime: Keylime, start_device, tmp_path: Path
) -> None:
    require_custom_resources(kube_cluster)
    log = tmp_path / "controller.log"
    args = [
        sys.executable,
        "-m",
        "edgeagent.cli.main",
        "-v",
        "attestation-controller",
        "--kubeconfig",
        str(kube_cluster.kubeconfig),
        "--registrar-url",
        keylime.registrar_tls_url,
        "--verifier-url",
        keylime.verifier_url,
        "--keylime-ca-dir",
        str(keylime.cv_ca),
        "--ek-ca-store",
        str(keylime.settings.tpm_cert_store),
        "--webhook-listen",
        f"127.0.0.1:{keylime.webhook_port}",
        "--webhook-cert",
        str(keylime.cv_ca / "server-cert.crt"),
        "--webhook-key",
        str(keylime.cv_ca / "server-private.pem"),
        "--credential-lifetime",
        "3600",
        "--identity",
        "cli-process",
        "--poll-interval",
        "1",
    ]
    proc = procs.start(args, log=log)
    try:
        procs.wait_port(keylime.webhook_port, timeout=60, proc=proc, log=log)
        device = start_device("edge-cli")
        edgenode_for(kube_cluster.client(), device)
        en = wait_edgenode(
            kube_cluster.client(),
            device.name,
            lambda en: en.phase == "Attested",
            timeout=90,
            what="to be attested by the controller process",
        )
        assert en.status["delivered"] is True
        assert device.payload()["nodeName"] == device.name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            procs.stop(proc)
    assert "Traceback" not in log.read_text()
