"""Two controller replicas on one Lease: only the leader acts; the other takes over when it goes."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from edgeagent.cloud.controller import Controller
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import controller_settings, edgenode_for, wait_edgenode

pytestmark = pytest.mark.integration


def _judged(en) -> bool:
    return any(c["type"] == "EKTrusted" for c in en.status.get("conditions", []))


def _wait_logged(replica: Controller, node: str) -> None:
    """Until ``replica`` has logged an action on ``node``; a timeout is not a failure here: the assertions
    that follow say what was logged instead."""
    with contextlib.suppress(TimeoutError):
        procs.wait_for(lambda: any(x[2] == node for x in replica.actions), timeout=10, what=f"{node} logged")


def test_only_the_leader_acts(kube_cluster: KubeCluster, keylime: Keylime, start_device) -> None:
    admin = kube_cluster.client()
    lease = f"edgeagent-ha-{uuid.uuid4().hex[:6]}"

    def replica(identity: str) -> Controller:
        # Long terms: b may take over only when a stops renewing for 15 s, so a renewal delayed by a busy
        # machine (the API server writes through etcd's fsync) cannot hand the lease over mid-test. The
        # takeover below is quick anyway: a.stop() releases the lease.
        settings = controller_settings(
            kube_cluster,
            keylime,
            lease_name=lease,
            identity=identity,
            webhook_port=None,
            lease_duration=15.0,
            renew_deadline=10.0,
            retry_period=0.5,
        )
        return Controller(kube_cluster.client(), settings).start()

    a = replica("replica-a")
    procs.wait_for(a.elector.is_leader, timeout=15, what="replica a to lead")
    b = replica("replica-b")
    try:
        first = start_device("edge-ha-1")
        edgenode_for(admin, first, ek_cert_sha256="1" * 64)  # judged (rejected) by whoever acts
        wait_edgenode(admin, first.name, _judged, what="to have its EK judged")
        # The status is written before the action is logged (an Event is created in between, slow after the
        # API server restarts of earlier tests): wait for the log entry rather than read it at once.
        _wait_logged(a, first.name)
        state = f"a: leader={a.elector.is_leader()} actions={a.actions}; b: leader={b.elector.is_leader()} "
        state += f"actions={b.actions}"
        assert [x[1:] for x in a.actions if x[2] == first.name] == [("ek-rejected", first.name)], state
        assert not b.elector.is_leader(), state
        assert not b.actions, state

        a.stop()  # releases the Lease
        procs.wait_for(b.elector.is_leader, timeout=15, what="replica b to take over")
        second = start_device("edge-ha-2")
        edgenode_for(admin, second, ek_cert_sha256="2" * 64)
        wait_edgenode(admin, second.name, _judged, what="to have its EK judged by the new leader")
        _wait_logged(b, second.name)
        assert ("ek-rejected", second.name) in [(x[1], x[2]) for x in b.actions]
        assert all(x[2] != second.name for x in a.actions)
    finally:
        b.stop()
        a.stop()
