"""The test control plane is a real one: objects persist, CSRs are signed by kube-controller-manager, and a
signed node certificate authenticates as that node."""

from __future__ import annotations

import base64
import datetime
import json
import uuid

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from tests.fixtures import kube_pki, procs
from tests.fixtures.kube import KubeCluster

pytestmark = pytest.mark.integration

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


def test_namespace_round_trip(kube_cluster: KubeCluster) -> None:
    core = k8s_client.CoreV1Api(kube_cluster.client())
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name)))
    assert core.read_namespace(name).status.phase == "Active"
    assert name in {ns.metadata.name for ns in core.list_namespace().items}


def _signed_certificate(api: k8s_client.CertificatesV1Api, name: str) -> bytes | None:
    status = api.read_certificate_signing_request_status(name).status
    return base64.b64decode(status.certificate) if status and status.certificate else None


def _approve(certs: k8s_client.CertificatesV1Api, name: str, why: str) -> None:
    body = certs.read_certificate_signing_request(name)
    body.status.conditions = [k8s_client.V1CertificateSigningRequestCondition(
        type="Approved", status="True", reason="EdgeAgentTest", message=why)]
    certs.replace_certificate_signing_request_approval(name, body)


def _wait_signed(certs: k8s_client.CertificatesV1Api, name: str) -> x509.Certificate:
    procs.wait_for(lambda: _signed_certificate(certs, name) is not None, timeout=30,
                   what="kube-controller-manager to sign the CSR")
    cert_pem = _signed_certificate(certs, name)
    assert cert_pem is not None
    return x509.load_pem_x509_certificate(cert_pem)


def test_node_csr_is_signed_and_authenticates(kube_cluster: KubeCluster) -> None:
    admin = kube_cluster.client()
    certs = k8s_client.CertificatesV1Api(admin)
    key = kube_pki.new_key()
    name = f"node-edge1-{uuid.uuid4().hex[:8]}"
    csr = k8s_client.V1CertificateSigningRequest(
        metadata=k8s_client.V1ObjectMeta(name=name),
        spec=k8s_client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(kube_pki.csr_pem(key, "system:node:edge1", ["system:nodes"])).decode(),
            signer_name=KUBELET_SIGNER,
            # 1.20's kubelet-client signer silently ignores any other usage set (1.22+ also accepts the set
            # without key encipherment); these three are accepted by every version.
            usages=["digital signature", "key encipherment", "client auth"],
        ),
    )
    certs.create_certificate_signing_request(csr)
    # Not approved yet: nothing signs it (csrapproving is off in the test cluster).
    assert _signed_certificate(certs, name) is None

    _approve(certs, name, "approved by the smoke test")
    cert = _wait_signed(certs, name)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    signing_ca = x509.load_pem_x509_certificate(kube_cluster.signing_ca.read_bytes())
    assert cert.issuer == signing_ca.subject
    cert.verify_directly_issued_by(signing_ca)
    assert cert.subject.rfc4514_string() in ("CN=system:node:edge1,O=system:nodes",
                                             "O=system:nodes,CN=system:node:edge1")
    # --cluster-signing-duration=1h: the lifetime is the cluster's, not the default year
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(hours=1, minutes=5)

    node_kubeconfig = kube_cluster.write_kubeconfig(
        kube_cluster.root / f"{name}.kubeconfig", cert_pem, kube_pki.key_pem(key), user="edge1")
    as_node = k8s_client.CoreV1Api(kube_cluster.client(node_kubeconfig))
    # The Node authorizer lets a node read its own Node object (absent here: 404, not 403).
    with pytest.raises(ApiException) as missing:
        as_node.read_node("edge1")
    assert missing.value.status == 404
    # Anything else is refused, and the refusal names the identity the certificate carried.
    with pytest.raises(ApiException) as refused:
        as_node.list_namespaced_secret("kube-system")
    assert refused.value.status == 403
    assert 'User "system:node:edge1"' in json.loads(refused.value.body)["message"]


def test_cluster_runs_the_selected_release(kube_cluster: KubeCluster) -> None:
    """EDGEAGENT_KUBE picks the release; the running API server is that release, not just its bin dir."""
    from edgeagent.testbed.kube import KUBE_RELEASES, kube_release

    release = KUBE_RELEASES[kube_release()]
    served = k8s_client.VersionApi(kube_cluster.client()).get_code()
    assert served.git_version == f"v{release}"
    assert kube_cluster.version == tuple(int(part) for part in release.split(".")[:2])


