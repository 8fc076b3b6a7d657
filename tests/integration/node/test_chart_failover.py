"""Failover of the chart's controller: two replicas, the leader killed during an enrollment, the other takes
over and the device still enrolls (issue 17).

Two replicas cannot both run on one node's network (they would need the same ports), so here the controller
runs on the pod network, as it does by default, and only Keylime shares the node's network
(``keylime.hostNetwork: true``): the test cluster has no kube-proxy and no cluster DNS, so Services do not
route, and the devices (on the host) need Keylime on the node. The pods reach what they need on the node's
bridge address, which is the node's own: Keylime binds it (its certificate names it:
``keylime.tls.extraIPs``), and relays there forward to the API server on loopback (whose certificate names
it too: ``KubeCluster(extra_ips=...)``; given to the pods as ``apiServer.inClusterHost``) and to the device's
agent (pull mode: the controller delivers its key share to the device, the verifier pulls its quotes).
What this does not exercise: the revocation webhook through its Service (the verifier cannot reach a pod's
address through a Service without kube-proxy), so the test does not revoke.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.cloud import crd
from edgeagent.testbed import images, kube_pki, worker
from edgeagent.testbed import node as node_mod
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.testbed.helm import Helm
from edgeagent.testbed.kube import KubeCluster, kube_bin_dir, kube_release
from edgeagent.testbed.nat import Relay
from edgeagent.testbed.node import KubeletNode
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.integration.agent_proc import AgentProcess
from tests.integration.node.test_chart import NAMESPACE, RELEASE, Installed, chart_values

pytestmark = pytest.mark.integration

CONTROLLER = "edgeagent-attestation-controller"


class TwoReplicas(Installed):
    node_ip: str
    """The node's bridge address: Keylime and the API server's relay listen there."""


def failover_values(cluster: KubeCluster, ek_ca: Path, ports: dict[str, int], node_ip: str) -> dict[str, Any]:
    values = chart_values(cluster, ek_ca, ports)
    values["hostNetwork"] = False
    values["apiServer"]["inClusterHost"] = node_ip
    values["controller"] = {
        **values["controller"],
        "replicas": 2,
        "webhookListen": "0.0.0.0:8443",
        "webhookPort": 8443,
        "joinListen": "0.0.0.0:8444",
        "joinPort": 8444,
        "registrarURL": f"https://{node_ip}:{ports['registrar_tls']}",
        "verifierURL": f"https://{node_ip}:{ports['verifier']}",
    }
    keylime = {**values["keylime"], "hostNetwork": True, "bindAddress": node_ip}
    keylime.pop("webhookURL")  # the controller's Service: unreachable without kube-proxy; no revocation here
    keylime["tls"] = {"generate": True, "extraIPs": [node_ip]}
    values["keylime"] = keylime
    return values


@pytest.fixture(scope="module")
def two_replicas(
    swtpm_template: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoReplicas]:
    if kube_release() == "1.20":
        pytest.fail("the chart tests run on the current release only (EDGEAGENT_KUBE unset)")
    root = tmp_path_factory.mktemp("failover")
    subnet = node_mod.pick_subnet()
    node_ip = str(subnet.network_address + 1)
    with KubeCluster(root / "kube", nodes=True, extra_ips=(node_ip,)) as cluster:
        cluster.start()
        name = "failover-node"
        cred = kube_pki.issue(cluster.ca, f"system:node:{name}", orgs=["system:nodes"], client=True)
        kubeconfig = cluster.write_kubeconfig(root / "node.kubeconfig", cred.cert_pem, cred.key_pem,
                                              user=name)
        with KubeletNode(
            root / "node",
            name=name,
            kubeconfig=kubeconfig,
            cluster_ca=cluster.ca_cert,
            bin_dir=kube_bin_dir(),
            subnet=subnet,
        ) as node:
            node.start_network()
            node.start_containerd()
            for image in (images.cluster_image("attestation-controller"), images.cluster_image("keylime")):
                node.ctr("images", "import", str(image.archive))
            node.start_kubelet()
            worker.wait_node_ready(k8s.CoreV1Api(cluster.client()), name)
            relay = Relay((node_ip, cluster.api_port), ("127.0.0.1", cluster.api_port)).start()
            try:
                names = ("verifier", "registrar", "registrar_tls", "webhook", "join")
                ports = {k: procs.free_port() for k in names}
                helm = Helm(cluster.kubeconfig, root / "helm")
                values = failover_values(cluster, swtpm_template.ca_cert, ports, node_ip)
                helm.install(RELEASE, NAMESPACE, values, wait="180s")
                inst = TwoReplicas(cluster, node, helm, values, ports)
                inst.node_ip = node_ip
                yield inst
            finally:
                relay.stop()


def controller_pods(inst: Installed) -> dict[str, str]:
    """Name -> phase of the controller pods not being deleted."""
    listed = inst.core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/name={CONTROLLER}")
    return {p.metadata.name: p.status.phase for p in listed.items if p.metadata.deletion_timestamp is None}


def holder(inst: Installed) -> str | None:
    lease = k8s.CoordinationV1Api(inst.api).read_namespaced_lease(CONTROLLER, NAMESPACE)
    return lease.spec.holder_identity


def test_the_other_replica_takes_over_when_the_leader_is_killed_during_an_enrollment(
    two_replicas: TwoReplicas, swtpm_template: SoftwareTpm, tmp_path: Path
) -> None:
    inst = two_replicas
    procs.wait_for(
        lambda: list(controller_pods(inst).values()) == ["Running", "Running"],
        timeout=60,
        what="two controller replicas running",
    )
    procs.wait_for(lambda: holder(inst) in controller_pods(inst), timeout=60, what="a leader among them")
    leader = holder(inst)
    assert leader is not None
    (follower,) = set(controller_pods(inst)) - {leader}

    name = f"failover-{uuid.uuid4().hex[:6]}"
    tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    agent: AgentProcess | None = None
    relay: Relay | None = None
    try:
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        # Pull mode: the controller (delivering the device's key share) and the verifier connect to the
        # device. It listens on the host's loopback: a relay on the node's address makes it reachable from
        # the pod network too, as a device on the cluster's network would be.
        relay = Relay((inst.node_ip, port), ("127.0.0.1", port)).start()
        pin_device(
            inst.api,
            name,
            ek_cert=ek_cert,
            agent_uuid=f"{name}-agent",
            agent_address=f"{inst.node_ip}:{port}",
            register_node=True,
        )
        edgenodes = crd.EdgeNodes(inst.api)
        # The leader has taken the enrollment up: it wrote the EdgeNode's first status (waiting for the agent)
        procs.wait_for(
            lambda: edgenodes.get(name).status.get("phase") == "Pending",
            timeout=60,
            what="the leader to start the enrollment",
        )
        # Killed, not stopped: no SIGTERM, so no Lease release; the other replica waits out the Lease.
        inst.core.delete_namespaced_pod(leader, NAMESPACE, grace_period_seconds=0)

        keylime = SimpleNamespace(
            registrar_url=f"http://{inst.node_ip}:{inst.ports['registrar']}",
            ca_cert=inst.keylime_ca(tmp_path / "keylime-ca.crt"),
        )
        cfg = worker.write_config(tmp_path, keylime, node=name, port=port)
        agent = AgentProcess(cfg, tpm.tcti, tmp_path / "agent.sock")
        agent.start(timeout=60)
        agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving",
            timeout=180,
            what="the node credential after the failover",
        )
        procs.wait_for(lambda: edgenodes.get(name).phase == "Enrolled", timeout=60, what="Enrolled")
        new_leader = holder(inst)
        assert new_leader != leader and new_leader in controller_pods(inst)
        # the survivor, or the Deployment's replacement for the killed pod: either is "the other replica"
        print(f"leader {leader} killed; {new_leader} took over (the survivor was {follower})")
    except Exception:
        print(diagnostics(inst, name))
        raise
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop(signal.SIGKILL)
        tpm.stop()
        if relay is not None:
            relay.stop()


def diagnostics(inst: Installed, name: str) -> str:
    """The EdgeNode's status, the Lease holder and the tails of the cluster side's logs (for a failure)."""
    out = [f"EdgeNode status: {(crd.EdgeNodes(inst.api).get(name) or SimpleNamespace(status=None)).status}",
           f"Lease holder: {holder(inst)}"]
    for pod in inst.core.list_namespaced_pod(NAMESPACE).items:
        try:
            log = inst.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, tail_lines=15)
        except k8s.ApiException as e:
            log = f"(no log: {e.reason})"
        out.append(f"--- {pod.metadata.name} ({pod.status.phase}):\n{log}")
    return "\n".join(out)
