"""`edgeagent agent` under the faults issue 10 lists, against stock Keylime, a real API server and the
attestation controller: SIGKILL at the phases test_agent_e2e does not reach, then a restart; the verifier down
for a while.

- mid-measure: a gate between the agent and its swtpm holds one TPM command of the start's measurement (the
  second PCR 23 extend, or the PCR 23 reset of a new log segment) and the agent is killed while it waits:
  the event log is then ahead of the TPM, as a power cut there leaves it. The next start rolls the log
  forward, so PCR 23 is exactly what the measured files give (computed here from the files, not read back
  from the log) and the device attests against a policy pinning that value.
- waiting for the certificate: kube-controller-manager held stopped, so the controller approves the CSR but
  nothing signs it; killed there, the next start waits on the same CSR with the same node key (no second key,
  no second CSR) and takes the certificate once the signer is back; or the signer signs while the agent is
  down, and the agent, back later than the API server's token cache, still reads its certificate.
- registering: the registrar held stopped, so Keylime has nothing of the agent; killed there, the next start
  registers the same AK and enrolls.
- the verifier stopped and started again on its port and database while the agent serves: the agent keeps
  serving and its credential, its status shows how long ago the verifier last asked for a quote, and the
  verifier attests it again once back.

Every wait is on a condition (a held command, a status, a cluster object); the only pause is the outage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s

from edgeagent.cloud.controller import Controller
from edgeagent.config import load_config
from edgeagent.measure import cel, targets
from edgeagent.testbed.cluster_side import pin_device
from edgeagent.testbed.nat import Relay
from edgeagent.tpm import Tpm
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.swtpm import SoftwareTpm, _free_port_pair
from tests.fixtures import procs
from tests.fixtures.keylime import Keylime
from tests.fixtures.kube import KubeCluster
from tests.integration.agent_proc import AgentProcess
from tests.integration.cloud.conftest import wait_edgenode

pytestmark = pytest.mark.integration

PCR = 23
CC_PCR_EXTEND = 0x182
CC_PCR_RESET = 0x13D


# ---------------------------------------------------------------- a gate in front of the swtpm
class TpmGate:
    """Relays the swtpm TCTI (data port P, control port P + 1) and holds the ``nth`` command ``cc`` on PCR 23.

    The held command is never forwarded: the agent waits for its answer until it is killed, which is the
    state a crash right before that command leaves. Commands are framed by their header (tag, size, code);
    the PCR is the first handle. Threads: one accept thread, and per client connection one copying answers
    back while the accepting side's thread forwards commands.
    """

    def __init__(self, tpm_port: int, *, cc: int, nth: int) -> None:
        self.cc, self.nth = cc, nth
        self.port = _free_port_pair("127.0.0.1")
        self.seen = 0
        self.held = threading.Event()
        self._stop = threading.Event()
        self._target = ("127.0.0.1", tpm_port)
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._ctrl = Relay(("127.0.0.1", self.port + 1), ("127.0.0.1", tpm_port + 1)).start()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="tpm-gate", daemon=True)
        self._thread.start()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in self._conns:  # shut down first: a close alone leaves a socket a thread reads from open
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)
        self._ctrl.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="tpm-gate-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """The TCTI opens a connection per command and half-closes it once sent: the command goes on (and
        the half-close after it), the answer comes back on the copying thread, which then closes both."""
        up = socket.create_connection(self._target)
        self._conns += [client, up]
        threading.Thread(target=self._copy, args=(up, client), name="tpm-gate-back", daemon=True).start()
        try:
            while True:
                head = _read_exactly(client, 10)
                if head is None:
                    up.shutdown(socket.SHUT_WR)
                    return
                size, cc = int.from_bytes(head[2:6], "big"), int.from_bytes(head[6:10], "big")
                body = _read_exactly(client, size - 10) if size > 10 else b""
                if body is None:
                    up.shutdown(socket.SHUT_WR)
                    return
                if cc == self.cc and body[:4] == PCR.to_bytes(4, "big"):
                    self.seen += 1
                    if self.seen == self.nth:
                        self.held.set()
                        self._stop.wait()  # never answered: the agent is killed waiting
                        return
                up.sendall(head + body)
        except OSError:
            return

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# ---------------------------------------------------------------- a device
@dataclass
class Device:
    name: str
    agent_uuid: str
    port: int
    root: Path
    tpm: SoftwareTpm
    config: Path
    ek_cert: bytes

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubelet" / "kubeconfig"

    def agent(self, tcti: str | None = None) -> AgentProcess:
        return AgentProcess(self.config, tcti or self.tpm.tcti, self.root / "agent.sock")

    def pin(self, api: k8s.ApiClient, **spec: Any) -> None:
        pin_device(api, self.name, ek_cert=self.ek_cert, agent_uuid=self.agent_uuid,
                   agent_address=f"127.0.0.1:{self.port}", **spec)

    def expected_pcr(self) -> str:
        """PCR 23 (sha256) as the measured files give it: one record per target on a reset PCR, computed
        from the files themselves, so a log that disagreed with them would not pass."""
        cfg = load_config(self.config, env={})
        records = [cel.make_record(i, PCR, {"type": cel.FILE, "component": t.component, "name": t.name,
                                            "path": str(t.path), "sha256": targets.sha256_file(t.path)},
                                   ["sha256"])
                   for i, t in enumerate(targets.collect(cfg))]
        return cel.replay(records, ["sha256"])[PCR]["sha256"].hex()

    def log_segment(self) -> list[cel.Record]:
        return cel.segment(cel.read_log(self.state / "measurements.cel.jsonl"), PCR)


@pytest.fixture
def make_device(
    keylime: Keylime, swtpm_template: SoftwareTpm, tmp_path: Path
) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []
    enrolled: dict[str, bool] = {}

    def make(tag: str, *, enroll: bool = True) -> Device:
        """A device on its own swtpm; ``enroll`` False: the agent only measures (nothing for Keylime)."""
        name = f"edge-{tag}-{uuid.uuid4().hex[:6]}"
        root = tmp_path / name
        root.mkdir()
        tpm = swtpm_template.clone(root / "swtpm").start()
        with Tpm.open(tpm.tcti) as t:
            ek_cert = tpm_identity.load_ek(t).cert
        assert ek_cert is not None
        port = procs.free_port()
        app_conf = root / "app.conf"
        app_conf.write_text("mode = production\n")
        enroll_section = f'''
[enroll]
registrar_url = "{keylime.registrar_url}"
agent_port = {port}
node_name = "{name}"
uuid = "{name}-agent"
keylime_ca = "{keylime.ca_cert}"
payload_dir = "{root / "run"}"
kubeconfig = "{root / "kubelet" / "kubeconfig"}"
retry_timeout = 0
certificate_timeout = 60
certificate_seconds = 3600
''' if enroll else ""
        cfg = root / "agent.toml"
        cfg.write_text(f'''
state_dir = "{root / "state"}"
policies_dir = "{root / "policies"}"
[measure]
firmware_log = "{root / "no-firmware-log"}"
extra_paths = ["{app_conf}"]
{enroll_section}
[agent]
socket = "{root / "agent.sock"}"
metrics_port = 0
restart_backoff = 0.2
restart_backoff_max = 2.0
enroll = {"true" if enroll else "false"}
''')
        device = Device(name, f"{name}-agent", port, root, tpm, cfg, ek_cert)
        made.append(device)
        enrolled[name] = enroll
        return device

    try:
        yield make
    finally:
        for d in made:
            if enrolled[d.name]:
                keylime.tenant("-c", "delete", "-u", d.agent_uuid)
                keylime.tenant("-c", "regdelete", "-u", d.agent_uuid)
            d.tpm.stop()


@contextlib.contextmanager
def running(agent: AgentProcess) -> Iterator[AgentProcess]:
    try:
        yield agent
    finally:
        agent.stop(signal.SIGKILL)


def _credential(agent: AgentProcess, *, timeout: float = 120.0) -> dict[str, Any]:
    return agent.wait_status(
        lambda s: s["attestation"]["credential_expiry"] and s["attestation"]["phase"] == "serving",
        timeout=timeout, what="the node credential")


def _public_der(key_or_cert_pem: bytes) -> bytes:
    if b"CERTIFICATE" in key_or_cert_pem:
        key: Any = x509.load_pem_x509_certificate(key_or_cert_pem).public_key()
    else:
        key = serialization.load_pem_private_key(key_or_cert_pem, password=None).public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------- SIGKILL mid-measure
def _sigkill_at(dev: Device, cc: int, nth: int, what: str) -> None:
    """Starts the agent through a TpmGate withholding the ``nth`` command ``cc`` and SIGKILLs it there."""
    gate = TpmGate(dev.tpm.port or 0, cc=cc, nth=nth)
    try:
        with running(dev.agent(gate.tcti).start(wait_ready=False)) as agent:
            assert gate.held.wait(60), f"no {what}:\n{agent.output()[-3000:]}"
            agent.stop(signal.SIGKILL)
    finally:
        gate.stop()


def test_sigkill_between_logging_and_extending_rolls_forward_and_attests(
    controller: Controller, kube_cluster: KubeCluster, make_device: Callable[..., Device],
) -> None:
    admin = kube_cluster.client()
    dev = make_device("measure")
    expected = dev.expected_pcr()
    dev.pin(admin, tpm_policy={str(PCR): [expected]})  # the verifier accepts exactly this PCR 23
    _sigkill_at(dev, CC_PCR_EXTEND, 2, f"second PCR {PCR} extend")
    # the log holds every file (it is written and synced before any extend), the TPM only the first one
    segment = dev.log_segment()
    files = [r for r in segment if r.kind == cel.FILE]
    assert segment[0].is_reset and len(files) == len(segment) - 1 > 2
    with Tpm.open(dev.tpm.tcti) as t:
        torn = t.pcr_read([PCR], "sha256")[PCR]
    assert torn == cel.replay(segment[:2], ["sha256"])[PCR]["sha256"]

    with running(dev.agent().start(timeout=60)) as agent:
        s = agent.wait_status(lambda s: s["measure"]["state"] == "measured", what="the measurement")
        assert s["measure"]["pcr_value"] == expected
        assert s["measure"]["new"] == 0  # rolled forward, nothing logged twice
        assert f"extended {len(files) - 1} records an interrupted run had logged" in agent.output()
        assert dev.log_segment() == segment
        _credential(agent)  # the verifier's policy pins PCR 23 to `expected`
        en = wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled")
        assert en.status["attested"] is True


def test_sigkill_between_logging_a_reset_and_resetting_the_pcr(
    make_device: Callable[..., Device],
) -> None:
    dev = make_device("reset", enroll=False)
    with Tpm.open(dev.tpm.tcti) as t:  # something extended PCR 23 before the agent's first start
        t.pcr_extend(PCR, {"sha256": hashlib.sha256(b"before the agent").digest()})
    _sigkill_at(dev, CC_PCR_RESET, 1, f"PCR {PCR} reset")
    segment = dev.log_segment()
    assert [r.is_reset for r in segment] == [True]  # the reset is logged, not done

    with running(dev.agent().start(timeout=60)) as agent:
        s = agent.wait_status(lambda s: s["measure"]["state"] == "measured", what="the measurement")
        assert s["measure"]["pcr_value"] == dev.expected_pcr()
        segment = dev.log_segment()
        assert segment[0].is_reset and len(segment) == s["measure"]["files"] + 1


# ---------------------------------------------------------------- SIGKILL while the CSR is pending
def _csrs_of(admin: k8s.ApiClient, node: str) -> list[Any]:
    items = k8s.CertificatesV1Api(admin).list_certificate_signing_request().items
    return [c for c in items if c.metadata and (c.metadata.name or "").startswith(f"edgeagent-{node}-")]


def _approved(csr: Any) -> bool:
    return any(c.type == "Approved" for c in (csr.status.conditions or []))


def test_sigkill_while_the_csr_waits_for_its_signer_keeps_the_key_and_the_csr(
    controller: Controller, kube_cluster: KubeCluster, make_device: Callable[..., Device],
) -> None:
    admin = kube_cluster.client()
    dev = make_device("csr")
    dev.pin(admin)
    kube_cluster.stop_controller_manager()  # the controller approves; nothing signs
    try:
        with running(dev.agent().start(timeout=60)) as agent:
            agent.wait_status(lambda s: s["attestation"]["steps"].get("certificate", {}).get("status")
                              == "waiting", timeout=120, what="the CSR to be created")
            procs.wait_for(lambda: any(_approved(c) for c in _csrs_of(admin, dev.name)), timeout=30,
                           what="the controller to approve the CSR")
            agent.stop(signal.SIGKILL)
        key = (dev.state / "node" / "node.key").read_bytes()
        [csr] = _csrs_of(admin, dev.name)
        assert not (csr.status.certificate or "")

        with running(dev.agent().start(timeout=60)) as agent:
            s = agent.wait_status(lambda s: s["attestation"]["steps"].get("certificate", {}).get("status")
                                  == "waiting", timeout=60, what="the wait for the certificate to resume")
            assert s["attestation"]["steps"]["csr"]["status"] == "skipped"
            kube_cluster.start_controller_manager()
            _credential(agent)
            assert (dev.state / "node" / "node.key").read_bytes() == key
            cert = (dev.state / "node" / "node.crt").read_bytes()
            assert _public_der(cert) == _public_der(key)
            [signed] = _csrs_of(admin, dev.name)
            assert signed.metadata.name == csr.metadata.name
            assert dev.kubeconfig.exists()
            wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled")
    finally:
        if kube_cluster.kcm is None:
            kube_cluster.start_controller_manager()


def test_sigkill_while_the_csr_waits_then_signed_while_down_the_restart_reads_it(
    controller: Controller, kube_cluster: KubeCluster, make_device: Callable[..., Device],
) -> None:
    """Signed while no agent runs, and read back later than the API server's 10 s cache of token
    authentications: the bootstrap token must still read the CSR (it was deleted at issuance once: 401 for
    ever, the certificate out of reach)."""
    admin = kube_cluster.client()
    dev = make_device("csr-late")
    dev.pin(admin)
    kube_cluster.stop_controller_manager()
    try:
        with running(dev.agent().start(timeout=60)) as agent:
            agent.wait_status(lambda s: s["attestation"]["steps"].get("certificate", {}).get("status")
                              == "waiting", timeout=120, what="the CSR to be created")
            procs.wait_for(lambda: any(_approved(c) for c in _csrs_of(admin, dev.name)), timeout=30,
                           what="the controller to approve the CSR")
            agent.stop(signal.SIGKILL)
    finally:
        kube_cluster.start_controller_manager()
    key = (dev.state / "node" / "node.key").read_bytes()
    wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled (CSR signed)")
    time.sleep(12)  # the device stays down past the API server's token cache (10 s)
    with running(dev.agent().start(timeout=60)) as agent:
        s = _credential(agent, timeout=60)
        assert s["attestation"]["steps"]["csr"]["status"] == "skipped"
        assert (dev.state / "node" / "node.key").read_bytes() == key
        assert _public_der((dev.state / "node" / "node.crt").read_bytes()) == _public_der(key)
        assert len(_csrs_of(admin, dev.name)) == 1


# ---------------------------------------------------------------- SIGKILL while registering
def test_sigkill_before_the_registrar_has_the_agent_then_enrolls_with_the_same_ak(
    controller: Controller, keylime: Keylime, kube_cluster: KubeCluster,
    make_device: Callable[..., Device],
) -> None:
    admin = kube_cluster.client()
    dev = make_device("register")
    dev.pin(admin)
    keylime.stop_registrar()
    try:
        with running(dev.agent().start(timeout=60)) as agent:  # ready: the agent API is up to be polled
            s = agent.wait_status(lambda s: s["attestation"]["steps"].get("register", {}).get("status")
                                  == "retry", timeout=60, what="registration to be retried")
            ak_name = s["attestation"]["ak_name"]
            agent.stop(signal.SIGKILL)
    finally:
        keylime.start_registrar()
    state = json.loads((dev.state / "enroll.json").read_text())
    assert state["registration"] is None and "register" not in state["steps"]
    with running(dev.agent().start(timeout=60)) as agent:
        s = _credential(agent)
        assert s["attestation"]["ak_name"] == ak_name
        assert s["attestation"]["steps"]["register"]["status"] == "done"
        wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled")


# ---------------------------------------------------------------- the verifier down for a while
def test_verifier_down_for_a_while_the_agent_serves_on_and_is_attested_again(
    controller: Controller, keylime: Keylime, kube_cluster: KubeCluster,
    make_device: Callable[..., Device],
) -> None:
    admin = kube_cluster.client()
    dev = make_device("verifier")
    dev.pin(admin)
    with running(dev.agent().start(timeout=60)) as agent:
        s = _credential(agent)
        wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled", what="to be enrolled")
        cert = (dev.state / "node" / "node.crt").read_bytes()
        pid, expiry = s["pid"], s["attestation"]["credential_expiry"]
        interval = keylime.settings.quote_interval
        keylime.stop_verifier()
        try:
            time.sleep(5 * interval)  # the outage: several quote intervals without a verifier
            s = agent.status()
            att = s["attestation"]
            quotes = att["quotes_served"]
            assert s["pid"] == pid and att["phase"] == "serving" and att["serving"] is True
            assert att["restarts"] == 0 and att["last_error"] == ""
            assert att["seconds_since_last_quote"] >= 4 * interval  # what an operator sees: no verifier
            assert att["credential_expiry"] == expiry and not att["revoked"]
            assert (dev.state / "node" / "node.crt").read_bytes() == cert and dev.kubeconfig.exists()
        finally:
            keylime.start_verifier()
        back = time.time()
        s = agent.wait_status(lambda s: s["attestation"]["quotes_served"] > quotes, timeout=60,
                              what="the restarted verifier to ask for quotes again")
        assert s["pid"] == pid and s["attestation"]["restarts"] == 0
        procs.wait_for(lambda: (st := controller.keylime.agent_state(dev.agent_uuid)) is not None
                       and st.good and st.last_successful_attestation > back, timeout=60,
                       what="the verifier to pass a quote taken after its restart")
        en = wait_edgenode(admin, dev.name, lambda en: en.phase == "Enrolled" and en.status["attested"],
                           what="to stay attested")
        assert en.status["attested"] is True
        assert (dev.state / "node" / "node.crt").read_bytes() == cert
