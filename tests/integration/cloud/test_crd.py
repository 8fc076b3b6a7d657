"""The EdgeNode CRD on a real kube-apiserver: installs, validates, keeps status apart, prints its columns."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.cloud import crd
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import require_custom_resources

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(kube_cluster: KubeCluster) -> k8s.ApiClient:
    require_custom_resources(kube_cluster)
    return kube_cluster.client()


def _table(cluster: KubeCluster) -> dict:
    req = urllib.request.Request(
        f"{cluster.api_url}/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    with urllib.request.urlopen(req, context=cluster.admin_ssl_context(), timeout=10) as resp:
        return json.loads(resp.read())


def test_install_is_idempotent_and_established(installed: k8s.ApiClient) -> None:
    crd.install(installed)  # second time: replaced, still established
    got = k8s.ApiextensionsV1Api(installed).read_custom_resource_definition(crd.NAME)
    assert got.spec.scope == "Cluster"
    assert got.spec.versions[0].subresources.status is not None


def test_status_updates_show_in_printer_columns(installed: k8s.ApiClient, kube_cluster: KubeCluster) -> None:
    nodes = crd.EdgeNodes(installed)
    name = f"edge-{uuid.uuid4().hex[:6]}"
    created = nodes.create(name, crd.EdgeNodeSpec(agent_uuid=str(uuid.uuid4()), ek_cert_sha256="ab" * 32))
    assert created.phase == "Pending" and created.status == {}
    nodes.patch_status(
        name,
        {
            "phase": "Enrolled",
            "attested": True,
            "lastAttestation": "2026-01-02T03:04:05Z",
            "credentialExpiry": "2026-01-03T03:04:05Z",
        },
    )
    table = _table(kube_cluster)
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:5] == ["Name", "Phase", "Attested", "Last Attestation", "Credential Expiry"]
    row = next(r for r in table["rows"] if r["cells"][0] == name)
    assert row["cells"][1:3] == ["Enrolled", True]
    # date columns render as ages, so only check they are filled
    assert all(row["cells"][3:5])


def test_status_is_a_subresource(installed: k8s.ApiClient) -> None:
    """A spec update cannot mark a node attested: status written through the main resource is dropped."""
    custom = k8s.CustomObjectsApi(installed)
    name = f"edge-{uuid.uuid4().hex[:6]}"
    crd.EdgeNodes(installed).create(name, crd.EdgeNodeSpec(agent_uuid="u1", ek_cert_sha256="cd" * 32))
    obj = custom.get_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL, name)
    obj["status"] = {"phase": "Enrolled", "attested": True}
    custom.replace_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL, name, obj)
    assert crd.EdgeNodes(installed).get(name).status.get("attested") is None


@pytest.mark.parametrize("spec", [{"ekCertSHA256": "ab" * 32}, {"agentUUID": "u", "ekCertSHA256": "XYZ"}])
def test_schema_rejects_bad_specs(installed: k8s.ApiClient, spec: dict) -> None:
    custom = k8s.CustomObjectsApi(installed)
    body = {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as refused:
        custom.create_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL, body)
    assert refused.value.status == 422