def test_csr_expiration_seconds_sets_the_lifetime(kube_cluster: KubeCluster) -> None:
    """A CSR's spec.expirationSeconds (1.22+) bounds the certificate's lifetime below the cluster's 1 h.

    On 1.20 the field does not exist: the API server drops it and the cluster's --cluster-signing-duration
    decides; that is asserted instead (the branch follows the version the running API server reports).
    """
    assert kube_cluster.version is not None
    certs = k8s_client.CertificatesV1Api(kube_cluster.client())
    key = kube_pki.new_key()
    name = f"node-short-{uuid.uuid4().hex[:8]}"
    requested = 15 * 60
    certs.create_certificate_signing_request(k8s_client.V1CertificateSigningRequest(
        metadata=k8s_client.V1ObjectMeta(name=name),
        spec=k8s_client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(kube_pki.csr_pem(key, "system:node:edge2", ["system:nodes"])).decode(),
            signer_name=KUBELET_SIGNER, expiration_seconds=requested,
            usages=["digital signature", "key encipherment", "client auth"])))
    _approve(certs, name, "approved by the lifetime test")
    cert = _wait_signed(certs, name)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    stored = certs.read_certificate_signing_request(name).spec.expiration_seconds
    if kube_cluster.version >= (1, 22):
        assert stored == requested
        # The signer backdates notBefore by 5 min and, for a lifetime under 8 h, keeps notAfter = now + TTL.
        assert lifetime == datetime.timedelta(seconds=requested, minutes=5)
    else:
        assert stored is None
        assert datetime.timedelta(minutes=55) <= lifetime <= datetime.timedelta(hours=1, minutes=5)


def test_certificate_from_an_unknown_ca_is_unauthenticated(kube_cluster: KubeCluster, tmp_path) -> None:
    rogue_ca = kube_pki.make_ca("rogue")
    rogue = kube_pki.issue(rogue_ca, "system:node:edge1", orgs=["system:nodes"], client=True)
    kubeconfig = kube_cluster.write_kubeconfig(tmp_path / "rogue.kubeconfig", rogue.cert_pem, rogue.key_pem,
                                               user="rogue")
    with pytest.raises(ApiException) as refused:
        k8s_client.CoreV1Api(kube_cluster.client(kubeconfig)).read_node("edge1")
    assert refused.value.status == 401


def test_kubeconfig_is_private(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.kubeconfig.stat().st_mode & 0o777 == 0o600


def test_apiserver_restart_keeps_state(kube_cluster: KubeCluster) -> None:
    core = k8s_client.CoreV1Api(kube_cluster.client())
    name = f"restart-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name)))
    kube_cluster.stop_apiserver()
    try:
        with pytest.raises((urllib3.exceptions.HTTPError, OSError)):  # connection refused, after retries
            core.read_namespace(name, _request_timeout=2)
    finally:
        kube_cluster.start_apiserver()
    assert core.read_namespace(name).metadata.name == name


def test_bare_apiserver_with_a_token_admin(tmp_path) -> None:
    """The testbed's other shape (what benchmarks need): no kube-controller-manager, a static admin token."""
    from edgeagent.testbed.kube import KubeCluster as TestbedCluster

    with TestbedCluster(tmp_path / "kube", admin_token=True).start(controller_manager=False) as cluster:
        assert cluster.kcm is None and cluster.token is not None and cluster.token_kubeconfig is not None
        assert cluster.token_kubeconfig.stat().st_mode & 0o777 == 0o600
        core = k8s_client.CoreV1Api(cluster.client(cluster.token_kubeconfig))
        assert "kube-system" in {ns.metadata.name for ns in core.list_namespace().items}
        wrong = k8s_client.Configuration()
        wrong.host, wrong.ssl_ca_cert = cluster.api_url, str(cluster.ca_cert)
        wrong.api_key = {"authorization": "not-the-token"}
        wrong.api_key_prefix = {"authorization": "Bearer"}
        with pytest.raises(ApiException) as err:
            k8s_client.CoreV1Api(k8s_client.ApiClient(wrong)).list_namespace()
        assert err.value.status == 401
    assert cluster.apiserver is None and cluster.etcd is None
