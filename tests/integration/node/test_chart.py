"""The cluster side installed as an operator does: `make images` (the attestation controller and Keylime as
OCI archives) imported into a real node's containerd, and the chart (deploy/chart/edgeagent) installed with
helm onto the test cluster. A device (swtpm + `edgeagent agent` on the host) then enrolls against Keylime
and the controller running as pods, is revoked after a tamper and comes back after the restore.

The test cluster has no pod network reaching the API server and no kube-proxy, so the chart runs with
``hostNetwork: true`` (its single-node edge mode): the pods share the node's network namespace (here: the
host's loopback) and the controller reaches the API server at the address ``apiServer.inClusterHost`` gives.
"""

from __future__ import annotations

import base64
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.cloud import crd, revoke
from edgeagent.testbed import images, kube_pki, worker
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.testbed.helm import Helm, HelmError
from edgeagent.testbed.kube import KubeCluster, kube_bin_dir, kube_release
from edgeagent.testbed.node import KubeletNode
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.integration.agent_proc import AgentProcess

pytestmark = pytest.mark.integration

NAMESPACE = "edgeagent-system"
RELEASE = "edgeagent"


class Installed:
    def __init__(
        self,
        cluster: KubeCluster,
        node: KubeletNode,
        helm: Helm,
        values: dict[str, Any],
        ports: dict[str, int],
    ) -> None:
        self.cluster, self.node, self.helm, self.values, self.ports = cluster, node, helm, values, ports
        self.api = cluster.client()
        self.core = k8s.CoreV1Api(self.api)

    def keylime_ca(self, target: Path) -> Path:
        secret = self.core.read_namespaced_secret("edgeagent-keylime-tls", NAMESPACE)
        target.write_bytes(base64.b64decode(secret.data["cacert.crt"]))
        return target

    def pods(self) -> dict[str, str]:
        return {p.metadata.name: p.status.phase for p in self.core.list_namespaced_pod(NAMESPACE).items}


