"""Push mode end to end, with the device behind a real NAT.

The device (`edgeagent enroll --mode push`, a process in its own network namespace, with its own swtpm there)
sits behind a masquerading router namespace that drops every connection from outside that it did not see
leave (`edgeagent.testbed.nat`). The cluster side is the stock Keylime 7.14.3 verifier started with
`mode = push` and its registrar, the real kube-apiserver + kube-controller-manager, and the attestation
controller with its join endpoint; the device reaches them only through the NAT.

Asserted: a connection from the cluster side into the device fails (a listener in the device namespace is
not reachable) while the device registers, proves possession of its AK, pushes its quotes, opens the join
material sealed to its TPM and gets its node credential; the enroll process itself listens on nothing;
every connection the cluster side saw came from the router's masqueraded address. Then a measured file
changes and the agent restarts: its next push fails Keylime's policy, the controller revokes (EdgeNode
Unattested, the node's RBAC grant withdrawn), and the device, told on its next push through a revocation
signed with the controller's answer key, deletes its credential. Put right (the file restored, a reboot), it
passes again, access comes back, and new sealed join material gets it a new credential.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.attest import push as push_client
from edgeagent.attest.registrar import RegistrarClient
from edgeagent.cloud import crd
from edgeagent.cloud import keylime as ck
from edgeagent.cloud.controller import Controller
from edgeagent.protocol import keylime as keylime_protocol
from edgeagent.protocol import push
from edgeagent.testbed import keylime_config
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.testbed.keylime import Keylime
from edgeagent.testbed.nat import DEVICE_IP, ROUTER_OUTER_IP, Nat, Relay, in_netns
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm
from tests.fixtures import procs
from tests.fixtures.kube import KubeCluster
from tests.integration.cloud.conftest import least_privilege_client, wait_edgenode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
@pytest.fixture(scope="module")
def nat() -> Iterator[Nat]:
    with Nat("push") as n:
        yield n


@dataclass
class PushDevice:
    name: str
    agent_uuid: str
    root: Path
    config: Path
    tpm: SoftwareTpm
    measured: Path
    kubeconfig: Path
    relays: list[tuple[Relay, Relay]]
    nat: Nat
    keylime: Keylime | None = None
    controller: Controller | None = None
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / "enroll.log"

    def cli(self, *args: str) -> list[str]:
        # -v: the push loop's sessions, refusals and join answers are in the log a failure shows
        return [*self.nat.exec_prefix(), sys.executable, "-m", "edgeagent.cli.main", "-v", "--config",
                str(self.config), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli(*args), capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    def start(self) -> None:
        self.proc = procs.start(self.cli("enroll", "--json"), log=self.log,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def wait(self, condition: Any, *, timeout: float, what: str) -> None:
        """procs.wait_for, failing with what each side saw instead of a bare timeout."""
        try:
            procs.wait_for(condition, timeout=timeout, what=what)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """The device's log tail, the controller's actions and errors for this node, and the verifier's
        warnings about this agent (a failed policy check names the PCR and both values: a PCR 23 that
        differs from the pinned one at the first push means the measured tree, the edgeagent package of
        this checkout included, changed between `measure` and `enroll`)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        records = [ln for ln in text.splitlines() if ln[:2].isdigit()]  # log lines, not the --json events
        parts = ["--- device log records ---", *records[-40:], "--- device log tail ---", text[-1500:]]
        if self.controller is not None:
            actions = [f"{t:.3f} {a}" for t, a, n in list(self.controller.actions) if n == self.name]
            errors = [e for e in list(self.controller.errors) if self.name in e]
            parts += ["--- controller actions ---", *actions, "--- controller errors ---", *errors[-10:]]
        if self.keylime is not None:
            log = self.keylime.logs / "verifier.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            mine = [ln for ln in lines
                    if self.agent_uuid in ln and ("- ERROR -" in ln or "- WARNING -" in ln)]
            parts += ["--- verifier warnings about this agent ---", *mine[-15:]]
        return "\n".join(parts)

    def pcr23(self) -> str:
        def read() -> str:
            with Tpm.open(self.tpm.tcti) as tpm:
                return tpm.pcr_read([23])[23].hex()
        return in_netns(self.nat.device_ns, read)


