"""What the attestation controller's watches cost a real kube-apiserver: one LIST per kind, then watches.

Every request the controller's connection sends is counted (a wrapper around the official client's urllib3
pool, which both its typed calls and its watches use). The watch timeout is made short (2-3 s), so the test
spans several stream ends; each must resume from the last resourceVersion, never list again. Keylime is not
involved: this replica never leads, so no reconcile runs and the only requests are the watches'.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edgeagent.cloud import crd, keylime
from edgeagent.cloud.controller import Controller, Settings
from edgeagent.errors import AttestationError
from edgeagent.kube.api import KubeApi
from edgeagent.kube.transport import ClientTransport
from edgeagent.testbed import procs
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import require_custom_resources

pytestmark = pytest.mark.integration

COLLECTIONS = {
    f"/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}": "edgenodes",
    "/apis/certificates.k8s.io/v1/certificatesigningrequests": "csrs",
}
STREAM_ENDS = 3


class CountingPool:
    """Wraps a urllib3 PoolManager; counts LISTs (GET on a collection, no watch=true) and watches by kind."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.lists: Counter[str] = Counter()
        self.watches: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        with self._lock:
            for prefix, kind in COLLECTIONS.items():
                if method == "GET" and parts.path == prefix:
                    (self.watches if query.get("watch") == ["true"] else self.lists)[kind] += 1
                elif method == "GET" and parts.path.startswith(prefix + "/"):
                    self.gets[kind] += 1
        return self._pool.request(method, url, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def unreachable_keylime(*_: Any, **__: Any) -> Any:
    raise AttestationError("no Keylime in this test")


def test_watches_resume_across_timeouts_without_relisting(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    require_custom_resources(kube_cluster)
    api = kube_cluster.client()
    pool = CountingPool(api.rest_client.pool_manager)
    api.rest_client.pool_manager = pool
    settings = Settings(
        registrar_url="https://127.0.0.1:1",
        verifier_url="https://127.0.0.1:1",
        keylime_ca_dir=tmp_path,
        ek_ca_store=kube_cluster.ca_cert,  # any CA certificate: no EK is checked here
        api_server_url=kube_cluster.api_url,
        api_server_ca_pem=kube_cluster.ca_cert.read_text(),
        lease_name=f"edgeagent-test-{uuid.uuid4().hex[:6]}",
        webhook_port=None,
        watch_timeout=2,
    )
    fake_keylime: Any = type(
        "NoKeylime", (), {"registrar_agent": unreachable_keylime, "agent_state": unreachable_keylime}
    )()
    tls = keylime.KeylimeTls.from_dir(tmp_path)
    controller = Controller(api, settings, keylime_client=fake_keylime, tls=tls)
    controller.elector.is_leader = lambda: False  # type: ignore[method-assign]  # a follower: watches only
    nodes = crd.EdgeNodes(kube_cluster.client())
    name = f"watched-{uuid.uuid4().hex[:6]}"
    controller.start()
    try:
        watches = (controller.edgenode_watch, controller.csr_watch)
        procs.wait_for(
            lambda: all(w.stats.streams > STREAM_ENDS for w in watches),
            timeout=60,
            what=f"{STREAM_ENDS} watch timeouts on each kind",
        )
        nodes.create(name, crd.EdgeNodeSpec(agent_uuid=str(uuid.uuid4())))
        known = controller.edgenode_watch.known
        procs.wait_for(lambda: ("", name) in known(), timeout=20, what="the new EdgeNode's event")
        health = controller.health()
    finally:
        controller.stop()
        nodes.delete(name)
    assert pool.watches["edgenodes"] > STREAM_ENDS and pool.watches["csrs"] > STREAM_ENDS
    # the measurement: one LIST per kind for the whole run, whatever the number of stream ends
    assert dict(pool.lists) == {"edgenodes": 1, "csrs": 1}, (dict(pool.lists), dict(pool.watches))
    assert not pool.gets  # nothing read object by object
    assert all(h["healthy"] and h["relists"] == 0 and h["errors"] == 0 for h in health.values()), health


def test_the_watches_go_through_the_clients_identity(kube_cluster: KubeCluster) -> None:
    """The watches use the official client's connection with its default headers (Impersonate-User): a
    deployment that impersonates a ServiceAccount watches with that account's rights, not the admin's."""
    api = kube_cluster.client()
    kube = KubeApi(ClientTransport(api))
    path = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
    assert kube.call("GET", path, query=[("limit", "1")]).status == 200  # the admin may
    api.set_default_header("Impersonate-User", "system:serviceaccount:nowhere:nobody")
    assert kube.call("GET", path, query=[("limit", "1")]).status == 403  # the impersonated account may not
