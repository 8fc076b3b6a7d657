"""Scaling past one verifier: two stock Keylime verifiers (one registrar and CA, a database each) behind one
controller. New devices are spread over both, each is attested by its own verifier, and a tampered device
on the second verifier is revoked while the others stay attested."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeagent.cloud import crd
from edgeagent.cloud.controller import Controller
from edgeagent.cloud.keylime import KeylimeClient, KeylimeTls
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import (
    controller_settings,
    edgenode_for,
    least_privilege_client,
    wait_edgenode,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def second_verifier(keylime: Keylime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keylime]:
    other = keylime.another_verifier(tmp_path_factory.mktemp("verifier-2"))
    try:
        other.start_verifier()
        yield other
    finally:
        other.stop()


def _polled_by(keylime: Keylime, url: str) -> set[str]:
    """The agents one verifier polls (asked directly, not through the controller)."""
    client = KeylimeClient(registrar_url=keylime.registrar_tls_url, verifier_url=url,
                           tls=KeylimeTls.from_dir(keylime.cv_ca))
    return set(client.agent_states())


def test_two_verifiers_share_the_fleet_and_each_revokes(
    keylime: Keylime, second_verifier: Keylime, kube_cluster: KubeCluster, start_device
) -> None:
    api = least_privilege_client(kube_cluster)
    admin = kube_cluster.client()
    settings = controller_settings(kube_cluster, keylime, install_crd=False,
                                   lease_namespace="edgeagent-system",
                                   more_verifiers=(second_verifier.verifier_url,), poll_interval=1.0)
    controller = Controller(api, settings).start()
    devices = []
    try:
        procs.wait_for(controller.elector.is_leader, timeout=15, what="the controller to lead")
        devices = [start_device(f"edge-split-{i}") for i in range(4)]
        for d in devices:
            edgenode_for(admin, d)
        for d in devices:
            wait_edgenode(admin, d.name, lambda en: en.phase == "Attested", timeout=90,
                          what="to be attested")
        first = _polled_by(keylime, keylime.verifier_url)
        second = _polled_by(keylime, second_verifier.verifier_url)
        uuids = {d.uuid for d in devices}
        assert first & uuids and second & uuids, f"not spread: first {first}, second {second}"
        assert not first & second and uuids <= first | second

        victim = next(d for d in devices if d.uuid in second)
        victim.agent.tpm.pcr_extend(23, {"sha256": b"\x42" * 32})  # a measured file changed
        wait_edgenode(admin, victim.name, lambda en: en.phase == "Unattested", timeout=30,
                      what="to be revoked by the second verifier's verdict")
        for d in devices:
            if d is not victim:
                assert crd.EdgeNodes(admin).get(d.name).phase == "Attested"  # type: ignore[union-attr]
    finally:
        controller.stop()
        for d in devices:
            crd.EdgeNodes(admin).delete(d.name)