def _push_device(nat: Nat, keylime: Keylime, kube_cluster: KubeCluster, controller: Controller,
                 swtpm_template: SoftwareTpm, root: Path) -> PushDevice:
    name = f"edge-push-{uuid.uuid4().hex[:6]}"
    tpm = in_netns(nat.device_ns, lambda: swtpm_template.clone(root / "swtpm").start())
    join_port = controller.s.join_port
    assert join_port is not None
    relays = [nat.relay(port) for port in (keylime.registrar_port, keylime.verifier_port, join_port,
                                           kube_cluster.api_port)]
    measured = root / "app.conf"
    measured.write_text("mode = production\n")
    (root / "policies").mkdir()
    kubeconfig = root / "kubelet" / "kubeconfig"
    config = root / "agent.toml"
    config.write_text(f"""
state_dir = "{root / 'state'}"
tpm_tcti = "{tpm.tcti}"
policies_dir = "{root / 'policies'}"

[measure]
extra_paths = ["{measured}"]
firmware_log = "{root / 'no-firmware-log'}"

[enroll]
mode = "push"
registrar_url = "http://127.0.0.1:{keylime.registrar_port}"
verifier_url = "https://127.0.0.1:{keylime.verifier_port}"
join_url = "https://127.0.0.1:{join_port}"
node_name = "{name}"
uuid = "{name}-agent"
keylime_ca = "{keylime.ca_cert}"
payload_dir = "{root / 'run'}"
kubeconfig = "{kubeconfig}"
retry_timeout = 60
payload_timeout = 120
certificate_timeout = 60
push_backoff_max = 4
""")
    return PushDevice(name, f"{name}-agent", root, config, tpm, measured, kubeconfig, relays, nat, keylime,
                      controller)


@pytest.fixture
def push_device(nat: Nat, push_keylime: Keylime, kube_cluster: KubeCluster, push_controller: Controller,
                swtpm_template: SoftwareTpm, tmp_path: Path) -> Iterator[PushDevice]:
    device = _push_device(nat, push_keylime, kube_cluster, push_controller, swtpm_template, tmp_path)
    try:
        yield device
    finally:
        device.stop()
        for host, dev in device.relays:
            host.stop()
            dev.stop()
        device.tpm.stop()
        push_keylime.tenant("-c", "delete", "-u", device.agent_uuid)
        push_keylime.tenant("-c", "regdelete", "-u", device.agent_uuid)


def _allowed(kubeconfig_user: dict[str, Any], kube_cluster: KubeCluster) -> bool:
    """Whether the node's credential may still list ConfigMaps (its RBAC grant)."""
    cfg = k8s.Configuration()
    cfg.host = kube_cluster.api_url
    cfg.ssl_ca_cert = str(kube_cluster.ca_cert)
    cfg.cert_file, cfg.key_file = kubeconfig_user["cert"], kubeconfig_user["key"]
    try:
        k8s.CoreV1Api(k8s.ApiClient(cfg)).list_namespaced_config_map("default")
    except ApiException as e:
        if e.status in (401, 403):
            return False
        raise
    return True


def _listeners(nat: Nat) -> str:
    return subprocess.run([*nat.exec_prefix(), "ss", "-ltnpH"], capture_output=True, text=True,
                          timeout=30).stdout