def pod_of(inst: Installed, app: str) -> k8s.V1Pod:
    """The one running pod of app.kubernetes.io/name=``app`` (not one that is being deleted)."""
    listed = inst.core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/name={app}")
    pods = [p for p in listed.items if p.metadata.deletion_timestamp is None]
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def ready(pod: k8s.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pod_events(inst: Installed, pod: k8s.V1Pod) -> list[k8s.CoreV1Event]:
    selector = f"involvedObject.uid={pod.metadata.uid}"
    return inst.core.list_namespaced_event(NAMESPACE, field_selector=selector).items


def chart_values(cluster: KubeCluster, ek_ca: Path, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "images": {"controller": {"pullPolicy": "Never"}, "keylime": {"pullPolicy": "Never"}},
        "apiServer": {
            "url": cluster.api_url,
            "inClusterHost": "127.0.0.1",
            "inClusterPort": str(cluster.api_port),
        },
        "ekCA": ek_ca.read_text(),
        "hostNetwork": True,
        "controller": {
            "replicas": 1,
            "webhookListen": f"127.0.0.1:{ports['webhook']}",
            "webhookPort": ports["webhook"],
            "joinListen": f"127.0.0.1:{ports['join']}",
            "joinPort": ports["join"],
            "registrarURL": f"https://127.0.0.1:{ports['registrar_tls']}",
            "verifierURL": f"https://127.0.0.1:{ports['verifier']}",
        },
        "keylime": {
            "bindAddress": "127.0.0.1",
            "verifier": {"port": ports["verifier"]},
            "registrar": {"port": ports["registrar"], "tlsPort": ports["registrar_tls"]},
            "webhookURL": f"https://127.0.0.1:{ports['webhook']}/revocation",
            "persistence": {"enabled": False},
        },
    }


@pytest.fixture(scope="module")
def installed(swtpm_template: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if kube_release() == "1.20":
        pytest.fail("the chart tests run on the current release only (EDGEAGENT_KUBE unset)")
    root = tmp_path_factory.mktemp("chart")
    controller_image = images.cluster_image("attestation-controller")
    keylime_image = images.cluster_image("keylime")
    with KubeCluster(root / "kube", nodes=True) as cluster:
        cluster.start()
        name = "infra-node"
        cred = kube_pki.issue(cluster.ca, f"system:node:{name}", orgs=["system:nodes"], client=True)
        kubeconfig = cluster.write_kubeconfig(
            root / "infra.kubeconfig", cred.cert_pem, cred.key_pem, user=name
        )
        with KubeletNode(
            root / "node",
            name=name,
            kubeconfig=kubeconfig,
            cluster_ca=cluster.ca_cert,
            bin_dir=kube_bin_dir(),
        ) as node:
            node.start_network()
            node.start_containerd()
            for image in (controller_image, keylime_image):
                node.ctr("images", "import", str(image.archive))
            node.start_kubelet()
            worker.wait_node_ready(k8s.CoreV1Api(cluster.client()), name)
            ports = {
                k: procs.free_port() for k in ("verifier", "registrar", "registrar_tls", "webhook", "join")
            }
            helm = Helm(cluster.kubeconfig, root / "helm")
            values = chart_values(cluster, swtpm_template.ca_cert, ports)
            helm.install(RELEASE, NAMESPACE, values, wait="180s")
            yield Installed(cluster, node, helm, values, ports)


def test_keylime_with_an_unwritable_database_volume_is_not_ready(installed: Installed) -> None:
    """The registrar's data volume turned read-only for the Keylime user under the running pod (as a volume
    remounted read-only, or one owned by another user, would be): the pod must stop being Ready, with the
    reason in its Events, and be Ready again once the volume is writable."""
    inst = installed
    pod = pod_of(inst, "keylime-registrar")
    assert ready(pod)
    data = inst.node.root / "kubelet/pods" / pod.metadata.uid / "volumes/kubernetes.io~empty-dir/data"
    assert (data / "reg_data.sqlite").is_file()
    mode = data.stat().st_mode & 0o7777
    try:
        data.chmod(0o555)  # owned by root: the Keylime user (65532) may no longer create files there
        procs.wait_for(
            lambda: not ready(inst.core.read_namespaced_pod(pod.metadata.name, NAMESPACE)),
            timeout=60,
            what="the registrar pod to turn unready",
        )
        said = [e.message for e in pod_events(inst, pod) if e.reason == "Unhealthy"]
        why = "/var/lib/keylime is not writable by uid 65532"
        assert any("Readiness probe failed" in m and why in m for m in said), said
    finally:
        data.chmod(mode)
    procs.wait_for(
        lambda: ready(inst.core.read_namespaced_pod(pod.metadata.name, NAMESPACE)),
        timeout=60,
        what="the registrar pod to be ready again",
    )


def test_controller_without_rbac_for_csrs_says_so_in_an_event_on_its_pod(installed: Installed) -> None:
    """The chart's controller ClusterRole without its certificates.k8s.io rules: the restarted controller
    reports it in one log line and a Warning Event on its own Pod, keeps running, and starts approving once
    the rules are back."""
    inst = installed
    rbac = k8s.RbacAuthorizationV1Api(inst.api)
    role_name = "edgeagent:attestation-controller"
    rules = rbac.read_cluster_role(role_name).rules
    before = pod_of(inst, "edgeagent-attestation-controller").metadata.name
    try:
        role = rbac.read_cluster_role(role_name)
        role.rules = [r for r in rules if "certificates.k8s.io" not in (r.api_groups or [])]
        rbac.replace_cluster_role(role_name, role)
        restart = {"spec": {"template": {"metadata": {"annotations": {"edgeagent.io/test-restart": before}}}}}
        apps = k8s.AppsV1Api(inst.api)
        apps.patch_namespaced_deployment("edgeagent-attestation-controller", NAMESPACE, restart)

        def new_pod() -> k8s.V1Pod | None:
            try:
                pod = pod_of(inst, "edgeagent-attestation-controller")
            except AssertionError:
                return None
            return pod if pod.metadata.name != before and pod.status.phase == "Running" else None

        procs.wait_for(lambda: new_pod() is not None, timeout=90, what="the restarted controller pod")
        pod = new_pod()
        assert pod is not None

        def missing_rbac() -> list[k8s.CoreV1Event]:
            return [e for e in pod_events(inst, pod) if e.reason == "MissingRBAC"]

        procs.wait_for(missing_rbac, timeout=60, what="a MissingRBAC Event on the controller's pod")
        (event,) = missing_rbac()
        assert event.type == "Warning" and event.involved_object.kind == "Pod"
        assert "certificatesigningrequests" in event.message and "approve signers" in event.message
        def log() -> str:
            return inst.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, container="controller")

        about = [ln for ln in log().splitlines() if "certificatesigningrequests" in ln]
        assert len(about) == 1 and event.message in about[0], log()
        still = inst.core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
        assert still.status.phase == "Running" and still.status.container_statuses[0].restart_count == 0
    finally:
        role = rbac.read_cluster_role(role_name)
        role.rules = rules
        rbac.replace_cluster_role(role_name, role)
    # granted again: the same pod takes it up at its next check (every 30 s), no restart
    procs.wait_for(
        lambda: "RBAC for CSRs granted now" in log(), timeout=60, what="the controller to see its rights back"
    )
    procs.wait_for(lambda: before not in inst.pods(), timeout=60, what="the old controller pod to go")


def test_a_device_enrolls_is_revoked_and_recovers_through_the_charts_pods(
    installed: Installed, swtpm_template: SoftwareTpm, tmp_path: Path
) -> None:
    inst = installed
    assert set(inst.pods().values()) == {"Running"} and len(inst.pods()) == 3
    running = inst.node.ctr("images", "list", "-q")
    assert (
        "edgeagent.local/attestation-controller:0.1.0" in running
        and "edgeagent.local/keylime:7.14.3" in running
    )

    name = f"chart-dev-{uuid.uuid4().hex[:6]}"
    tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    agent: AgentProcess | None = None
    try:
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        pin_device(
            inst.api,
            name,
            ek_cert=ek_cert,
            agent_uuid=f"{name}-agent",
            agent_address=f"127.0.0.1:{port}",
            register_node=True,
        )
        keylime = SimpleNamespace(
            registrar_url=f"http://127.0.0.1:{inst.ports['registrar']}",
            ca_cert=inst.keylime_ca(tmp_path / "keylime-ca.crt"),
        )
        cfg = worker.write_config(tmp_path, keylime, node=name, port=port)
        agent = AgentProcess(cfg, tpm.tcti, tmp_path / "agent.sock")
        agent.start(timeout=60)
        agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving",
            timeout=120,
            what="the node credential from the chart's controller",
        )
        edgenodes = crd.EdgeNodes(inst.api)
        procs.wait_for(lambda: edgenodes.get(name).phase == "Enrolled", timeout=60, what="Enrolled")

        (tmp_path / worker.MEASURED_FILE).write_text("mode = debug\n")
        agent.send(signal.SIGHUP)
        procs.wait_for(
            lambda: edgenodes.get(name).phase == "Unattested",
            timeout=60,
            what="the chart's Keylime to fail the device and the controller to revoke it",
        )
        node = inst.core.read_node(name)
        assert node.spec.unschedulable is True
        assert any(t.key == "edgeagent.io/unattested" for t in node.spec.taints or [])
        agent.wait_status(
            lambda s: s["attestation"]["revoked"], timeout=60, what="the device to drop its credential"
        )

        (tmp_path / worker.MEASURED_FILE).write_text("mode = production\n")
        assert agent.stop(signal.SIGTERM) == 0
        tpm.stop()
        tpm.start()
        agent.tcti = tpm.tcti
        agent.start(timeout=60)
        agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and not s["attestation"]["revoked"],
            timeout=120,
            what="a new credential after the restore",
        )
        procs.wait_for(
            lambda: edgenodes.get(name).status.get("attested") is True, timeout=60, what="attested again"
        )
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop(signal.SIGKILL)
        tpm.stop()


