"""The join endpoint's signing key in its Secret, against the real API server and the deployed RBAC.

Made once, whoever asks first: replicas racing to create it end up with one key; a new controller process
reads the same key back; the controller's ServiceAccount reads that Secret and no other, and cannot change it.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s

from edgeagent.cloud import signingkey
from edgeagent.errors import ClusterError, ConfigError
from edgeagent.kube import errors as kube_errors
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import least_privilege_client

pytestmark = pytest.mark.integration

NAMESPACE = "edgeagent-system"


def _numbers(key: rsa.RSAPrivateKey) -> int:
    return key.public_key().public_numbers().n


def test_replicas_racing_to_create_the_key_share_one(kube_cluster: KubeCluster) -> None:
    admin = kube_cluster.client()
    least_privilege_client(kube_cluster)  # the namespace and RBAC of deploy/
    name = f"signing-race-{uuid.uuid4().hex[:6]}"
    try:
        replicas = [signingkey.SigningKey(admin, NAMESPACE, name) for _ in range(4)]
        keys: list[rsa.RSAPrivateKey] = []
        start = threading.Barrier(len(replicas))

        def get(r: signingkey.SigningKey) -> None:
            start.wait()
            keys.append(r.get())

        threads = [threading.Thread(target=get, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(keys) == len(replicas)
        assert len({_numbers(k) for k in keys}) == 1  # the losers of the create read the winner's key
        # a restarted controller (a new process, nothing in memory) reads that key back
        assert _numbers(signingkey.SigningKey(admin, NAMESPACE, name).get()) == _numbers(keys[0])
        secret = k8s.CoreV1Api(admin).read_namespaced_secret(name, NAMESPACE)
        assert secret.immutable is True and set(secret.data or {}) == {signingkey.KEY_FIELD}
    finally:
        kube_errors.call("delete", k8s.CoreV1Api(admin).delete_namespaced_secret, name, NAMESPACE, ok=(404,))


def test_a_secret_without_a_key_is_refused_not_replaced(kube_cluster: KubeCluster) -> None:
    admin = kube_cluster.client()
    least_privilege_client(kube_cluster)
    name = f"signing-bad-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_secret(NAMESPACE, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=name), string_data={signingkey.KEY_FIELD: "not a key"}))
    try:
        with pytest.raises(ConfigError, match="no RSA private key"):
            signingkey.SigningKey(admin, NAMESPACE, name).get()
        left = core.read_namespaced_secret(name, NAMESPACE).data or {}
        assert left[signingkey.KEY_FIELD]  # left as it was, not replaced by a new key
    finally:
        core.delete_namespaced_secret(name, NAMESPACE)


def test_the_controller_reads_its_secret_and_no_other(kube_cluster: KubeCluster) -> None:
    api = least_privilege_client(kube_cluster)  # the controller's ServiceAccount, deploy/rbac.yaml's rules
    key = signingkey.SigningKey(api, NAMESPACE).get()  # made or read under the deployed name
    assert _numbers(signingkey.SigningKey(api, NAMESPACE).get()) == _numbers(key)
    with pytest.raises(ClusterError, match=r"403|[Ff]orbidden"):
        signingkey.SigningKey(api, NAMESPACE, f"other-{uuid.uuid4().hex[:6]}").get()  # get refused by name
    core = k8s.CoreV1Api(api)
    with pytest.raises(k8s.ApiException) as refused:
        core.delete_namespaced_secret(signingkey.SECRET_NAME, NAMESPACE)
    assert refused.value.status == 403
    with pytest.raises(k8s.ApiException) as refused:
        core.list_namespaced_secret(NAMESPACE)
    assert refused.value.status == 403