def test_device_behind_nat_enrolls_attests_and_is_revoked(
    nat: Nat, push_keylime: Keylime, kube_cluster: KubeCluster, push_controller: Controller,
    push_device: PushDevice, tmp_path: Path,
) -> None:
    api = kube_cluster.client()
    dev = push_device
    # The operator pins the device: its EK certificate and the PCR 23 value `edgeagent measure` reports.
    measured = dev.run("measure")
    assert measured.returncode == 0, measured.stderr

    def ek_cert() -> bytes | None:
        with Tpm.open(dev.tpm.tcti) as tpm:
            return tpm_identity.load_ek(tpm).cert

    cert_der = in_netns(nat.device_ns, ek_cert)
    assert cert_der is not None
    pcr23 = dev.pcr23()
    pin_device(api, dev.name, ek_cert=cert_der, agent_uuid=dev.agent_uuid, agent_address="",
               mode="push", tpm_policy={"23": [pcr23]})

    # Not attested yet: the join endpoint hands out nothing.
    code, body = push_controller.join_answer(dev.agent_uuid)
    assert code == 404 and body["state"] in ("pending", "unknown")

    # The cluster side cannot open a connection to the device (a listener there is unreachable).
    canary = in_netns(nat.device_ns, lambda: socket.create_server(("0.0.0.0", 0)))
    try:
        with pytest.raises(OSError):
            socket.create_connection((DEVICE_IP, canary.getsockname()[1]), timeout=1.5).close()
    finally:
        canary.close()

    dev.start()
    dev.wait(lambda: dev.kubeconfig.exists() or (dev.proc is not None and dev.proc.poll() is not None),
             timeout=120, what="the device to write its kubelet kubeconfig")
    assert dev.kubeconfig.exists(), dev.diagnostics()
    en = wait_edgenode(api, dev.name, lambda e: e.phase == "Enrolled", timeout=30, what="Enrolled")
    assert en.status.get("attested") is True

    state_dir = dev.root / "state"
    cert_path = state_dir / "node" / "node.crt"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN=system:node:{dev.name},O=system:nodes"
    user = {"cert": str(cert_path), "key": str(state_dir / "node" / "node.key")}
    # a copy of the credential, to show the cluster refuses it after the revocation
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "node.crt").write_bytes(cert_path.read_bytes())
    (copy / "node.key").write_bytes((state_dir / "node" / "node.key").read_bytes())
    copied = {"cert": str(copy / "node.crt"), "key": str(copy / "node.key")}
    assert _allowed(user, kube_cluster) and _allowed(copied, kube_cluster)

    # the enroll process listens on nothing; every connection reached the cluster through the NAT
    assert dev.proc is not None
    assert f"pid={dev.proc.pid}," not in _listeners(nat)
    for host, _ in dev.relays:
        assert set(host.peers) <= {ROUTER_OUTER_IP}
    assert any(host.peers for host, _ in dev.relays)
    status = push_keylime.get(f"{push_keylime.verifier_url}/v2.2/agents/{dev.agent_uuid}")["results"]
    assert status["attestation_status"] == "PASS" and status["ip"] is None and status["port"] is None

    # Tamper: a measured file changes and the agent restarts; it measures the change into PCR 23.
    dev.stop()
    dev.measured.write_text("mode = debug\n")
    dev.start()
    dev.wait(lambda: (crd.EdgeNodes(api).get(dev.name) or en).phase == "Unattested", timeout=60,
             what="Unattested after the tampered push")
    # The grant is deleted before the phase is written, but the API server's RBAC authorizer learns of it
    # through its own watch a moment later: wait for the denial rather than assume it is instant.
    dev.wait(lambda: not _allowed(copied, kube_cluster), timeout=10, what="the copied credential refused")
    node = k8s.CoreV1Api(api).read_node(dev.name)
    assert node.spec.unschedulable is True
    assert any(t.key == "edgeagent.io/unattested" and t.effect == "NoExecute" for t in node.spec.taints or [])
    # The device learns it on its next push and drops its credential.
    # The device deletes the files, saves its state, then logs the revocation: wait for all of it (asserting
    # the log line as soon as the files were gone raced that save; seen once in ten runs).
    dev.wait(lambda: not cert_path.exists() and not dev.kubeconfig.exists()
             and "verifier revoked this agent" in dev.log.read_text(), timeout=60,
             what="the device to drop its credential and say why")
    code, body = push_controller.join_answer(dev.agent_uuid)
    assert code == 403 and body["state"] == "revoked"
    assert json.loads(body["revocation"]["msg"])["agent_id"] == dev.agent_uuid
    assert hashlib.sha256(cert_der).hexdigest() == en.spec.ek_cert_sha256

    # Put right: the file as it was and a reboot (PCR 23 reset, the agent measures a fresh segment). The
    # verifier passes it again, the controller restores access and seals new join material, and the device
    # gets a new credential, all still through the NAT.
    dev.stop()
    dev.measured.write_text("mode = production\n")

    def reboot() -> None:
        with Tpm.open(dev.tpm.tcti) as tpm:
            tpm.pcr_reset(23)

    in_netns(nat.device_ns, reboot)
    dev.start()
    dev.wait(lambda: dev.kubeconfig.exists(), timeout=60, what="a new credential after the restore")
    wait_edgenode(api, dev.name, lambda e: e.phase in ("Attested", "Enrolled") and e.status.get("attested"),
                  timeout=30, what="attested again")
    assert dev.pcr23() == pcr23
    assert _allowed(user, kube_cluster)
    node = k8s.CoreV1Api(api).read_node(dev.name)
    assert not node.spec.unschedulable
    assert not any(t.key == "edgeagent.io/unattested" for t in node.spec.taints or [])


