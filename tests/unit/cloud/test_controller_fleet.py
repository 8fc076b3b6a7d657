"""What `edgeagent bench fleet` made the attestation controller do: one bulk verifier request per poll
whatever the fleet's size, attested nodes reconciled only when their state changes (or their status is
due), a verifier view never older than what a node last acted on, and nothing kept of a deleted node.

The controller is built on an API client that is never called here and a fake Keylime client that counts
its requests; the same paths run against the real verifier in tests/integration/cloud."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from edgeagent.cloud.controller import Controller, Settings
from edgeagent.cloud.keylime import OperationalState, VerifierAgent
from edgeagent.testbed import kube_pki

GOOD, FAILED = OperationalState.GET_QUOTE, OperationalState.FAILED


def _state(uuid: str, op: int = GOOD, count: int = 5) -> VerifierAgent:
    return VerifierAgent(uuid=uuid, operational_state=op, attestation_count=count, last_event_id=None,
                         last_successful_attestation=int(time.time()), raw={"ip": "127.0.0.1", "port": 1})


class FakeKeylime:
    """The verifier's bulk and per-agent views, with a count of each request."""

    def __init__(self, states: dict[str, VerifierAgent]) -> None:
        self.states = states
        self.bulk_calls = 0
        self.single_calls: list[str] = []

    def agent_states(self) -> dict[str, VerifierAgent]:
        self.bulk_calls += 1
        return dict(self.states)

    def agent_state(self, uuid: str) -> VerifierAgent | None:
        self.single_calls.append(uuid)
        return self.states.get(uuid)

    def registrar_agent(self, uuid: str) -> None:
        return None

    def delete_agent(self, uuid: str) -> None:
        self.states.pop(uuid, None)


@pytest.fixture
def make(tmp_path: Path):
    def make(n: int) -> tuple[Controller, FakeKeylime]:
        kube_pki.make_ca("fleet-test-ek-ca").write(tmp_path / "ek-ca.pem", tmp_path / "ek-ca.key")
        keylime = FakeKeylime({f"dev-{i}-agent": _state(f"dev-{i}-agent") for i in range(n)})
        settings = Settings(registrar_url="https://r", verifier_url="https://v",
                            keylime_ca_dir=tmp_path,
                            ek_ca_store=tmp_path / "ek-ca.pem", api_server_url="https://a",
                            api_server_ca_pem="",
                            webhook_port=None, status_interval=3600.0)
        controller = Controller(k8s.ApiClient(), settings, keylime_client=keylime,  # type: ignore[arg-type]
                                tls=object())  # type: ignore[arg-type]
        for i in range(n):  # as after a reconcile of each attested node
            mem = controller.memory[f"node/dev-{i}"]
            mem.uuid, mem.attested, mem.last_status_write = f"dev-{i}-agent", True, time.monotonic()
        return controller, keylime

    return make


def _drain(controller: Controller) -> set[str]:
    keys = set()
    while (key := controller.queue.get(timeout=0.01)) is not None:
        keys.add(key)
    return keys


@pytest.mark.parametrize("n", [1, 50, 500])
def test_one_request_per_poll_whatever_the_fleet_size(make, n: int) -> None:
    controller, keylime = make(n)
    controller.poll_verifier_once()
    _drain(controller)
    assert controller.poll_verifier_once() == []  # nothing changed: nothing to reconcile
    assert keylime.bulk_calls == 2
    assert keylime.single_calls == []


def test_only_the_node_whose_state_changed_is_queued(make) -> None:
    controller, keylime = make(20)
    controller.poll_verifier_once()
    _drain(controller)
    keylime.states["dev-7-agent"] = _state("dev-7-agent", FAILED)
    del keylime.states["dev-3-agent"]  # the verifier lost it
    assert sorted(controller.poll_verifier_once()) == ["node/dev-3", "node/dev-7"]
    assert _drain(controller) == {"node/dev-3", "node/dev-7"}


def test_a_due_status_write_queues_the_node(make) -> None:
    controller, _ = make(3)
    controller.poll_verifier_once()
    _drain(controller)
    controller.memory["node/dev-1"].last_status_write = time.monotonic() - 7200
    assert controller.poll_verifier_once() == ["node/dev-1"]


def test_unattested_and_enrolling_nodes_are_not_the_pollers(make) -> None:
    controller, keylime = make(2)
    controller.memory["node/dev-0"].attested = False
    controller.poll_verifier_once()
    keylime.states["dev-0-agent"] = _state("dev-0-agent", FAILED)
    assert controller.poll_verifier_once() == []  # its own reconciles (asking the verifier now) look after it


def test_the_view_never_goes_back_in_time(make) -> None:
    controller, keylime = make(1)
    controller.poll_verifier_once()
    mem = controller.memory["node/dev-0"]
    assert controller._verifier_state("dev-0-agent", mem) == keylime.states["dev-0-agent"]
    assert keylime.single_calls == []  # the snapshot served it
    # a fresher answer was acted on since the snapshot's request: the snapshot is not used again
    mem.state_seen_at = time.monotonic() + 1
    controller._verifier_state("dev-0-agent", mem)
    assert keylime.single_calls == ["dev-0-agent"]
    # and asked-now reads always ask
    controller._verifier_state("dev-0-agent", mem, fresh=True)
    assert keylime.single_calls == ["dev-0-agent", "dev-0-agent"]


class _Gone:
    def get(self, name: str) -> None:
        return None


class _NoAccess:
    def withdraw(self, name: str) -> None:
        pass


def test_nothing_is_kept_of_a_deleted_node(make) -> None:
    controller, keylime = make(3)
    controller.edgenodes = _Gone()  # type: ignore[assignment]
    controller.access = _NoAccess()  # type: ignore[assignment]
    assert controller.reconcile_node("dev-1") is None
    assert "node/dev-1" not in controller.memory
    assert "dev-1-agent" not in keylime.states  # the verifier stops polling it too


def test_histories_are_bounded(make) -> None:
    controller, _ = make(0)
    for i in range(5000):
        controller._record("attested", f"dev-{i}")
    assert len(controller.actions) <= 1000
    assert controller.actions[-1][2] == "dev-4999"


def test_a_failed_key_backs_off_and_its_count_is_dropped_on_success(make, monkeypatch: Any) -> None:
    controller, _ = make(0)
    outcomes = iter([RuntimeError("API down"), RuntimeError("API down"), None])

    def reconcile_csr(name: str) -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(controller, "reconcile_csr", reconcile_csr)
    monkeypatch.setattr(controller.elector, "is_leader", lambda: True)
    delays = []
    monkeypatch.setattr(controller.queue, "add", lambda key, delay=0.0: delays.append((key, delay)))
    keys = iter(["csr/x", "csr/x", "csr/x", None])
    monkeypatch.setattr(controller.queue, "get", lambda *a, **k: next(keys))
    controller._worker()
    assert delays == [("csr/x", 0.5), ("csr/x", 1.0)]
    assert controller.failures == {}  # the success dropped it: no per-key state left behind
