"""Races between the enrollment's main thread and the agent API's request threads (fakes for TPM and cluster).

A revocation arriving while the certificate is awaited must win (nothing stored, nothing recorded), `serve`
must never spin whatever state it finds, and concurrent saves of a private file never tear it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeagent import certs
from edgeagent.attest import enroll, kubecsr, nodekey, payload
from edgeagent.attest.secrets import write_private
from edgeagent.config import load_config
from edgeagent.errors import ClusterError
from edgeagent.protocol import keylime as protocol

UUID = "agent-1"
NODE = "edge-1"


def _cert(*, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> bytes:
    cert = certs.build(NODE, signer=ec.generate_private_key(ec.SECP256R1()), lifetime=lifetime)
    return cert.public_bytes(serialization.Encoding.PEM)


def _material() -> bytes:
    doc = {"apiServer": "https://10.0.0.1:6443", "caCert": _cert().decode(),
           "bootstrapToken": "abcdef.0123456789abcdef", "nodeName": NODE}
    return json.dumps(doc).encode()


class FakeCluster:
    """Stands in for the API server: CSR creation and signing; ``during_wait`` runs while a CSR is awaited."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.during_wait: Callable[[], None] | None = None
        self.submitted: list[str] = []
        monkeypatch.setattr(kubecsr, "submit", self.submit)
        monkeypatch.setattr(kubecsr, "wait_certificate", self.wait_certificate)
        monkeypatch.setattr(nodekey, "tpm_binding", lambda *a, **kw: {"binding": "fake"})

    def submit(self, cluster: kubecsr.Cluster, body: dict[str, Any]) -> str:
        self.submitted.append(body["metadata"]["name"])
        return str(body["metadata"]["name"])

    def wait_certificate(self, cluster: kubecsr.Cluster, name: str, **kw: Any) -> bytes:
        if self.during_wait is not None:
            hook, self.during_wait = self.during_wait, None
            hook()
        return _cert()


def _enrollment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> enroll.Enrollment:
    """An enrollment whose provision / measure / register steps are fakes; the payload is already stored."""
    cfg = load_config(None, env={}, overrides={"state_dir": str(tmp_path / "state")})
    cfg.enroll.kubeconfig = tmp_path / "kubelet" / "kubeconfig"
    cfg.enroll.payload_dir = tmp_path / "run"
    run = enroll.Enrollment(cfg)
    ident = types.SimpleNamespace(ak_name=b"\x01" * 34)

    def provision() -> Any:
        run.tpm = types.SimpleNamespace(close=lambda: None)  # type: ignore[assignment]  # the fakes never quote
        run.state.uuid, run.state.node_name, run.state.ak_name = UUID, NODE, ident.ak_name.hex()
        return ident

    monkeypatch.setattr(run, "_provision", provision)
    monkeypatch.setattr(run, "_measure", lambda: None)

    def register(_ident: Any) -> None:
        run._payload_dir = payload.payload_dir(cfg.enroll.payload_dir, cfg.state_dir)

    monkeypatch.setattr(run, "_register", register)
    payload.store(payload.payload_dir(cfg.enroll.payload_dir, cfg.state_dir), _material())
    return run


def _revoke_from_a_request_thread(run: enroll.Enrollment) -> None:
    """What the agent API does when the verifier's signed notification for this agent arrives."""
    t = threading.Thread(target=run._on_revocation,
                         args=(protocol.Revocation({"type": "revocation", "agent_id": UUID}),))
    t.start()
    t.join()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    return FakeCluster(monkeypatch)