def _measure_and_pin(dev: PushDevice, api: k8s.ApiClient) -> str:
    """What the operator does: `edgeagent measure` on the device, then an EdgeNode pinning its EK
    certificate and the PCR 23 value; returns that value."""
    measured = dev.run("measure")
    assert measured.returncode == 0, measured.stderr

    def ek_cert() -> bytes | None:
        with Tpm.open(dev.tpm.tcti) as tpm:
            return tpm_identity.load_ek(tpm).cert

    cert_der = in_netns(dev.nat.device_ns, ek_cert)
    assert cert_der is not None
    pcr23 = dev.pcr23()
    pin_device(api, dev.name, ek_cert=cert_der, agent_uuid=dev.agent_uuid, agent_address="",
               mode="push", tpm_policy={"23": [pcr23]})
    return pcr23


def _enrolled(dev: PushDevice, api: k8s.ApiClient) -> None:
    dev.start()
    dev.wait(lambda: dev.kubeconfig.exists(), timeout=120, what="the device to write its kubelet kubeconfig")
    dev.wait(lambda: _phase(api, dev.name) == "Enrolled", timeout=30,
             what="the EdgeNode Enrolled")


def _phase(api: k8s.ApiClient, name: str) -> str | None:
    en = crd.EdgeNodes(api).get(name)
    return en.phase if en is not None else None


def _sessions(dev: PushDevice) -> int:
    """Sessions the device opened (proofs of possession the verifier accepted), from its -v log."""
    return dev.log.read_text(errors="replace").count("push: proved possession of the AK")


@contextlib.contextmanager
def _verifier_settings(keylime: Keylime, *, quote_interval: float, **verifier: str) -> Iterator[None]:
    """The push verifier restarted with other settings (its database, so its agents, stay), and restarted
    with its own again afterwards."""
    original = keylime.settings
    changed = dataclasses.replace(original, quote_interval=quote_interval, extra={
        **original.extra, "verifier": {**original.extra.get("verifier", {}), **verifier}})
    keylime.stop_verifier()
    keylime_config.write(changed, keylime.etc)
    keylime.settings = changed
    try:
        keylime.start_verifier()
        yield
    finally:
        keylime.stop_verifier()
        keylime_config.write(original, keylime.etc)
        keylime.settings = original
        keylime.start_verifier()


def test_session_token_expired_by_time_reauthenticates_without_losing_the_credential(
    push_keylime: Keylime, kube_cluster: KubeCluster, push_controller: Controller, push_device: PushDevice,
) -> None:
    """Keylime's `session_lifetime` (seconds a token lives past its last passed attestation) shorter than
    the attestation interval: the token has expired by every next push. The verifier answers 401
    ("Authentication token expired"), the device opens a new session (TPM2_Certify of its AK over a new
    challenge) and pushes in the same cycle, and nothing on the cluster side or the device changes."""
    api = kube_cluster.client()
    dev = push_device
    _measure_and_pin(dev, api)
    with _verifier_settings(push_keylime, quote_interval=4, session_lifetime="2"):
        _enrolled(dev, api)
        state_dir = dev.root / "state"
        cert_path = state_dir / "node" / "node.crt"
        cert = cert_path.read_bytes()
        first = _sessions(dev)

        def verifier_view() -> dict[str, Any]:
            return push_keylime.get(f"{push_keylime.verifier_url}/v2.2/agents/{dev.agent_uuid}")["results"]

        count = verifier_view()["attestation_count"]
        # two more pushes, each after its token lapsed: two more sessions, two more passed attestations
        dev.wait(lambda: _sessions(dev) >= first + 2, timeout=60, what="two sessions opened after expiry")
        dev.wait(lambda: verifier_view()["attestation_count"] >= count + 2, timeout=30,
                 what="the pushes of those sessions to pass")
        log = dev.log.read_text()
        assert log.count("Authentication token expired") >= 2, dev.diagnostics()
        assert verifier_view()["attestation_status"] == "PASS"
        # the credential is the same, still works, and the cluster side never doubted the device
        assert cert_path.read_bytes() == cert and dev.kubeconfig.exists()
        user = {"cert": str(cert_path), "key": str(state_dir / "node" / "node.key")}
        assert _allowed(user, kube_cluster)
        en = crd.EdgeNodes(api).get(dev.name)
        assert en is not None and en.phase == "Enrolled" and en.status.get("attested") is True
        assert not [a for _, a, n in push_controller.actions if n == dev.name and a == "revoke"]
        assert "revoked this agent" not in log and "push: verifier refuses a fresh session token" not in log


