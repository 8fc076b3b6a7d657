"""deploy/ holds what the code installs and needs: one source of truth, checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes import client as k8s

from edgeagent.cloud import bootstrap, crd, revoke, signingkey

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


def test_signing_key_secret_is_readable_by_name_only_and_never_changed() -> None:
    docs = _docs("rbac.yaml")
    role = _find(docs, "Role", "edgeagent:join-signing-key")
    assert role["metadata"]["namespace"] == "edgeagent-system"  # the controller's own, where its Lease is
    rules = role["rules"]
    assert all(r["resources"] == ["secrets"] and r["apiGroups"] == [""] for r in rules)
    reads = [r for r in rules if set(r["verbs"]) & {"get", "list", "watch", "update", "patch", "delete"}]
    assert reads == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [signingkey.SECRET_NAME],
                      "verbs": ["get"]}]
    assert [r["verbs"] for r in rules if "resourceNames" not in r] == [["create"]]
    binding = _find(docs, "RoleBinding", "edgeagent:join-signing-key")
    assert binding["roleRef"]["name"] == "edgeagent:join-signing-key"
    assert binding["subjects"][0]["name"] == "edgeagent-attestation-controller"


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


CHART = DEPLOY / "chart" / "edgeagent"


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    from edgeagent.testbed.helm import helm_binary

    return subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-unit"},
    )


def test_deploy_manifests_are_rendered_from_the_chart() -> None:
    run = subprocess.run(
        [sys.executable, str(DEPLOY.parent / "scripts" / "render-deploy.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_chart_lints_clean_and_refuses_missing_values_in_one_line() -> None:
    ok = _helm("lint", str(CHART), "--values", str(CHART / "ci" / "lint-values.yaml"))
    assert ok.returncode == 0 and "0 chart(s) failed" in ok.stdout, ok.stdout + ok.stderr
    bare = _helm("template", "x", str(CHART))
    assert bare.returncode != 0
    assert "apiServer" in bare.stderr and "ekCA" in bare.stderr


def test_charts_keylime_configuration_has_the_testbeds_keys() -> None:
    """The chart's Keylime files and the testbed's (the suite runs Keylime with those) name the same keys."""
    import configparser

    from edgeagent.testbed import keylime_config

    docs = _docs("keylime.yaml")
    conf = _find(docs, "ConfigMap", "keylime-config")["data"]
    settings = keylime_config.KeylimeSettings(
        verifier_port=1,
        registrar_port=2,
        registrar_tls_port=3,
        zmq_port=4,
        tpm_cert_store=Path("/x"),
        webhook_url="https://w",
    )
    for component, sections in keylime_config.render(settings).items():
        parser = configparser.RawConfigParser()
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(conf[f"{component}.conf"])
        for section, values in sections.items():
            assert set(parser[section]) == set(values), (component, section)
