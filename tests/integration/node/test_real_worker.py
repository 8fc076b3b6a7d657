"""A real worker: a kubelet (Kubernetes 1.36) on containerd + runc + the CNI bridge joins the cluster with the
kubeconfig that `edgeagent agent` wrote once stock Keylime attested the device, runs a pod, loses it when
attestation fails, and gets work again after recovery.

The cluster side is the testbed's whole one (Keylime verifier + registrar, etcd + kube-apiserver +
kube-controller-manager with node lifecycle and taint eviction + kube-scheduler, the attestation controller);
the device is a swtpm, the agent process and a `KubeletNode` in its own mount namespace. Only on the current
release: the 1.20 job has no kubelet build.
"""

from __future__ import annotations

import datetime
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client as k8s

from edgeagent.cloud import crd
from edgeagent.testbed import worker
from edgeagent.testbed.cluster_side import ClusterSide, pin_device
from edgeagent.testbed.kube import kube_release
from edgeagent.testbed.node import KubeletNode
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.integration.agent_proc import AgentProcess

pytestmark = pytest.mark.integration

CERT_SECONDS = 900


@pytest.fixture(scope="module")
def side(swtpm_template: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSide]:
    if kube_release() == "1.20":
        pytest.fail("the real-worker tests run on the current release only (EDGEAGENT_KUBE unset)")
    with ClusterSide(tmp_path_factory.mktemp("worker-side"), [swtpm_template.ca_cert], nodes=True) as s:
        yield s


class Device:
    """One worker device: its TPM, its agent, and (once started) its kubelet."""

    def __init__(self, side: ClusterSide, template: SoftwareTpm, root: Path) -> None:
        self.side = side
        self.root = root
        self.name = f"worker-{uuid.uuid4().hex[:6]}"
        self.tpm = template.clone(root / "swtpm").start()
        with Tpm.open(self.tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        # no Node object: the kubelet registers it
        pin_device(side.api, self.name, ek_cert=ek_cert, agent_uuid=f"{self.name}-agent",
                   agent_address=f"127.0.0.1:{port}", register_node=False)
        cfg = worker.write_config(root, side.keylime, node=self.name, port=port,
                                  certificate_seconds=CERT_SECONDS)
        self.agent = AgentProcess(cfg, self.tpm.tcti, root / "agent.sock")
        self.kubeconfig = worker.kubeconfig_path(root)
        self.node: KubeletNode | None = None

    def wait_credential(self) -> dict:
        return self.agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving"
            and self.kubeconfig.exists(),
            timeout=120, what="the node credential")

    def start_kubelet(self, *, bootstrap: bool = False, wait_healthy: bool = True) -> KubeletNode:
        self.node = self.side.kubelet(self.root / "node", self.name, self.kubeconfig, bootstrap=bootstrap)
        return self.node.start(wait_healthy=wait_healthy)

    def close(self) -> None:
        worker.stop_quietly(self.node)
        if self.agent.proc is not None:
            self.agent.stop(signal.SIGKILL)
        self.tpm.stop()


@pytest.fixture
def dev(side: ClusterSide, swtpm_template: SoftwareTpm, tmp_path: Path) -> Iterator[Device]:
    d = Device(side, swtpm_template, tmp_path)
    try:
        yield d
    finally:
        d.close()


def _taints(core: k8s.CoreV1Api, name: str) -> set[tuple[str, str]]:
    return {(t.key, t.effect) for t in core.read_node(name).spec.taints or []}


def _scheduling_failure(core: k8s.CoreV1Api, pod: str) -> str:
    conds = core.read_namespaced_pod(pod, "default").status.conditions or []
    return next((c.message or "" for c in conds if c.type == "PodScheduled" and c.status == "False"), "")