def test_revocation_after_a_controller_restart_still_verifies_on_the_device(
    push_keylime: Keylime, kube_cluster: KubeCluster, push_controller: Controller, push_device: PushDevice,
) -> None:
    """The device got the answer key's certificate from the controller before its restart; the restarted
    controller (nothing in memory) signs its revocation answer with the same key, from its Secret, so the
    device verifies it and drops its credential (an answer it could not verify it would ignore)."""
    api = kube_cluster.client()
    dev = push_device
    _measure_and_pin(dev, api)
    _enrolled(dev, api)
    push_controller.stop()
    restarted = Controller(least_privilege_client(kube_cluster), push_controller.s).start()
    dev.controller = restarted
    try:
        procs.wait_for(restarted.elector.is_leader, timeout=30, what="the restarted controller to lead")
        dev.stop()
        dev.measured.write_text("mode = debug\n")
        dev.start()
        dev.wait(lambda: _phase(api, dev.name) == "Unattested", timeout=60,
                 what="Unattested after the tampered push")
        cert_path = dev.root / "state" / "node" / "node.crt"
        dev.wait(lambda: not cert_path.exists() and not dev.kubeconfig.exists()
                 and "verifier revoked this agent" in dev.log.read_text(), timeout=60,
                 what="the device to verify the revocation and drop its credential")
        log = dev.log.read_text()
        assert "revocation answer refused" not in log and "unsigned" not in log
    finally:
        restarted.stop()


# ---------------------------------------------------------------- bad input, against the same stock verifier
@dataclass
class Direct:
    """A push-mode agent in this process (no NAT needed here), registered and added to the verifier."""

    uuid: str
    tpm: Tpm
    swtpm: SoftwareTpm
    attester: push_client.PushAttester
    keylime_client: ck.KeylimeClient
    add: Any
    """Adds the agent to the verifier again (after a test deleted it)."""