def test_helm_upgrade_keeps_enrolled_devices_enrolled(
    installed: Installed, swtpm_template: SoftwareTpm, tmp_path: Path
) -> None:
    """A changed value rolls the controller; the TLS material (which devices trust) is reused, the device
    stays enrolled and attested, and the new controller still revokes it on a tamper."""
    inst = installed
    secret_before = inst.core.read_namespaced_secret("edgeagent-keylime-tls", NAMESPACE).data
    pods_before = {n for n in inst.pods() if n.startswith("edgeagent-attestation-controller")}
    name = f"chart-up-{uuid.uuid4().hex[:6]}"
    tpm = swtpm_template.clone(tmp_path / "swtpm").start()
    agent: AgentProcess | None = None
    try:
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        pin_device(
            inst.api,
            name,
            ek_cert=ek_cert,
            agent_uuid=f"{name}-agent",
            agent_address=f"127.0.0.1:{port}",
            register_node=True,
        )
        keylime = SimpleNamespace(
            registrar_url=f"http://127.0.0.1:{inst.ports['registrar']}",
            ca_cert=inst.keylime_ca(tmp_path / "keylime-ca.crt"),
        )
        agent = AgentProcess(
            worker.write_config(tmp_path, keylime, node=name, port=port), tpm.tcti, tmp_path / "agent.sock"
        )
        agent.start(timeout=60)
        agent.wait_status(lambda s: s["attestation"]["credential_expiry"], timeout=120, what="the credential")
        edgenodes = crd.EdgeNodes(inst.api)
        procs.wait_for(lambda: edgenodes.get(name).phase == "Enrolled", timeout=60, what="Enrolled")

        values = {**inst.values, "controller": {**inst.values["controller"], "credentialLifetime": 7200}}
        inst.helm.install(RELEASE, NAMESPACE, values, upgrade=True, wait="180s")
        inst.values = values

        def controller_pods() -> set[str]:
            return {n for n in inst.pods() if n.startswith("edgeagent-attestation-controller")}

        # the old pod may still be terminating when helm's wait for the new one ends
        procs.wait_for(
            lambda: controller_pods() and not controller_pods() & pods_before,
            timeout=60,
            what="the controller to be rolled",
        )
        assert inst.core.read_namespaced_secret("edgeagent-keylime-tls", NAMESPACE).data == secret_before
        en = edgenodes.get(name)
        assert en.phase == "Enrolled" and en.status.get("attested") is True
        assert not agent.status()["attestation"]["revoked"]

        (tmp_path / worker.MEASURED_FILE).write_text("mode = debug\n")
        agent.send(signal.SIGHUP)
        procs.wait_for(
            lambda: edgenodes.get(name).phase == "Unattested",
            timeout=60,
            what="the upgraded controller to revoke the tampered device",
        )
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop(signal.SIGKILL)
        tpm.stop()


