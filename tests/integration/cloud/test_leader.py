"""Leader election on a real coordination.k8s.io/v1 Lease: one leader at a time, takeover when it goes."""

from __future__ import annotations

import threading
import uuid

import pytest
from kubernetes import client as k8s

from edgeagent.cloud.leader import LeaseElector
from edgeagent.errors import ConfigError
from tests.fixtures import procs
from tests.fixtures.kube import KubeCluster

pytestmark = pytest.mark.integration


def _pair(cluster: KubeCluster, lease_duration: float = 3.0) -> tuple[LeaseElector, LeaseElector, str]:
    name = f"lease-{uuid.uuid4().hex[:6]}"
    timing = {"lease_duration": lease_duration, "renew_deadline": lease_duration - 1.0, "retry_period": 0.3}
    a = LeaseElector(cluster.client(), name=name, namespace="kube-system", identity="a", **timing)
    b = LeaseElector(cluster.client(), name=name, namespace="kube-system", identity="b", **timing)
    return a, b, name


class _Overlap:
    """Samples both electors on a thread and remembers whether both ever claimed leadership at once."""

    def __init__(self, a: LeaseElector, b: LeaseElector) -> None:
        self.a, self.b, self.both, self.stop = a, b, False, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            if self.a.is_leader() and self.b.is_leader():
                self.both = True

    def close(self) -> bool:
        self.stop.set()
        self.thread.join()
        return self.both


def test_exactly_one_leader_and_takeover_after_expiry(kube_cluster: KubeCluster) -> None:
    # an 8 s lease: b watches a renew for 4 s below, and a renewal late by a lease duration on a busy
    # machine would rightly hand b the lease
    a, b, name = _pair(kube_cluster, lease_duration=8.0)
    a.start()
    procs.wait_for(a.is_leader, timeout=10, what="a to lead")
    b.start()
    overlap = _Overlap(a, b)
    try:
        # b keeps trying while a renews: it must not lead (several lease durations' worth of tries)
        assert not ever_true(b.is_leader, seconds=4.0)
        lease = k8s.CoordinationV1Api(kube_cluster.client()).read_namespaced_lease(name, "kube-system")
        assert lease.spec.holder_identity == "a"
        # a "crashes" (stops renewing, keeps the lease): b takes over only after it expired
        a.stop(release=False)
        procs.wait_for(b.is_leader, timeout=30, what="b to take over the expired lease")
        lease = k8s.CoordinationV1Api(kube_cluster.client()).read_namespaced_lease(name, "kube-system")
        assert lease.spec.holder_identity == "b"
        assert lease.spec.lease_transitions == 1
    finally:
        b.stop()
        a.stop()
    assert not overlap.close(), "both replicas believed they were leader at the same time"


def test_release_hands_over_quickly(kube_cluster: KubeCluster) -> None:
    a, b, _ = _pair(kube_cluster)
    a.start()
    procs.wait_for(a.is_leader, timeout=10, what="a to lead")
    b.start()
    overlap = _Overlap(a, b)
    try:
        a.stop(release=True)
        procs.wait_for(b.is_leader, timeout=5, what="b to take the released lease")
    finally:
        b.stop()
    assert not overlap.close()


def test_leader_that_cannot_renew_stops_acting(kube_cluster: KubeCluster) -> None:
    """With the API server gone, the leader's own clock ends its term after renew_deadline."""
    a, _, _ = _pair(kube_cluster)
    a.start()
    procs.wait_for(a.is_leader, timeout=10, what="a to lead")
    kube_cluster.stop_apiserver()
    try:
        procs.wait_for(lambda: not a.is_leader(), timeout=10, what="a to step down")
    finally:
        kube_cluster.start_apiserver()
    procs.wait_for(a.is_leader, timeout=15, what="a to lead again once the API server is back")
    a.stop()


def test_inconsistent_timing_is_refused(kube_cluster: KubeCluster) -> None:
    with pytest.raises(ConfigError):
        LeaseElector(
            kube_cluster.client(),
            name="x",
            namespace="kube-system",
            identity="x",
            lease_duration=2,
            renew_deadline=3,
            retry_period=1,
        )


def ever_true(predicate, *, seconds: float) -> bool:
    """True if ``predicate`` became true at any point within ``seconds`` (sampled every 50 ms)."""
    stop = threading.Event()
    deadline = seconds / 0.05
    for _ in range(int(deadline)):
        if predicate():
            return True
        stop.wait(0.05)
    return False