@pytest.fixture
def direct(push_keylime: Keylime, swtpm_template: SoftwareTpm, tmp_path: Path) -> Iterator[Direct]:
    sw = swtpm_template.clone(tmp_path / "swtpm").start()
    tpm = Tpm.open(sw.tcti)
    agent_uuid = f"push-bad-{uuid.uuid4().hex[:8]}"
    client = ck.KeylimeClient(registrar_url=push_keylime.registrar_tls_url,
                              verifier_url=push_keylime.verifier_url,
                              tls=ck.KeylimeTls.from_dir(push_keylime.cv_ca))
    try:
        ident = tpm_identity.provision(tpm, tmp_path / "state")
        request = keylime_protocol.RegistrationRequest(ek_tpm=ident.ek_public, aik_tpm=ident.ak_public,
                                                       ekcert=ident.ek_cert, mtls_cert=None, ip="", port=0)
        RegistrarClient(push_keylime.registrar_url).register_v3(
            agent_uuid, request, lambda blob: tpm.activate_credential(ident, blob))
        registered = client.registrar_agent(agent_uuid)
        assert registered is not None
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def add() -> None:
            assert registered is not None
            client.add_agent(agent_uuid, agent=registered, v=bytes(32), ip=None, port=None,
                             tpm_policy={"23": [tpm.pcr_read([23])[23].hex()]},
                             revocation_key_pem=key.private_bytes(
                                 serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode(),
                             agent_api_version="2.1")

        add()
        verifier = push_client.HttpsClient(push_keylime.verifier_url, push_keylime.ca_cert)
        attester = push_client.PushAttester(tpm=tpm, identity=ident, agent_id=agent_uuid, verifier=verifier,
                                            backoff_max=4.0, pending_interval=0.2)
        yield Direct(agent_uuid, tpm, sw, attester, client, add)
    finally:
        with contextlib.suppress(Exception):
            client.delete_agent(agent_uuid)
        push_keylime.tenant("-c", "regdelete", "-u", agent_uuid)
        tpm.close()
        sw.stop()


def _offer(d: Direct) -> push.EvidenceRequest:
    """Phase 1, waiting out the verifier's "not yet" (429 until quote_interval passed since the last)."""
    got: list[push.EvidenceRequest] = []

    def attempt() -> bool:
        request = d.attester.offer()
        if isinstance(request, push.EvidenceRequest):
            got.append(request)
            return True
        return False

    procs.wait_for(attempt, timeout=30, interval=0.3, what="the verifier to issue a challenge")
    return got[0]


def _status(d: Direct) -> str:
    state = d.keylime_client.agent_state(d.uuid)
    return state.attestation_status if state is not None else "gone"


def test_verifier_unreachable_backoff_then_resume(
    direct: Direct, push_keylime: Keylime, caplog: pytest.LogCaptureFixture
) -> None:
    d = direct
    thread = threading.Thread(target=d.attester.run, name="push-attestation", daemon=True)
    thread.start()
    try:
        procs.wait_for(lambda: d.attester.stats.attestations >= 1, timeout=30, what="a first push")
        push_keylime.stop_verifier()
        procs.wait_for(lambda: len(d.attester.stats.backoffs) >= 4, timeout=60,
                       what="four attempts on the stopped verifier")
        assert d.attester.stats.backoffs[:4] == [1.0, 2.0, 4.0, 4.0]  # doubling, capped at backoff_max
        assert "unreachable" in (d.attester.stats.last_error or "")
        before = d.attester.stats.attestations
        push_keylime.start_verifier()
        # the attester thread counts the push a moment before it clears the outage mark: wait for both
        stats = d.attester.stats
        procs.wait_for(lambda: stats.attestations > before and stats.unreachable_since is None,
                       timeout=60, what="pushes to resume once the verifier is back, the outage over")
        procs.wait_for(lambda: _status(d) == "PASS", timeout=30, what="PASS after the outage")
    finally:
        d.attester.stop()
        thread.join(timeout=20)
    messages = [r.getMessage() for r in caplog.records if r.name == "edgeagent.attest.push"]
    assert sum("retrying with backoff" in m for m in messages) == 1  # one line per outage, not per attempt
    assert any("reachable again" in m for m in messages)


def test_wrong_or_unknown_session_token_proves_possession_again(direct: Direct) -> None:
    d = direct
    d.attester.authenticate()
    assert d.attester.stats.sessions == 1
    for bogus in ("not-a-token", f"{uuid.uuid4()}.{'0' * 43}"):
        d.attester.token = push.SessionToken(bogus, None)
        _offer(d)  # the 401 makes it prove possession again, then the offer goes through
    assert d.attester.stats.sessions == 3
    # An agent the verifier no longer knows cannot get a token at all: one clear error.
    d.keylime_client.delete_agent(d.uuid)
    d.attester.token = push.SessionToken("expired-or-revoked", None)
    with pytest.raises(push.PushError, match="refused the proof of possession"):
        d.attester.offer()


def test_session_opened_before_the_agent_is_added_is_used_once_it_is(direct: Direct) -> None:
    """What a device does right after registering (`Enrollment._push_main`): the verifier opens a session
    for an agent it does not know yet (the PBKDF2 hash of the token is done then), and the TPM's answer,
    presented once the agent is added, gets the token, with no second session."""
    d = direct
    d.keylime_client.delete_agent(d.uuid)
    procs.wait_for(lambda: d.keylime_client.agent_state(d.uuid) is None, timeout=30, what="the agent gone")
    prepared = d.attester.prepare_session()
    assert d.attester.prepared is prepared and prepared.expires_at > time.time()
    d.add()
    requests = d.attester.verifier.requests
    d.attester.authenticate()
    assert d.attester.verifier.requests == requests + 1  # the answer only, no new session
    assert d.attester.prepared is None and d.attester.stats.sessions == 1
    accepted, _ = d.attester.attest_once()
    assert accepted
    procs.wait_for(lambda: _status(d) == "PASS", timeout=30, what="the first evidence to pass")
    # a prepared session whose challenge has expired is not presented: a new one is opened
    d.attester.prepare_session()
    assert d.attester.prepared is not None
    d.attester.prepared = dataclasses.replace(d.attester.prepared, expires_at=time.time() - 5)
    requests = d.attester.verifier.requests
    d.attester.authenticate()
    assert d.attester.verifier.requests == requests + 2 and d.attester.stats.sessions == 2


def test_challenge_expired_before_the_evidence(direct: Direct) -> None:
    d = direct
    request = _offer(d)
    evidence = d.attester.collect(request)
    assert request.expires_at is not None
    procs.wait_for(lambda: time.time() > request.expires_at + 1, timeout=30,  # type: ignore[operator]
                   what="the challenge to expire (challenge_lifetime = 5)")
    with pytest.raises(push_client.ChallengeExpired, match="expired before the evidence arrived"):
        d.attester.submit(evidence)


def test_replayed_evidence_is_refused_or_fails(direct: Direct) -> None:
    d = direct
    evidence = d.attester.collect(_offer(d))
    assert d.attester.submit(evidence) >= 0
    procs.wait_for(lambda: _status(d) == "PASS", timeout=30, what="the first evidence to pass")
    # the same submission again: the attestation's evidence is immutable
    with pytest.raises(push.PushError, match=r"HTTP 403.*Cannot alter evidence"):
        d.attester.submit(evidence)
    # the old evidence for a new challenge: accepted for verification, and failed (nonce mismatch)
    _offer(d)
    d.attester.submit(evidence)
    procs.wait_for(lambda: _status(d) == "FAIL", timeout=30, what="the replayed quote to fail")
    # a genuine push afterwards passes again (auto_recover_attestation_failures)
    d.attester.submit(d.attester.collect(_offer(d)))
    procs.wait_for(lambda: _status(d) == "PASS", timeout=30, what="a genuine quote to pass again")


def test_the_agent_service_attests_in_push_mode(
    push_keylime: Keylime, kube_cluster: KubeCluster, push_controller: Controller,
    swtpm_template: SoftwareTpm, tmp_path: Path,
) -> None:
    """`edgeagent agent` with `[enroll] mode = "push"`: the same enrollment, inside the service."""
    from tests.integration.agent_proc import AgentProcess

    api = kube_cluster.client()
    name = f"edge-svc-{uuid.uuid4().hex[:6]}"
    sw = swtpm_template.clone(tmp_path / "swtpm").start()
    agent: AgentProcess | None = None
    try:
        (tmp_path / "policies").mkdir()
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f"""
state_dir = "{tmp_path / 'state'}"
policies_dir = "{tmp_path / 'policies'}"
[measure]
firmware_log = "{tmp_path / 'no-firmware-log'}"
[enroll]
mode = "push"
registrar_url = "{push_keylime.registrar_url}"
verifier_url = "{push_keylime.verifier_url}"
join_url = "https://127.0.0.1:{push_controller.s.join_port}"
node_name = "{name}"
uuid = "{name}-agent"
keylime_ca = "{push_keylime.ca_cert}"
payload_dir = "{tmp_path / 'run'}"
kubeconfig = "{tmp_path / 'kubelet' / 'kubeconfig'}"
retry_timeout = 60
certificate_timeout = 60
[agent]
socket = "{tmp_path / 'agent.sock'}"
metrics_port = 0
""")
        measured = subprocess.run([sys.executable, "-m", "edgeagent.cli.main", "--config", str(cfg), "--tpm",
                                   sw.tcti, "measure"], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert measured.returncode == 0, measured.stderr
        with Tpm.open(sw.tcti) as tpm:
            pcr23 = tpm.pcr_read([23])[23].hex()
            ek_cert = tpm_identity.load_ek(tpm).cert
        assert ek_cert is not None
        pin_device(api, name, ek_cert=ek_cert, agent_uuid=f"{name}-agent", agent_address="", mode="push",
                   tpm_policy={"23": [pcr23]})
        agent = AgentProcess(cfg, sw.tcti, tmp_path / "agent.sock",
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        agent.start(timeout=60)
        s = agent.wait_status(
            lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving",
            timeout=120, what="the node credential")
        att = s["attestation"]
        assert att["mode"] == "push" and att["agent_address"].startswith("push to https://")
        assert att["quotes_served"] >= 1 and att["push_last_error"] is None
        wait_edgenode(api, name, lambda e: e.phase == "Enrolled", timeout=30, what="Enrolled")
    finally:
        if agent is not None:
            agent.stop()
        push_keylime.tenant("-c", "delete", "-u", f"{name}-agent")
        push_keylime.tenant("-c", "regdelete", "-u", f"{name}-agent")
        sw.stop()