def test_bad_values_are_refused_by_the_schema(installed: Installed) -> None:
    for bad, expect in (
        ({"keylime": {"quoteInterval": 0}}, "quoteInterval"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"ekCA": ""}, "ekCA"),
    ):
        values = {**installed.values, **bad}
        if "keylime" in bad:
            values["keylime"] = {**installed.values["keylime"], **bad["keylime"]}
        with pytest.raises(HelmError) as err:
            installed.helm.install("bad", "edgeagent-bad", values, wait="10s")
        assert expect in str(err.value)


def test_uninstall_leaves_nothing_of_the_release(installed: Installed) -> None:
    """Last in the module: everything the chart made goes (the CRD stays: helm never deletes CRDs), and so do
    the grants the controller made for devices (owned by the chart's edgeagent:node ClusterRole): no device
    keeps rights that nobody would revoke."""
    inst = installed
    rbac = k8s.RbacAuthorizationV1Api(inst.api)
    # A grant made as the controller makes one for an attested node: the devices of the tests above may be
    # revoked by now (the verifier fails a stopped agent within seconds), taking their grants with them.
    revoke.Access(inst.api).grant("chart-uninstall")
    granted = [
        b.metadata.name
        for b in rbac.list_cluster_role_binding().items
        if b.metadata.name.startswith("edgeagent-node-")
    ]
    assert revoke.binding_name("chart-uninstall") in granted
    inst.helm.uninstall(RELEASE, NAMESPACE)
    procs.wait_for(lambda: not inst.pods(), timeout=60, what="the chart's pods to go")
    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert not inst.core.list_namespaced_config_map(NAMESPACE, label_selector=selector).items
    assert not inst.core.list_namespaced_secret(NAMESPACE, label_selector=selector).items
    assert not inst.core.list_namespaced_service(NAMESPACE, label_selector=selector).items
    assert not k8s.AppsV1Api(inst.api).list_namespaced_deployment(NAMESPACE).items

    def leftover() -> list[str]:
        return [
            b.metadata.name
            for b in rbac.list_cluster_role_binding().items
            if b.metadata.name.startswith("edgeagent")
        ]

    procs.wait_for(
        lambda: not leftover(), timeout=30, what=f"no edgeagent ClusterRoleBindings ({leftover()})"
    )


def test_keylime_volume_claim_that_cannot_bind_keeps_the_pods_pending(installed: Installed) -> None:
    """After the uninstall: persistence on, but no volume can ever bind (a StorageClass nothing provides): the
    Keylime pods are not Ready, and their PodScheduled condition names the unbound claim."""
    inst = installed
    keylime = {**inst.values["keylime"], "persistence": {"enabled": True, "storageClass": "chart2-none"}}
    inst.helm.install(RELEASE, NAMESPACE, {**inst.values, "keylime": keylime}, wait=None)
    try:

        def unscheduled(app: str) -> str | None:
            try:
                pod = pod_of(inst, app)
            except AssertionError:  # not created yet
                return None
            cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
            return cond.message if cond and cond.status == "False" else None

        for app in ("keylime-verifier", "keylime-registrar"):
            procs.wait_for(lambda app=app: unscheduled(app), timeout=60, what=f"{app} to be held back")
            assert not ready(pod_of(inst, app))
            assert "unbound immediate PersistentVolumeClaims" in (unscheduled(app) or "")
    finally:
        inst.helm.uninstall(RELEASE, NAMESPACE)
