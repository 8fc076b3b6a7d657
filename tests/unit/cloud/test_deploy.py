"""deploy/ holds what the code installs and needs: one source of truth, checked."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client as k8s

from edgeagent.cloud import bootstrap, crd, revoke

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_crd_manifest_is_the_installed_definition() -> None:
    assert _docs("crd.yaml") == [crd.definition()]


def test_node_role_and_bootstrapper_binding_match_the_code() -> None:
    docs = _docs("rbac.yaml")
    role = _find(docs, "ClusterRole", revoke.NODE_ROLE)
    expected = k8s.ApiClient().sanitize_for_serialization(revoke.node_role())
    assert role["rules"] == expected["rules"]
    binding = _find(docs, "ClusterRoleBinding", bootstrap.BOOTSTRAPPER_BINDING)
    assert binding["roleRef"]["name"] == bootstrap.BOOTSTRAPPER_ROLE
    assert binding["subjects"] == [
        {"kind": "Group", "name": bootstrap.GROUP, "apiGroup": "rbac.authorization.k8s.io"}
    ]


def test_controller_role_grants_no_wildcards_and_no_secret_reads_cluster_wide() -> None:
    docs = _docs("rbac.yaml")
    role = _find(docs, "ClusterRole", "edgeagent:attestation-controller")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]  # only in kube-system, through a Role
    bind = [r for r in role["rules"] if "bind" in r["verbs"]]
    assert bind and all(r.get("resourceNames") for r in bind)


def test_deployment_runs_two_replicas_with_leader_election() -> None:
    docs = _docs("deployment.yaml")
    dep = _find(docs, "Deployment", "edgeagent-attestation-controller")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "attestation-controller"
    options = {a.split("=")[0] for a in container["args"][1:]}
    assert {
        "--registrar-url",
        "--verifier-url",
        "--keylime-ca-dir",
        "--ek-ca-store",
        "--webhook-listen",
        "--credential-lifetime",
        "--lease-namespace",
        "--identity",
    } <= options