class Counting:
    """Counts `read_private` calls on one path (each serve-loop iteration reads the certificate once)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.count = path, 0
        real = enroll.read_private

        def counted(p: Path) -> bytes | None:
            if p == self.path:
                self.count += 1
            return real(p)

        monkeypatch.setattr(enroll, "read_private", counted)


@pytest.fixture
def serving() -> Iterator[Callable[[enroll.Enrollment], threading.Thread]]:
    started: list[tuple[enroll.Enrollment, threading.Thread]] = []

    def start(run: enroll.Enrollment) -> threading.Thread:
        t = threading.Thread(target=run.serve, daemon=True)
        t.start()
        started.append((run, t))
        return t

    yield start
    for run, t in started:
        run.stop()
        t.join(timeout=10)
        assert not t.is_alive()


def _window(seconds: float = 0.5) -> None:
    """A short observation window: the bound asserted afterwards is a count, not a duration."""
    threading.Event().wait(seconds)


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.02)


# ---------------------------------------------------------------- defect 2: revocation during the wait
def test_a_revocation_during_the_certificate_wait_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cluster: FakeCluster) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    cluster.during_wait = lambda: _revoke_from_a_request_thread(run)
    events: list[enroll.StepEvent] = []
    run.on_event = events.append
    result = run.enroll_steps()
    assert run.revoked.is_set()
    assert not run.cert_path.exists(), "the certificate obtained before the revocation was stored"
    assert not run.config.enroll.kubeconfig.exists(), "the kubeconfig was written after the revocation"
    saved = enroll.EnrollState.load(run.state_path)
    assert not {"csr", "certificate", "kubeconfig"} & saved.steps.keys() and saved.csr_name is None
    assert result.kubeconfig is None
    assert [e.status for e in events if e.step == "certificate"][-1] == "revoked"


def test_once_fails_in_one_line_when_revoked_during_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             cluster: FakeCluster) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    cluster.during_wait = lambda: _revoke_from_a_request_thread(run)
    with pytest.raises(enroll.AttestationError, match="revoked during enrollment"):
        run.run(once=True)


def test_serve_enrolls_again_with_the_next_payload_after_the_revocation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster,
        serving: Callable[[enroll.Enrollment], threading.Thread]) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    cluster.during_wait = lambda: _revoke_from_a_request_thread(run)
    run.enroll_steps()
    reads = Counting(run.cert_path, monkeypatch)
    serving(run)
    _window()
    assert reads.count <= 10, f"serve read the certificate {reads.count} times while waiting for a payload"
    assert not run.cert_path.exists()
    # the controller sends a new payload once attestation is good again
    run._on_delivery(payload.Delivery(key=b"k", payload=_material()))
    _wait_for("the new credential", lambda: run.config.enroll.kubeconfig.exists())
    assert run.cert_path.exists() and not run.revoked.is_set()
    assert len(cluster.submitted) == 2  # a new CSR: the first bootstrap token is spent


def test_serve_does_not_spin_on_a_revoked_credential_that_is_still_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster,
        serving: Callable[[enroll.Enrollment], threading.Thread]) -> None:
    """The state the old code left behind: certificate stored after the revocation, renewal due."""
    run = _enrollment(tmp_path, monkeypatch)
    run.enroll_steps()
    run.config.enroll.renew_fraction = 0.0  # renewal due at once
    run.revoked.set()
    renewals: list[int] = []
    monkeypatch.setattr(run, "renew", lambda: renewals.append(1))
    reads = Counting(run.cert_path, monkeypatch)
    serving(run)
    _window()
    assert reads.count <= 10, f"serve read the certificate {reads.count} times in a short window"
    assert renewals == []  # a revoked agent does not ask for a new certificate


def test_failing_renewals_are_spaced_even_with_a_zero_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster,
        serving: Callable[[enroll.Enrollment], threading.Thread]) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    run.enroll_steps()
    run.config.enroll.renew_fraction = 0.0
    run.config.enroll.renew_retry = 0.0
    attempts: list[int] = []

    def refused() -> Path:
        attempts.append(1)
        raise ClusterError("refused")

    monkeypatch.setattr(run, "renew", refused)
    reads = Counting(run.cert_path, monkeypatch)
    serving(run)
    _wait_for("a first renewal attempt", lambda: bool(attempts))
    _window()
    assert len(attempts) <= 5 and reads.count <= 10, (len(attempts), reads.count)


def test_a_renewal_revoked_while_pending_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       cluster: FakeCluster) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    run.enroll_steps()
    run.ident = types.SimpleNamespace(ak_name=b"\x01" * 34)  # type: ignore[assignment]
    cluster.during_wait = lambda: _revoke_from_a_request_thread(run)
    with pytest.raises(enroll.CredentialRevoked):
        run.renew()
    assert not run.cert_path.exists() and not run.config.enroll.kubeconfig.exists()


# ---------------------------------------------------------------- defect 3: concurrent saves
def test_concurrent_writers_never_tear_or_lose_the_file(tmp_path: Path) -> None:
    path = tmp_path / "enroll.json"
    contents = [bytes([i]) * (64 * 1024 + i) for i in range(6)]
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def writer(data: bytes) -> None:
        try:
            for _ in range(30):
                write_private(path, data)
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(path.read_bytes())

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(c,)) for c in contents]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert seen <= set(contents), "a reader saw a torn or mixed file"
    assert path.read_bytes() in contents and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["enroll.json"]  # no temporary file left behind


def test_state_saves_from_the_main_and_a_request_thread_do_not_interleave(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster) -> None:
    run = _enrollment(tmp_path, monkeypatch)
    run.enroll_steps()
    errors: list[BaseException] = []

    def main_thread() -> None:
        try:
            for i in range(200):
                run._finish(f"step-{i}", 0.1, "x")
        except BaseException as e:
            errors.append(e)

    def request_thread() -> None:
        try:
            for _ in range(100):
                run._save()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=main_thread), threading.Thread(target=request_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "step-199" in enroll.EnrollState.load(run.state_path).steps


# ---------------------------------------------------------------- a denied CSR is not awaited forever
def test_a_denied_csr_is_forgotten_so_the_next_attempt_makes_a_new_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster) -> None:
    """Seen at fleet scale: a CSR judged a moment before the node's restore was denied, and every later
    attempt skipped CSR creation ("already created") and failed on the same denied CSR, for good."""
    from edgeagent.errors import CsrRefused

    denied = {"first": True}

    def wait_certificate(c: kubecsr.Cluster, name: str, **kw: Any) -> bytes:
        if denied.pop("first", False):
            raise CsrRefused(f"CSR {name} was denied: NotAttested")
        return _cert()

    monkeypatch.setattr(kubecsr, "wait_certificate", wait_certificate)
    run = _enrollment(tmp_path, monkeypatch)
    with pytest.raises(CsrRefused):
        run.enroll_steps()
    saved = enroll.EnrollState.load(run.state_path)
    assert saved.csr_name is None and "csr" not in saved.steps
    first = list(cluster.submitted)
    monkeypatch.setattr(nodekey, "csr_name", lambda node: f"edgeagent-{node}-second")
    run.enroll_steps()
    assert cluster.submitted == [*first, f"edgeagent-{NODE}-second"]  # a new CSR, not the denied one
    assert run.config.enroll.kubeconfig.exists()


# ---------------------------------------------------------------- killed while the CSR is being created
def test_a_kill_during_the_csr_create_request_retries_the_same_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster) -> None:
    """The create reached the API server but the process died before its answer (SIGKILL, power cut): the
    next start must create the same name again (AlreadyExists is taken as ours), not a second CSR."""

    class Killed(BaseException):
        pass

    def submit_then_die(c: kubecsr.Cluster, body: dict[str, Any]) -> str:
        cluster.submitted.append(body["metadata"]["name"])  # the server has it ...
        raise Killed  # ... and the process is gone before the answer

    monkeypatch.setattr(kubecsr, "submit", submit_then_die)
    run = _enrollment(tmp_path, monkeypatch)
    with pytest.raises(Killed):
        run.enroll_steps()
    first = list(cluster.submitted)
    assert len(first) == 1
    assert enroll.EnrollState.load(run.state_path).csr_creating == first[0]

    monkeypatch.setattr(kubecsr, "submit", cluster.submit)
    monkeypatch.setattr(nodekey, "csr_name", lambda node: f"edgeagent-{node}-later")  # the clock moved on
    again = _enrollment(tmp_path, monkeypatch)  # the next start: same state directory, same payload
    again.enroll_steps()
    assert cluster.submitted == [first[0], first[0]]  # the same CSR, created again (409 = ours)
    saved = enroll.EnrollState.load(again.state_path)
    assert saved.csr_name == first[0] and saved.csr_creating is None
    assert run.config.enroll.kubeconfig.exists()
