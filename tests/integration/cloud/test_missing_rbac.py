"""Bad input: the controller deployed without RBAC for CSRs (issue 17).

Its identity is a ServiceAccount given deploy/rbac.yaml's grants minus the certificates.k8s.io rules (the
admin impersonating it, as the other cloud tests do with the full grants). It must say so once, in one log
line and in a Warning Event on its own Pod, go on attesting (and so revoking) devices, and start approving
CSRs as soon as the rights are granted, without a restart.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from edgeagent.cloud import selfcheck
from edgeagent.cloud.controller import Controller
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import (
    DEPLOY,
    apply_manifests,
    controller_settings,
    edgenode_for,
    require_custom_resources,
    wait_edgenode,
)

pytestmark = pytest.mark.integration

NAMESPACE = "edgeagent-norbac"
ACCOUNT = "controller"
SUFFIX = "-norbac"
CONTROLLER_ROLE = "edgeagent:attestation-controller"


def rbac_without_csr_rules() -> list[dict[str, Any]]:
    """deploy/rbac.yaml's grants to the controller's ServiceAccount, re-aimed at NAMESPACE/ACCOUNT under new
    names, with the controller ClusterRole's certificates.k8s.io rules dropped."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d]
    bindings = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("kind") == "ServiceAccount" for s in d.get("subjects", []))
    ]
    roles = {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    out = []
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            continue
        is_binding = doc in bindings
        if not is_binding and (doc["kind"], doc["metadata"]["name"]) not in roles:
            continue  # edgeagent:node and the bootstrappers' binding: shared, named in the code
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] += SUFFIX
        if doc["metadata"].get("namespace") == "edgeagent-system":
            doc["metadata"]["namespace"] = NAMESPACE
        if is_binding:
            doc["roleRef"]["name"] += SUFFIX
            doc["subjects"] = [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == CONTROLLER_ROLE + SUFFIX:
            doc["rules"] = [r for r in doc["rules"] if "certificates.k8s.io" not in r["apiGroups"]]
        out.append(doc)
    return out


@pytest.fixture(scope="module")
def norbac(kube_cluster: KubeCluster) -> Iterator[k8s.V1Pod]:
    """The ServiceAccount, its reduced grants, and a Pod running as it (never scheduled: this cluster has no
    scheduler; it is the object the controller's Event must name, as its downward API would)."""
    require_custom_resources(kube_cluster)
    admin = kube_cluster.client()
    apply_manifests(admin, "namespace.yaml", "rbac.yaml")  # the shared edgeagent:node role, the full grants
    core = k8s.CoreV1Api(admin)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    account = k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=ACCOUNT))
    core.create_namespaced_service_account(NAMESPACE, account)
    made = rbac_without_csr_rules()
    for doc in made:
        k8s_utils.create_from_dict(admin, doc)
    pod = core.create_namespaced_pod(
        NAMESPACE,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="edgeagent-attestation-controller-norbac"),
            spec=k8s.V1PodSpec(
                service_account_name=ACCOUNT,
                automount_service_account_token=False,
                containers=[k8s.V1Container(name="controller", image="edgeagent.local/controller")],
            ),
        ),
    )
    try:
        yield pod
    finally:
        rbac = k8s.RbacAuthorizationV1Api(admin)
        for doc in made:
            name = doc["metadata"]["name"]
            if doc["kind"] == "ClusterRole":
                rbac.delete_cluster_role(name)
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(name)
            elif doc["kind"] == "Role":
                rbac.delete_namespaced_role(name, doc["metadata"]["namespace"])
            else:
                rbac.delete_namespaced_role_binding(name, doc["metadata"]["namespace"])
        core.delete_namespace(NAMESPACE)


def test_controller_without_csr_rbac_says_so_once_goes_on_and_resumes_when_granted(
    kube_cluster: KubeCluster,
    keylime: Keylime,
    start_device,
    norbac: k8s.V1Pod,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = kube_cluster.client()
    api = kube_cluster.client()
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}")
    settings = controller_settings(
        kube_cluster,
        keylime,
        install_crd=False,
        lease_namespace=NAMESPACE,
        identity="norbac",
        rights_recheck_interval=0.3,
        self_ref=selfcheck.SelfRef("Pod", "v1", norbac.metadata.name, NAMESPACE, norbac.metadata.uid),
    )
    caplog.set_level(logging.INFO, logger="edgeagent")
    c = Controller(api, settings).start()
    try:
        procs.wait_for(c.elector.is_leader, timeout=15, what="the controller to lead")
        assert not c.csr_watch.alive
        missing = {(r.verb, r.target) for r in c.missing_rights}
        assert missing == {(r.verb, r.target) for r in selfcheck.CSR_RIGHTS}

        core = k8s.CoreV1Api(admin)
        selector = f"involvedObject.uid={norbac.metadata.uid}"
        events = core.list_namespaced_event(NAMESPACE, field_selector=selector).items
        seen = [(e.reason, e.type, e.involved_object.kind) for e in events]
        assert seen == [("MissingRBAC", "Warning", "Pod")]
        message = events[0].message
        for needed in (
            "list, watch certificatesigningrequests.certificates.k8s.io",
            "update certificatesigningrequests.certificates.k8s.io/approval",
            "approve signers.certificates.k8s.io/kubernetes.io/kube-apiserver-client-kubelet",
        ):
            assert needed in message

        # It goes on: a device is attested (and would be revoked); only credentials wait for the rights.
        device = start_device("edge-norbac")
        edgenode_for(admin, device)
        wait_edgenode(admin, device.name, lambda en: en.phase == "Attested", timeout=90, what="attested")

        # Rechecked every 0.3 s meanwhile, reported once: one line, no retries of a forbidden watch.
        about_csrs = [r for r in caplog.records if "certificatesigningrequests" in r.getMessage()]
        assert [(r.levelno, r.getMessage()) for r in about_csrs] == [(logging.ERROR, message)]
        assert "\n" not in message

        rbac = k8s.RbacAuthorizationV1Api(admin)
        role = rbac.read_cluster_role(CONTROLLER_ROLE + SUFFIX)
        role.rules = [*role.rules, *rbac.read_cluster_role(CONTROLLER_ROLE).rules]
        rbac.replace_cluster_role(role.metadata.name, role)
        procs.wait_for(lambda: c.csr_watch.alive and c.csr_watch.healthy, timeout=15, what="the CSR watch")
        assert c.missing_rights == []
        assert [r.levelno for r in caplog.records if "RBAC for CSRs granted now" in r.getMessage()] == [
            logging.WARNING
        ]
        assert len(core.list_namespaced_event(NAMESPACE, field_selector=selector).items) == 1
    finally:
        c.stop()