def test_kubelet_joins_with_the_attested_credential_and_loses_its_pods_on_revocation(dev: Device) -> None:
    core = k8s.CoreV1Api(dev.side.api)
    dev.agent.start(timeout=60)
    dev.wait_credential()

    # the kubelet starts once the credential exists (edgeagent-kubelet.path on a device) and registers
    dev.start_kubelet()
    worker.wait_node_ready(core, dev.name)
    node = core.read_node(dev.name)
    assert node.status.node_info.kubelet_version.startswith("v1.36")
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    # the certificate lives as long as the device was granted (expirationSeconds), not the cluster's 1 h
    user = json.loads(dev.kubeconfig.read_text())["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(Path(user["client-certificate"]).read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(seconds=CERT_SECONDS + 300)  # the signer backdates by up to 5 min
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(
        seconds=CERT_SECONDS)
    assert cert.subject.rfc4514_string() == f"CN=system:node:{dev.name},O=system:nodes"

    # a pod runs on the attested node and its logs are readable through the API server
    core.create_namespaced_pod("default", worker.pod("hello", dev.name))
    procs.wait_for(lambda: worker.pod_phase(core, "hello") == "Running", timeout=60, what="the pod to run")
    procs.wait_for(lambda: "hello from an attested node" in core.read_namespaced_pod_log("hello", "default"),
                   timeout=30, what="the pod's log")
    assert len(dev.node.container_pids()) >= 2  # the sandbox's pause and the shell (at least)

    # tamper: a measured file changes and the agent re-measures it; Keylime fails the device
    (dev.root / worker.MEASURED_FILE).write_text("mode = debug\n")
    dev.agent.send(signal.SIGHUP)
    procs.wait_for(lambda: crd.EdgeNodes(dev.side.api).get(dev.name).phase == "Unattested", timeout=60,
                   what="the EdgeNode to be unattested")
    # cordoned and tainted; the taint evicts the pod and the kubelet stops its containers
    assert core.read_node(dev.name).spec.unschedulable is True
    assert ("edgeagent.io/unattested", "NoExecute") in _taints(core, dev.name)
    procs.wait_for(lambda: worker.pod_phase(core, "hello") is None, timeout=60, what="the pod to be evicted")
    procs.wait_for(lambda: not dev.node.container_pids(), timeout=30, what="the pod's processes to end")
    # the agent dropped its credential (renewal is refused while unattested)
    s = dev.agent.wait_status(lambda s: s["attestation"]["revoked"] and not dev.kubeconfig.exists(),
                              timeout=30, what="the agent to drop its credential")
    assert s["attestation"]["credential_expiry"] is None
    # nothing new lands on the node
    core.create_namespaced_pod("default", worker.pod("again", dev.name))
    procs.wait_for(lambda: "unschedulable" in _scheduling_failure(core, "again")
                   or "untolerated taint" in _scheduling_failure(core, "again"),
                   timeout=30, what="the scheduler to refuse the cordoned node")
    assert worker.pod_phase(core, "again") == "Pending"

    # restore and reboot: the file as attested, the TPM restarted (PCRs from zero), agent and kubelet again
    (dev.root / worker.MEASURED_FILE).write_text("mode = production\n")
    assert dev.agent.stop(signal.SIGTERM) == 0
    dev.node.stop_kubelet()
    dev.tpm.stop()
    dev.tpm.start()
    dev.agent.tcti = dev.tpm.tcti
    dev.agent.start(timeout=60)
    dev.wait_credential()
    dev.node.start_kubelet()
    procs.wait_for(lambda: crd.EdgeNodes(dev.side.api).get(dev.name).status.get("attested") is True,
                   timeout=60, what="the EdgeNode attested again")
    procs.wait_for(lambda: not core.read_node(dev.name).spec.unschedulable, timeout=30,
                   what="the Node uncordoned")
    worker.wait_node_ready(core, dev.name)
    assert ("edgeagent.io/unattested", "NoExecute") not in _taints(core, dev.name)
    # the pod that waited is placed and runs
    procs.wait_for(lambda: worker.pod_phase(core, "again") == "Running", timeout=60,
                   what="the waiting pod to run after recovery")
    core.delete_namespaced_pod("again", "default", grace_period_seconds=0)


def test_the_kubelets_own_certificate_request_is_denied(dev: Device) -> None:
    """The standard kubelet CSR flow (the kubelet's own key, no TPM binding), authenticated with the node's
    valid credential as a bootstrap kubeconfig, gets no certificate: the controller denies it."""
    certs = k8s.CertificatesV1Api(dev.side.api)
    dev.agent.start(timeout=60)
    dev.wait_credential()
    before = {c.metadata.name for c in certs.list_certificate_signing_request().items}
    dev.start_kubelet(bootstrap=True, wait_healthy=False)

    def denied() -> k8s.V1CertificateSigningRequest | None:
        for c in certs.list_certificate_signing_request().items:
            if c.metadata.name in before or c.spec.username != f"system:node:{dev.name}":
                continue
            if any(cond.type == "Denied" for cond in (c.status.conditions or [])):
                return c
        return None

    procs.wait_for(lambda: denied() is not None, timeout=60, what="the kubelet's own CSR to be denied")
    csr = denied()
    assert csr is not None
    assert csr.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
    reason = next(c.reason for c in csr.status.conditions if c.type == "Denied")
    assert reason == "NoBinding"
    assert csr.status.certificate is None
    # and the kubelet has no client certificate of its own (its kubeconfig names one that never appears)
    pki = dev.root / "node" / "kubelet" / "pki"
    assert not list(pki.glob("kubelet-client*")), sorted(p.name for p in pki.iterdir())
