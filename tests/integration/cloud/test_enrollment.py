"""Attested enrollment end to end on the cluster side, with real components only.

An in-process agent on swtpm registers with the real Keylime registrar; the controller checks its EK, adds it
to the real verifier and delivers join material as a U/V payload; the device asks for its node certificate
with a TPM binding made by its real AK; the controller approves, kube-controller-manager signs, and the
certificate authenticates as system:node:NAME. Then each bad input, and revocation + restore.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.attest import kubecsr, nodekey
from edgeagent.cloud import bootstrap, crd, revoke, webhook
from edgeagent.cloud.controller import Controller
from edgeagent.protocol import nodebinding
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import Device, edgenode_for, events_for, wait_edgenode

pytestmark = pytest.mark.integration


@dataclass
class Enrolled:
    device: Device
    token_cluster: kubecsr.Cluster
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    cert_cluster: kubecsr.Cluster
    kubeconfig: Path
    first_binding: dict
    csr_name: str


def _csr(
    device: Device,
    cluster: kubecsr.Cluster,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    bind_key: ec.EllipticCurvePrivateKey | None = None,
    nonce: str | None = None,
    node: str | None = None,
    binding: dict | None = None,
) -> tuple[str, dict]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    if binding is None:
        binding = nodekey.tpm_binding(
            device.agent.tpm,
            device.agent.ident,
            agent_uuid=device.uuid,
            public_key=(bind_key or key).public_key(),
            nonce=nonce,
        )
    node = node or device.name
    name = f"edgeagent-{node}-{uuid.uuid4().hex[:10]}"
    body = nodebinding.csr_body(
        name=name, csr_pem=nodekey.build_csr(key, node), binding=binding, expiration_seconds=3600
    )
    kubecsr.submit(cluster, body)
    return name, binding


def _decision(api: k8s.ApiClient, name: str, timeout: float = 30.0) -> tuple[str, str]:
    certs = k8s.CertificatesV1Api(api)
    seen: list = []

    def decided() -> bool:
        status = certs.read_certificate_signing_request(name).status
        seen[:] = list(status.conditions or []) if status else []
        return bool(seen)

    procs.wait_for(decided, timeout=timeout, interval=0.1, what=f"a decision on CSR {name}")
    return seen[0].type, seen[0].reason


def _as_node(kubeconfig: Path, kube_cluster: KubeCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_cluster.client(kubeconfig))


def _can_list_configmaps(core: k8s.CoreV1Api) -> bool:
    try:
        core.list_namespaced_config_map("default")
    except ApiException as e:
        if e.status == 403:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def enrolled(
    controller: Controller, start_device, kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Enrolled]:
    api = kube_cluster.client()
    device = start_device("edge-enroll")
    # The Node object the kubelet would register; cordon/taint act on it.
    k8s.CoreV1Api(api).create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=device.name)))
    edgenode_for(api, device)
    wait_edgenode(api, device.name, lambda en: en.phase == "Attested", what="to be attested")
    material = device.payload()
    root = tmp_path_factory.mktemp("enrolled")
    ca_file = root / "ca.crt"
    ca_file.write_text(material["caCert"])
    token_cluster = kubecsr.Cluster(material["apiServer"], ca_file, token=material["bootstrapToken"])
    key = ec.generate_private_key(ec.SECP256R1())
    name, binding = _csr(device, token_cluster, key=key)
    cert_pem = kubecsr.wait_certificate(token_cluster, name, timeout=30)
    (root / "node.crt").write_bytes(cert_pem)
    (root / "node.key").write_bytes(nodekey.private_pem(key))
    kubeconfig = kubecsr.write_kubelet_kubeconfig(
        root / "kubeconfig",
        api_server=material["apiServer"],
        ca_pem=material["caCert"].encode(),
        cert_file=root / "node.crt",
        key_file=root / "node.key",
        node_name=device.name,
    )
    cert_cluster = kubecsr.Cluster(
        material["apiServer"], ca_file, cert_file=root / "node.crt", key_file=root / "node.key"
    )
    yield Enrolled(device, token_cluster, key, cert_pem, cert_cluster, kubeconfig, binding, name)


def test_join_material_is_what_the_contract_says(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    m = enrolled.device.material
    assert set(m) == {"apiServer", "caCert", "bootstrapToken", "nodeName", "revocationCert"}
    assert m["apiServer"] == kube_cluster.api_url and m["nodeName"] == enrolled.device.name
    assert m["caCert"] == kube_cluster.ca_cert.read_text()
    # the revocation certificate holds the key the verifier signs this device's revocations with
    en = crd.EdgeNodes(kube_cluster.client()).get(enrolled.device.name)
    assert en is not None
    revocation_key = x509.load_pem_x509_certificate(m["revocationCert"].encode()).public_key()
    assert revocation_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode() == en.status["revocationPublicKey"]


def test_credential_authenticates_as_the_node(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    api = kube_cluster.client()
    name = enrolled.device.name
    assert _decision(api, enrolled.csr_name) == ("Approved", "AttestedDeviceKey")
    core = _as_node(enrolled.kubeconfig, kube_cluster)
    assert core.read_node(name).metadata.name == name  # the Node authorizer knows this identity
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_secret("kube-system")
    assert f'User "system:node:{name}"' in json.loads(refused.value.body)["message"]
    assert _can_list_configmaps(core)  # the edgeagent:node grant
    en = wait_edgenode(api, name, lambda en: en.phase == "Enrolled", what="to be enrolled")
    assert en.status["attested"] is True and en.status["credentialExpiry"] > en.status["lastAttestation"]
    assert revoke.Access(api).granted(name)
    reasons = {e.reason for e in events_for(api, name)}
    assert {"Attested", "CredentialIssued"} <= reasons


def test_bootstrap_token_is_single_use(
    enrolled: Enrolled, controller: Controller, kube_cluster: KubeCluster
) -> None:
    """Spent once its certificate is issued: a second CSR it sends is denied. It still reads the first one
    (the device may not have yet) until its expiration, a token_ttl after it was made."""
    api = kube_cluster.client()
    name = enrolled.device.name
    token_id = enrolled.device.material["bootstrapToken"].split(".")[0]
    wait_edgenode(api, name, lambda en: en.status.get("bootstrapTokenID") != token_id,
                  what="to drop its spent bootstrap token")
    second, _ = _csr(enrolled.device, enrolled.token_cluster)
    assert _decision(api, second) == ("Denied", "WrongRequester")
    assert kubecsr.issued_certificate(enrolled.token_cluster, enrolled.csr_name) == enrolled.cert_pem
    secret = k8s.CoreV1Api(api).read_namespaced_secret(f"bootstrap-token-{token_id}", bootstrap.NAMESPACE)
    expiration = base64.b64decode(secret.data["expiration"]).decode()
    assert expiration <= crd.now_rfc3339(time.time() + controller.s.token_ttl)


def test_certificate_signed_late_is_still_read_with_the_bootstrap_token(
    controller: Controller, start_device, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """The device reads its CSR with the bootstrap token until the certificate is there, so that token must
    still authenticate after the controller has seen the certificate issued (CI, 1.20: a kube-controller-
    manager catching up after API server restarts signed 10 s after the approval; the controller deleted
    the token on seeing the certificate, and the device's next read got 401 and no certificate).

    Made deterministic: no signer until the controller has approved, then an API server restart, which
    drops its cache of successful token authentications (up to 10 s, which otherwise hid the deletion), and
    the device reads only once the controller has acted on the issued certificate."""
    api = kube_cluster.client()
    device = start_device("edge-latesign")
    edgenode_for(api, device)
    wait_edgenode(api, device.name, lambda en: en.phase == "Attested", what="to be attested")
    material = device.payload()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(material["caCert"])
    token_cluster = kubecsr.Cluster(material["apiServer"], ca_file, token=material["bootstrapToken"])
    kube_cluster.stop_controller_manager()
    try:
        csr_name, _ = _csr(device, token_cluster)
        assert _decision(api, csr_name) == ("Approved", "AttestedDeviceKey")
        kube_cluster.stop_apiserver()
        kube_cluster.start_apiserver()
    finally:
        if kube_cluster.kcm is None:
            kube_cluster.start_controller_manager()
    procs.wait_for(lambda: any(a == "issued" and n == device.name for _, a, n in list(controller.actions)),
                   timeout=60, what="the controller to see the certificate issued")
    # the device's next read, with the token it has (a fresh authentication: no cached one is left)
    cert_pem = kubecsr.wait_certificate(token_cluster, csr_name, timeout=30)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.rfc4514_string() == f"CN=system:node:{device.name},O=system:nodes"
    en = wait_edgenode(api, device.name, lambda en: en.phase == "Enrolled", what="to be enrolled")
    assert "bootstrapTokenID" not in en.status  # spent: no second certificate with it


def test_renewal_with_the_node_certificate(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, key=enrolled.key)
    assert _decision(kube_cluster.client(), name) == ("Approved", "AttestedDeviceKey")
    assert kubecsr.wait_certificate(enrolled.cert_cluster, name, timeout=30)


def test_replayed_binding_is_denied(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, key=enrolled.key, binding=enrolled.first_binding)
    assert _decision(kube_cluster.client(), name) == ("Denied", "ReplayedBinding")


def test_stale_binding_is_denied(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, nonce=nodebinding.make_nonce(time.time() - 3600))
    assert _decision(kube_cluster.client(), name) == ("Denied", "StaleBinding")


def test_key_not_bound_to_the_device_is_denied(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    """The TPM quote binds key A; the CSR carries key B."""
    other = ec.generate_private_key(ec.SECP256R1())
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, bind_key=other)
    assert _decision(kube_cluster.client(), name) == ("Denied", "BindingMismatch")


def test_binding_by_another_tpm_is_denied(
    enrolled: Enrolled, start_device, kube_cluster: KubeCluster
) -> None:
    """A quote from a different AK (another device's TPM) does not verify with this agent's AK."""
    stranger = start_device("edge-stranger", register=False)
    key = ec.generate_private_key(ec.SECP256R1())
    binding = nodekey.tpm_binding(
        stranger.agent.tpm, stranger.agent.ident, agent_uuid=enrolled.device.uuid, public_key=key.public_key()
    )
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, key=key, binding=binding)
    assert _decision(kube_cluster.client(), name) == ("Denied", "BindingMismatch")


def test_csr_for_another_nodes_name_is_denied(
    enrolled: Enrolled, start_device, kube_cluster: KubeCluster
) -> None:
    api = kube_cluster.client()
    other = start_device("edge-other", register=False)
    edgenode_for(api, other)
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, node=other.name)
    assert _decision(api, name) == ("Denied", "WrongRequester")
    # the Event follows the decision in the same reconcile, a request later
    procs.wait_for(lambda: "CSRDenied" in {e.reason for e in events_for(api, other.name)}, timeout=10,
                   what="the CSRDenied event")


def test_csr_for_a_node_without_edgenode_is_left_alone(enrolled: Enrolled, kube_cluster: KubeCluster) -> None:
    admin = kube_cluster.client()
    name, _ = _csr(enrolled.device, enrolled.cert_cluster, node="not-an-edgenode")
    time.sleep(1.5)  # give the controller every chance to (wrongly) decide
    status = k8s.CertificatesV1Api(admin).read_certificate_signing_request(name).status
    assert not (status and status.conditions)


def test_ek_not_pinned(controller: Controller, start_device, kube_cluster: KubeCluster) -> None:
    api = kube_cluster.client()
    device = start_device("edge-unpinned")
    edgenode_for(api, device, ek_cert_sha256="0" * 64)
    en = wait_edgenode(
        api,
        device.name,
        lambda en: "EKTrusted" in {c["type"] for c in en.status.get("conditions", [])},
        what="to have its EK judged",
    )
    assert en.phase == "Pending" and not en.status.get("attested")
    assert "is not the pinned" in en.status["message"]
    assert controller.keylime.agent_state(device.uuid) is None  # never added to the verifier
    assert not device.agent.deliveries
    assert "EKRejected" in {e.reason for e in events_for(api, device.name)}


def test_ek_certificate_from_an_untrusted_ca(
    controller: Controller, start_device, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    api = kube_cluster.client()
    foreign = SoftwareTpm(tmp_path / "foreign-tpm").setup().start()  # its own local CA, not in the store
    device = start_device("edge-foreign", tpm=foreign)
    edgenode_for(api, device)  # pinned correctly: the pin alone is not enough
    en = wait_edgenode(
        api,
        device.name,
        lambda en: "not in the EK CA store" in en.status.get("message", ""),
        what="to be refused for its EK CA",
    )
    assert en.phase == "Pending"
    assert controller.keylime.agent_state(device.uuid) is None


def test_revocation_removes_access_and_restore_brings_it_back(
    enrolled: Enrolled, controller: Controller, kube_cluster: KubeCluster
) -> None:
    api = kube_cluster.client()
    name = enrolled.device.name
    core_admin = k8s.CoreV1Api(api)
    as_node = _as_node(enrolled.kubeconfig, kube_cluster)
    assert _can_list_configmaps(as_node)
    tpm = enrolled.device.agent.tpm
    tpm.pcr_extend(23, {"sha256": b"\x42" * 32})  # a measured file changed
    en = wait_edgenode(api, name, lambda en: en.phase == "Unattested", timeout=30, what="to be revoked")
    assert en.status["attested"] is False
    assert not revoke.Access(api).granted(name)
    assert not _can_list_configmaps(as_node)
    node = core_admin.read_node(name)
    assert node.spec.unschedulable is True
    assert any(t.key == revoke.TAINT_KEY and t.effect == "NoExecute" for t in node.spec.taints or [])
    failures = [e for e in events_for(api, name) if e.reason == "AttestationFailed"]
    assert failures and failures[-1].type == "Warning"
    # the webhook carried it (the fallback poll runs every 5 s here, the verifier quotes every 2 s)
    assert "revocation notification" in en.status["message"]
    # renewal is refused while unattested
    csr_name, _ = _csr(enrolled.device, enrolled.cert_cluster, key=enrolled.key)
    assert _decision(api, csr_name) == ("Denied", "NotAttested")

    tpm.pcr_reset(23)  # the device is back in its attested state
    en = wait_edgenode(
        api, name, lambda en: en.status.get("attested") is True, timeout=30, what="to be restored"
    )
    assert en.phase == "Enrolled"
    assert revoke.Access(api).granted(name)
    node = core_admin.read_node(name)
    assert not node.spec.unschedulable
    assert not any(t.key == revoke.TAINT_KEY for t in node.spec.taints or [])
    assert _can_list_configmaps(as_node)
    assert "AttestationRestored" in {e.reason for e in events_for(api, name)}
    csr_name, _ = _csr(enrolled.device, enrolled.cert_cluster, key=enrolled.key)
    assert _decision(api, csr_name) == ("Approved", "AttestedDeviceKey")


def test_polling_catches_a_failure_the_webhook_never_reported(
    enrolled: Enrolled, controller: Controller, kube_cluster: KubeCluster
) -> None:
    api = kube_cluster.client()
    name = enrolled.device.name
    wait_edgenode(api, name, lambda en: en.status.get("attested") is True, what="to be attested")
    assert controller.webhook is not None
    controller.webhook.stop()  # notifications are lost from now on
    try:
        enrolled.device.agent.tpm.pcr_extend(23, {"sha256": b"\x17" * 32})
        en = wait_edgenode(api, name, lambda en: en.phase == "Unattested", timeout=30, what="to be revoked")
        assert "operational_state" in en.status["message"]  # found by polling the verifier
        assert not revoke.Access(api).granted(name)
        enrolled.device.agent.tpm.pcr_reset(23)
        wait_edgenode(
            api, name, lambda en: en.status.get("attested") is True, timeout=30, what="to be restored"
        )
        assert revoke.Access(api).granted(name)
    finally:
        controller.webhook = webhook.WebhookServer(
            controller.receiver,
            "127.0.0.1",
            controller.s.webhook_port,
            webhook.server_context(
                controller.s.webhook_cert, controller.s.webhook_key, controller.s.webhook_client_ca
            ),
        ).start()


def test_payload_is_sealed_to_the_attested_device(enrolled: Enrolled) -> None:
    """What reached the agent is K-encrypted join material; K formed only after the verifier sent V."""
    delivery = enrolled.device.agent.deliveries[0]
    assert len(delivery.key) == 32
    assert json.loads(delivery.payload)["bootstrapToken"].count(".") == 1
    assert base64.b64encode(delivery.key)  # (K itself is never in the cluster: only U went to the agent)


def test_api_server_down_during_enrollment(
    controller: Controller, start_device, kube_cluster: KubeCluster, keylime: Keylime
) -> None:
    api = kube_cluster.client()
    device = start_device("edge-outage", register=False)
    edgenode_for(api, device)
    wait_edgenode(
        api, device.name, lambda en: "waiting" in en.status.get("message", ""), what="to wait for its agent"
    )
    errors_before = len(controller.errors)
    kube_cluster.stop_apiserver()
    try:
        device.agent.register()  # Keylime works; the controller cannot reach the API server
        procs.wait_for(
            lambda: len(controller.errors) > errors_before,
            timeout=20,
            what="the controller to notice the API server is gone",
        )
    finally:
        kube_cluster.start_apiserver()
    en = wait_edgenode(
        api,
        device.name,
        lambda en: en.phase == "Attested",
        timeout=60,
        what="to be attested once the API server is back",
    )
    assert en.status["delivered"] is True
    assert device.payload()["nodeName"] == device.name
    assert crd.EdgeNodes(api).get(device.name) is not None


def test_verifier_down_during_enrollment(
    controller: Controller, start_device, kube_cluster: KubeCluster, keylime: Keylime
) -> None:
    api = kube_cluster.client()
    device = start_device("edge-verifier-outage")
    errors_before = len(controller.errors)
    keylime.stop_verifier()
    try:
        edgenode_for(api, device)
        procs.wait_for(
            lambda: any("verifier" in e or device.name in e for e in controller.errors[errors_before:]),
            timeout=20,
            what="the controller to fail to reach the verifier",
        )
        assert crd.EdgeNodes(api).get(device.name).status.get("delivered") is not True
    finally:
        keylime.start_verifier()
    en = wait_edgenode(
        api,
        device.name,
        lambda en: en.phase == "Attested",
        timeout=60,
        what="to be attested once the verifier is back",
    )
    assert en.status["delivered"] is True
    assert device.payload()["nodeName"] == device.name


def test_deleting_the_edgenode_withdraws_everything(
    enrolled: Enrolled, controller: Controller, kube_cluster: KubeCluster
) -> None:
    api = kube_cluster.client()
    name = enrolled.device.name
    assert revoke.Access(api).granted(name)
    crd.EdgeNodes(api).delete(name)
    procs.wait_for(lambda: not revoke.Access(api).granted(name), timeout=15, what="the grants to go")
    procs.wait_for(
        lambda: controller.keylime.agent_state(enrolled.device.uuid) is None,
        timeout=15,
        what="the verifier to stop polling the agent",
    )
    assert not _can_list_configmaps(_as_node(enrolled.kubeconfig, kube_cluster))


def test_auto_approval_bindings_are_found(kube_cluster: KubeCluster) -> None:
    """kubeadm's bindings that let kube-controller-manager approve kubelet certificates without attestation
    are what the controller warns about on leading; the testbed has none until one is made."""
    from edgeagent.cloud.csr import auto_approval_bindings

    api = kube_cluster.client()
    rbac = k8s.RbacAuthorizationV1Api(api)
    name = f"kubeadm:node-autoapprove-certificate-rotation-{uuid.uuid4().hex[:6]}"
    assert name not in auto_approval_bindings(api)
    rbac.create_cluster_role_binding(k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(name=name),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                               name="system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"),
        subjects=[
            k8s.RbacV1Subject(kind="Group", name="system:nodes", api_group="rbac.authorization.k8s.io")
        ],
    ))
    try:
        assert name in auto_approval_bindings(api)
    finally:
        rbac.delete_cluster_role_binding(name)
    assert name not in auto_approval_bindings(api)


def test_auto_approval_bindings_by_name_with_the_controllers_own_rights(kube_cluster: KubeCluster) -> None:
    """With deploy/rbac.yaml's rights (get, not list, on ClusterRoleBindings) kubeadm's bindings are found by
    name."""
    from edgeagent.cloud.csr import auto_approval_bindings
    from tests.integration.cloud.conftest import least_privilege_client

    admin = k8s.RbacAuthorizationV1Api(kube_cluster.client())
    name = "kubeadm:node-autoapprove-bootstrap"
    admin.create_cluster_role_binding(k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(name=name),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                               name="system:certificates.k8s.io:certificatesigningrequests:nodeclient"),
        subjects=[
            k8s.RbacV1Subject(kind="Group", name="system:bootstrappers",
                              api_group="rbac.authorization.k8s.io")
        ],
    ))
    try:
        assert auto_approval_bindings(least_privilege_client(kube_cluster)) == [name]
    finally:
        admin.delete_cluster_role_binding(name)
    assert auto_approval_bindings(least_privilege_client(kube_cluster)) == []
