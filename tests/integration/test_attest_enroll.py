"""`edgeagent enroll` as a process, against a real swtpm, stock Keylime and a real kube-apiserver.

The test plays the cloud side by hand (bootstrap token, tenant add with the join material, CSR approval after
checking the TPM binding), so what is exercised is the device: registration, attestation, payload, CSR with
the bootstrap token, certificate, kubeconfig, SIGKILL + resume with the same AK, and a registrar that is down.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import signal
import stat
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.attest import payload
from edgeagent.protocol import nodebinding
from edgeagent.tpm import Tpm, provision
from edgeagent.tpm.quote import Quote, verify_quote
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster

pytestmark = pytest.mark.integration

NODE = "edge-enroll-1"


def write_config(root: Path, tcti: str, keylime: Keylime, *, port: int, node: str = NODE,
                 retry_timeout: float = 120.0) -> Path:
    for d in ("state", "policies", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    config = root / "agent.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\n'
        f'tpm_tcti = "{tcti}"\n'
        f'policies_dir = "{root / "policies"}"\n'
        "[measure]\n"
        f'firmware_log = "{root / "absent-firmware-log"}"\n'
        "[drivers]\n"
        f'modules_dir = "{root / "no-drivers"}"\n'
        "[controllers]\n"
        f'dir = "{root / "no-controllers"}"\n'
        "[enroll]\n"
        f'registrar_url = "{keylime.registrar_url}"\n'
        'agent_host = "127.0.0.1"\n'
        f"agent_port = {port}\n"
        f'node_name = "{node}"\n'
        f'keylime_ca = "{keylime.ca_cert}"\n'
        f'payload_dir = "{root / "run"}"\n'
        f'kubeconfig = "{root / "kubelet" / "kubeconfig"}"\n'
        f"retry_timeout = {retry_timeout}\n"
        "certificate_timeout = 120\n"
    )
    return config


def start_enroll(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgeagent.cli.main", "--config", str(config), "-v", "enroll", "--json",
           *extra]
    env = {**os.environ, "TSS2_LOG": "all+none"}
    return procs.start(cmd, log=log, env=env)


def run_output(proc: subprocess.Popen, log: Path, timeout: float) -> dict[str, Any]:
    rc = proc.wait(timeout=timeout)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    start = ("\n" + text).rindex("\n{\n")  # the JSON document among the log lines (-v logs to stderr)
    end = text.index("\n}\n", start) + 2
    return json.loads(text[start:end])


def registrar_record(keylime: Keylime, uuid: str) -> tuple[int, Any]:
    return keylime.request("GET", f"{keylime.registrar_tls_url}/v2.2/agents/{uuid}")


def enroll_state(root: Path) -> dict[str, Any]:
    path = root / "state" / "enroll.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_registered(keylime: Keylime, root: Path, proc: subprocess.Popen, log: Path) -> str:
    def done() -> bool:
        assert proc.poll() is None, log.read_text()[-4000:]
        return "register" in enroll_state(root).get("steps", {})

    procs.wait_for(done, timeout=90, interval=0.1, what="enroll to register with the registrar")
    uuid = enroll_state(root)["uuid"]
    status, body = registrar_record(keylime, uuid)
    assert status == 200, body
    return uuid


# ---------------------------------------------------------------- the cloud side, by hand
def bootstrap_token(cluster: KubeCluster) -> str:
    """A bootstrap token allowed to create and read CSRs (what the attestation controller issues)."""
    alphabet = string.ascii_lowercase + string.digits
    token_id = "".join(secrets.choice(alphabet) for _ in range(6))
    token_secret = "".join(secrets.choice(alphabet) for _ in range(16))
    api = cluster.client()
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    k8s.CoreV1Api(api).create_namespaced_secret("kube-system", {
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "stringData": {"token-id": token_id, "token-secret": token_secret, "expiration": expires,
                       "usage-bootstrap-authentication": "true"},
    })
    binding = f"edgeagent-test-bootstrapper-{token_id}"
    k8s.RbacAuthorizationV1Api(api).create_cluster_role_binding({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:node-bootstrapper"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": f"system:bootstrap:{token_id}"}],
    })
    return f"{token_id}.{token_secret}"


def approve_when_bound(cluster: KubeCluster, keylime: Keylime, uuid: str, node: str,
                       timeout: float = 90.0) -> dict[str, Any]:
    """Waits for the device's CSR, checks its TPM binding as the controller would, approves it."""
    api = k8s.CertificatesV1Api(cluster.client())
    found: list[Any] = []

    def csr_appeared() -> bool:
        found[:] = [c for c in api.list_certificate_signing_request().items
                    if c.metadata.name.startswith(f"edgeagent-{node}-")]
        return bool(found)

    procs.wait_for(csr_appeared, timeout=timeout, interval=0.2, what=f"a CSR from {node}")
    csr = found[0]
    binding = json.loads(csr.metadata.annotations[nodebinding.BINDING_ANNOTATION])
    assert binding["agentUUID"] == uuid
    assert abs(nodebinding.nonce_time(binding["nonce"]) - time.time()) < 300
    status, body = registrar_record(keylime, uuid)
    assert status == 200
    ak_public = base64.b64decode(body["results"]["aik_tpm"])
    from cryptography import x509

    request = x509.load_pem_x509_csr(base64.b64decode(csr.spec.request))
    digest = nodebinding.binding_digest(nodebinding.spki_der(request.public_key()), binding["nonce"])  # type: ignore[arg-type]
    verify_quote(Quote.from_keylime_string(binding["quote"]), ak_public, digest)
    assert csr.spec.signer_name == nodebinding.KUBELET_SIGNER
    csr.status.conditions = [k8s.V1CertificateSigningRequestCondition(
        type="Approved", status="True", reason="EdgeAgentTest", message="binding verified by the test")]
    api.replace_certificate_signing_request_approval(csr.metadata.name, csr)
    return binding


def test_enroll_resumes_after_sigkill_and_obtains_a_node_credential(
        keylime: Keylime, kube_cluster: KubeCluster, fresh_swtpm: SoftwareTpm, tmp_path: Path) -> None:
    port = procs.free_port()
    config = write_config(tmp_path, fresh_swtpm.tcti, keylime, port=port)
    log1 = tmp_path / "enroll-1.log"
    first = start_enroll(config, log1, "--once")
    uuid = ""
    try:
        uuid = wait_registered(keylime, tmp_path, first, log1)
        ak_name = enroll_state(tmp_path)["ak_name"]
        ak_files = {p.name: p.read_bytes() for p in (tmp_path / "state" / "tpm").iterdir()}
        os.killpg(first.pid, signal.SIGKILL)  # mid-enrollment: registered, waiting for the payload
        first.wait(10)
        _, before = registrar_record(keylime, uuid)

        log2 = tmp_path / "enroll-2.log"
        second = start_enroll(config, log2, "--once")
        try:
            procs.wait_port(port, timeout=60, proc=second, log=log2)
            material = payload.JoinMaterial(kube_cluster.api_url, kube_cluster.ca.cert_pem,
                                            bootstrap_token(kube_cluster), NODE)
            join = tmp_path / "join.json"
            join.write_bytes(payload.encode_join_material(material))
            keylime.tenant("-c", "add", "-u", uuid, "-t", "127.0.0.1", "-tp", str(port), "-f", str(join),
                           check=True)
            approve_when_bound(kube_cluster, keylime, uuid, NODE)
            result = run_output(second, log2, timeout=120)
        finally:
            if second.poll() is None:
                procs.stop(second)
        # same AK across the SIGKILL, and the registrar still holds the same one
        assert result["ak_name"] == ak_name and result["uuid"] == uuid
        assert {p.name: p.read_bytes() for p in (tmp_path / "state" / "tpm").iterdir()} == ak_files
        _, after = registrar_record(keylime, uuid)
        assert after["results"]["aik_tpm"] == before["results"]["aik_tpm"]
        steps = {s["step"]: s["status"] for s in result["steps"]}
        assert steps["register"] == "skipped"  # resumed: the registration survived the kill
        assert all(steps[s] == "done" for s in ("provision", "measure", "attest", "csr", "certificate",
                                                "kubeconfig"))
        # the payload landed 0600; the kubeconfig is 0600 and authenticates as system:node:NAME
        assert stat.S_IMODE((tmp_path / "run" / payload.PAYLOAD_FILE).stat().st_mode) == 0o600
        kubeconfig = Path(result["kubeconfig"])
        assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
        review = k8s.AuthorizationV1Api(kube_cluster.client(kubeconfig)).create_self_subject_access_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
             "spec": {"resourceAttributes": {"verb": "get", "resource": "nodes", "name": NODE}}})
        assert review.status.allowed, review.status
        print(f"\nenroll figures (resumed run): {result['figures']}")
        # re-running after success resumes to the end without a new payload or CSR
        log3 = tmp_path / "enroll-3.log"
        third = run_output(start_enroll(config, log3, "--once"), log3, timeout=60)
        assert {s["step"]: s["status"] for s in third["steps"]}["certificate"] == "skipped"
        assert third["ak_name"] == ak_name
    finally:
        if first.poll() is None:
            procs.stop(first)
        if uuid:
            keylime.tenant("-c", "delete", "-u", uuid)
            keylime.tenant("-c", "regdelete", "-u", uuid)


def test_enroll_waits_for_a_registrar_that_is_down_then_registers(
        keylime_factory: Any, fresh_swtpm: SoftwareTpm, tmp_path: Path) -> None:
    deployment: Keylime = keylime_factory(start=False)
    deployment.start_verifier()  # creates the Keylime CA the agent API requires; the registrar stays down
    config = write_config(tmp_path, fresh_swtpm.tcti, deployment, port=procs.free_port())
    log = tmp_path / "enroll.log"
    proc = start_enroll(config, log)
    try:
        procs.wait_for(lambda: "retry" in log.read_text() or proc.poll() is not None, timeout=60,
                       interval=0.2, what="a registration retry")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "register" not in enroll_state(tmp_path).get("steps", {})
        deployment.start_registrar()
        uuid = wait_registered(deployment, tmp_path, proc, log)
        _, body = registrar_record(deployment, uuid)
        assert body["results"]["ip"] == "127.0.0.1"
        assert enroll_state(tmp_path)["steps"]["register"]["seconds"] > 0
    finally:
        procs.stop(proc)


def test_enroll_gives_up_on_a_registrar_that_stays_down(
        keylime: Keylime, fresh_swtpm: SoftwareTpm, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, fresh_swtpm.tcti, keylime, port=procs.free_port(), retry_timeout=3)
    text = config.read_text().replace(keylime.registrar_url, f"http://127.0.0.1:{procs.free_port()}")
    config.write_text(text)
    cmd = [sys.executable, "-m", "edgeagent.cli.main", "--config", str(config), "enroll", "--once", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TSS2_LOG": "all+none"})
    assert result.returncode == 69, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "Traceback" not in result.stderr
    # the AK was provisioned and kept: a later run registers the same one
    with Tpm.open(fresh_swtpm.tcti) as tpm:
        ident = provision(tpm, tmp_path / "state")
    assert enroll_state(tmp_path)["ak_name"] == ident.ak_name.hex()

