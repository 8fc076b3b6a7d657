"""`edgeagent enroll` as an explicit, resumable state machine persisted in ``state_dir/enroll.json``.

Steps, in order (each timed; `EnrollState` records which are done):

    provision    open the one TPM connection the agent keeps; EK + persisted AK (same AK forever)
    measure      `edgeagent.measure` into PCR 23 (idempotent: only new or changed files are logged)
    register     Keylime registrar: registration + AK activation (retried with backoff while unreachable)
    attest       serve the mTLS agent API; wait until the verifier's V and the tenant's U form K and the
                 payload (join material) opens, which happens only after a quote passed
    csr          node key (generated here, 0600) -> CSR with the TPM binding, created with the bootstrap token
    certificate  wait until the CSR is approved and signed; store the certificate
    kubeconfig   the kubelet's kubeconfig (0600, atomic)

then keep serving attestation (the verifier keeps polling) until told to stop, unless ``once``. While serving:

    renewal      at ``renew_fraction`` of the certificate's lifetime (counted from when it was stored), a new
                 CSR for the SAME node key with a fresh AK-signed binding quote, authenticated with the
                 current client certificate; the new certificate and the kubeconfig replace the old ones.
                 Same key by design: the kubeconfig names a key file and a certificate file the kubelet may
                 read at any moment, and two files cannot be replaced in one atomic step, so a new key would
                 leave a window where key and certificate do not match; the key never leaves the device and
                 each renewal re-proves with a fresh quote that it still sits next to the attested TPM.
                 A refusal (the device is not attested: RBAC or the approver deny) or an unreachable API
                 server is logged in one line and retried with backoff (``renew_retry``, doubling, <= 300 s)
                 while attestation keeps being served.
    revocation   a revocation notification signed with this enrollment's revocation key (its certificate
                 comes in the payload, stored 0600 as agent/revocation.crt) naming this agent: the node
                 certificate and the kubeconfig are deleted at once, so the certificate's remaining lifetime
                 cannot be used from this device. The agent keeps serving; a new payload (the controller
                 sends one once attestation is good again) starts a new CSR with the same key.

Resuming: every start re-runs provision and measure (both idempotent, and the TPM connection and PCR 23 are
needed anyway), skips a registration recorded for the same AK, address and TLS certificate, skips waiting for
the payload when it is already stored (the payload directory is a tmpfs: after a reboot it is waited for
again unless the credential is already issued), reuses a recorded CSR, and skips everything once a certificate
that has not expired is stored. The AK, NK, TLS and node keys are persisted, so a SIGKILL at any point
followed by a restart completes with the same identities. The state file is written atomically
after every step.

Threads while `enroll` runs, and what each owns:

    main thread      the caller of `run` / `enroll_steps` / `serve` (the CLI's, or a test's thread): drives
                     the steps, the renewals and the waits; it alone writes the node certificate, the CA file
                     and the kubeconfig, always under ``_credential_lock`` and only if no revocation came
                     since the payload it used was read. Signal handlers (SIGTERM, SIGINT) run here and only
                     call `stop()`.
    keylime-agent-api  the agent API server's accept loop (`AgentServer.start`); it owns nothing of ours.
    request threads  one per verifier / tenant connection (``ThreadingHTTPServer``): quotes (the TPM
                     connection serialises them with the main thread's binding quotes), the U and V shares
                     (`_on_delivery`: stores the payload and the revocation certificate, sets ``_delivered``)
                     and revocations (`_on_revocation`: deletes the certificate, the kubeconfig and the
                     payload, counts the revocation, under ``_credential_lock``).
    any thread       `stop()` sets an event; nothing else.

``_credential_lock`` (re-entrant) guards the credential files and `EnrollState`: every save of
``enroll.json`` happens under it, so a request thread's save cannot interleave with the main thread's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.attest import kubecsr, nk, nodekey, payload, tls
from edgeagent.attest import push as push_client
from edgeagent.attest.registrar import RegistrarClient, RetryPolicy
from edgeagent.attest.secrets import read_private, write_private
from edgeagent.attest.server import AgentApi, AgentServer
from edgeagent.config import AgentConfig
from edgeagent.errors import (
    AttestationError,
    ClusterError,
    ConfigError,
    CsrRefused,
    EdgeAgentError,
    PeerUnreachable,
    ProtocolError,
    SignatureError,
    StateError,
    TpmError,
)
from edgeagent.protocol import keylime as protocol
from edgeagent.protocol import nodebinding
from edgeagent.tpm import identity as tpm_identity
from edgeagent.tpm.connection import Tpm

log = logging.getLogger(__name__)

STATE_FILE = "enroll.json"
STATE_VERSION = 1
STEPS = ("provision", "measure", "register", "attest", "csr", "certificate", "kubeconfig")
NODE_DIR = "node"
AGENT_DIR = "agent"
CERT_FILE = "node.crt"
CA_FILE = "cluster-ca.crt"
REVOCATION_CERT_FILE = "revocation.crt"
RENEW_RETRY_MAX = 300.0
JOIN_WAIT_FOR_ADD = 30.0
"""Push mode: longest wait, after starting, for the controller to add the agent before the first session."""
RENEW_WAIT_MIN = 0.5
"""Least wait between two looks at the certificate in `serve`, whatever the configuration says, so the loop
cannot spin (a zero ``renew_retry``, a renewal already due, a credential a revocation made unusable)."""


# ---------------------------------------------------------------- persisted state
@dataclasses.dataclass
class EnrollState:
    """What survives a restart. Only facts needed to resume: no secrets (those are in their own files)."""

    uuid: str | None = None
    node_name: str | None = None
    ak_name: str | None = None
    registration: dict[str, Any] | None = None
    """{"ak_name", "ip", "port", "tls_sha256", "registrar"} of the last registration + activation."""
    csr_name: str | None = None
    csr_creating: str | None = None
    """A CSR name saved just before its create request. A restart in between (SIGKILL, power cut) creates
    that name again, and an existing CSR of that name is ours (AlreadyExists): never a second CSR."""
    api_server: str | None = None
    """The API server of the join material (renewals go there after the payload's tmpfs is gone)."""
    steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """step -> {"seconds", "finished" (ISO time), "detail"} for steps done at least once."""

    @classmethod
    def load(cls, path: Path) -> EnrollState:
        raw = read_private(path)
        if raw is None:
            return cls()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            data.pop("version")
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise StateError(f"{path} is corrupt ({e}); remove it to enroll from scratch") from None

    def save(self, path: Path) -> None:
        data = {"version": STATE_VERSION, **dataclasses.asdict(self)}
        write_private(path, json.dumps(data, indent=2, sort_keys=True).encode())

    def record(self, step: str, seconds: float, detail: str) -> None:
        self.steps[step] = {
            "seconds": round(seconds, 4),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "detail": detail,
        }


class CredentialRevoked(AttestationError):
    """A revocation for this agent came while its certificate was being obtained: nothing was stored."""


@dataclasses.dataclass(frozen=True)
class StepEvent:
    """Progress for views: ``status`` is start | done | skipped | waiting | retry | revoked."""

    step: str
    status: str
    seconds: float | None = None
    detail: str = ""


@dataclasses.dataclass
class EnrollResult:
    uuid: str
    node_name: str
    ak_name: str
    agent_address: str
    kubeconfig: Path | None
    steps: list[StepEvent]
    figures: dict[str, float]
    """Durations in seconds: provision, measure, register, first_quote (API up -> first integrity quote),
    attest (API up -> payload), csr, certificate, total."""


# ---------------------------------------------------------------- helpers
def agent_uuid(configured: str, ek_public: bytes) -> str:
    """The configured uuid, or one derived from the EK: stable for the TPM, whatever happens to the disk."""
    if configured:
        return protocol.check_agent_id(configured)
    return str(uuidlib.UUID(bytes=hashlib.sha256(ek_public).digest()[:16], version=4))


def node_name(configured: str) -> str:
    return configured or socket.gethostname().split(".")[0].lower()


def _certificate_valid(path: Path, *, margin: float = 60.0) -> bool:
    raw = read_private(path)
    if raw is None:
        return False
    try:
        cert = x509.load_pem_x509_certificate(raw)
    except ValueError:
        return False
    return cert.not_valid_after_utc.timestamp() > time.time() + margin


def renewal_due(cert_pem: bytes, stored_at: float, fraction: float) -> float:
    """Unix time to renew: ``fraction`` of the way from when the certificate was stored to its expiry.

    Counted from the later of notBefore and the time it was stored, because signers backdate notBefore
    (kube-controller-manager by 5 minutes) and the device can only use the certificate from when it has it.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    start = max(cert.not_valid_before_utc.timestamp(), stored_at)
    end = cert.not_valid_after_utc.timestamp()
    return start + max(0.0, min(fraction, 1.0)) * max(0.0, end - start)


def _kubeconfig_server(path: Path) -> str | None:
    """The API server URL of the kubeconfig `enroll` wrote (JSON), or None."""
    try:
        raw = read_private(path)
        server = json.loads(raw)["clusters"][0]["cluster"]["server"] if raw else None
    except (ValueError, KeyError, IndexError, TypeError, StateError):
        return None
    return server if isinstance(server, str) else None


def _load_revocation_key(path: Path | None, *, configured: bool = True) -> Any:
    if path is None:
        return None
    raw = read_private(path)
    if raw is None:
        if not configured:
            return None
        raise ConfigError(f"revocation certificate {path} does not exist (enroll.revocation_cert)")
    try:
        return x509.load_pem_x509_certificate(raw).public_key()
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate (enroll.revocation_cert)") from None


# ---------------------------------------------------------------- the state machine
class Enrollment:
    """One enrollment run. `run()` drives the steps; `stop()` (any thread) ends the wait or the serving."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_event: Callable[[StepEvent], None] | None = None,
        registrar_retry: RetryPolicy | None = None,
        tpm: Tpm | None = None,
    ) -> None:
        """``tpm``: an open connection the caller owns (the agent service shares its one connection: a TPM
        without a resource manager takes one client at a time); None: opened at provision, closed by
        close()."""
        self.config = config
        self.enroll = config.enroll
        self.state_dir = config.state_dir
        self.state_path = self.state_dir / STATE_FILE
        self.node_dir = self.state_dir / NODE_DIR
        self.agent_dir = self.state_dir / AGENT_DIR
        self.on_event = on_event
        self.registrar_retry = registrar_retry or RetryPolicy()
        self.events: list[StepEvent] = []
        self.figures: dict[str, float] = {}
        self._stop = threading.Event()
        self._delivered = threading.Event()
        self.tpm: Tpm | None = tpm
        self._owns_tpm = tpm is None
        self.server: AgentServer | None = None
        self.api: AgentApi | None = None
        self.state = EnrollState()
        self._payload_dir: Path | None = None
        self.ident: tpm_identity.Identity | None = None
        self._credential_lock = threading.RLock()
        self.renewals = 0
        """Certificates renewed while serving (for views and tests)."""
        self.renewal_failures = 0
        self.last_renewal_error: str | None = None
        self.revoked = threading.Event()
        """Set when a verified revocation for this agent dropped the node credential."""
        self._revocations = 0
        """Verified revocations for this agent so far (under ``_credential_lock``): a certificate obtained
        with a payload read before the latest one is discarded."""
        self.push: push_client.PushAttester | None = None
        """Push mode (``enroll.mode = "push"``): the attester; its thread, ``push-attestation``, pushes
        quotes and, after each accepted push, asks the join endpoint for join material or a revocation."""
        self._push_thread: threading.Thread | None = None
        self._join_client: push_client.HttpsClient | None = None
        self._push_revocation_key: Any = None
        self._join_error: str | None = None
        self._first_push_at: float | None = None

    # ------------------------------------------------------------ control
    def stop(self) -> None:
        self._stop.set()

    def _emit(self, step: str, status: str, seconds: float | None = None, detail: str = "") -> None:
        event = StepEvent(step, status, seconds, detail)
        if status in ("done", "skipped"):
            self.events.append(event)
        log.info("enroll %s: %s%s", step, status, f" ({detail})" if detail else "")
        if self.on_event is not None:
            self.on_event(event)

    def _save(self) -> None:
        with self._credential_lock:  # request threads save too (revocation): one writer at a time
            self.state.save(self.state_path)

    def _finish(self, step: str, seconds: float, detail: str) -> None:
        """Records a finished step in the state file and reports it."""
        self.figures[step] = seconds
        with self._credential_lock:
            self.state.record(step, seconds, detail)
            self._save()
        self._emit(step, "done", seconds, detail)

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise AttestationError("enrollment stopped")

    def _retrying(self, step: str, what: str, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` until it stops raising PeerUnreachable or ``retry_timeout`` passes (0: forever)."""
        timeout = self.enroll.retry_timeout
        deadline = None if timeout <= 0 else time.monotonic() + timeout
        delay = 0.5
        while True:
            try:
                return fn()
            except PeerUnreachable as e:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise PeerUnreachable(f"{e} (gave up on the {what} after {timeout:.0f} s)") from None
                self._emit(step, "retry", detail=f"{e}; next attempt in {delay:.1f} s")
                self._wait(delay)
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------ run
    def run(self, *, once: bool = False) -> EnrollResult:
        """Enrolls (resuming where a previous run stopped); serves afterwards unless ``once``."""
        try:
            result = self.enroll_steps()
            if once and result.kubeconfig is None and self.revoked.is_set():
                raise AttestationError("revoked during enrollment: the certificate was discarded")
            if not once:
                self.serve()
            return result
        finally:
            self.close()

    def enroll_steps(self) -> EnrollResult:
        """Every step up to the kubeconfig; the agent API keeps running afterwards (see `serve`, `close`)."""
        t_start = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = EnrollState.load(self.state_path)
        ident = self._provision()
        self.ident = ident
        self._measure()
        self._register(ident)
        material, revocations = self._attest()
        try:
            self._credential(ident, material, revocations=revocations)
        except CredentialRevoked as e:  # serve() enrolls again with the next payload
            self._emit("certificate", "revoked", detail=str(e))
        self.figures["total"] = time.monotonic() - t_start
        return self._result(ident)

    def serve(self) -> None:
        """Keeps answering the verifier until `stop()`, renewing the node certificate while attested."""
        if self.enroll.mode == "push":
            self._emit("serve", "waiting", detail=f"pushing attestation to {self.enroll.verifier_url}")
        else:
            address = f"{self.enroll.agent_host}:{self.server.port if self.server else '-'}"
            self._emit("serve", "waiting", detail=f"serving attestation on {address}")
        floor = max(self.enroll.renew_retry, RENEW_WAIT_MIN)
        retry = floor
        last_attempt = -float("inf")
        if self.state.api_server is None:  # enrolled by a version that did not record it
            self.state.api_server = _kubeconfig_server(self.enroll.kubeconfig)
        while not self._stop.is_set():
            cert = read_private(self.cert_path)
            if cert is None or self.state.api_server is None or self.revoked.is_set():
                self._await_new_payload()  # waits up to 0.5 s for a delivery
                continue
            try:
                due = renewal_due(cert, self.cert_path.stat().st_mtime, self.enroll.renew_fraction)
            except (ValueError, OSError):
                due = 0.0
            # never sooner than `floor` after the last attempt: a tiny fraction cannot spin
            wait = max(due - time.time(), last_attempt + floor - time.monotonic())
            if wait > 0:
                # wakes up at least every second to notice a revocation or a new payload
                if self._stop.wait(min(max(wait, RENEW_WAIT_MIN), 1.0)):
                    return
                continue
            last_attempt = time.monotonic()
            try:
                self.renew()
                retry = floor
            except (EdgeAgentError, ClusterError) as e:
                self.renewal_failures += 1
                self.last_renewal_error = str(e)
                log.warning("certificate renewal failed: %s; next attempt in %.0f s", e, retry)
                if self._stop.wait(retry):
                    return
                retry = min(retry * 2, RENEW_RETRY_MAX)

    @property
    def cert_path(self) -> Path:
        return self.node_dir / CERT_FILE

    def renew(self) -> Path:
        """A new certificate for the same node key, asked for with the current one (see the module doc)."""
        assert self.tpm is not None and self.ident is not None
        assert self.state.uuid is not None and self.state.node_name is not None
        api_server = self.state.api_server
        if api_server is None:
            raise StateError("no API server recorded for renewal; enroll again")
        key_path = self.node_dir / nodekey.KEY_FILE
        ca_path = self.node_dir / CA_FILE
        ca_pem = read_private(ca_path)
        if ca_pem is None:
            raise StateError(f"{ca_path} is missing; enroll again")
        t0 = time.monotonic()
        with self._credential_lock:
            revocations = self._revocations
        key = nodekey.load_or_create(self.node_dir)
        binding = nodekey.tpm_binding(self.tpm, self.ident, agent_uuid=self.state.uuid,
                                      public_key=key.public_key())
        name = nodekey.csr_name(self.state.node_name)
        body = nodebinding.csr_body(name=name, csr_pem=nodekey.build_csr(key, self.state.node_name),
                                binding=binding, expiration_seconds=self.enroll.certificate_seconds)
        cluster = kubecsr.Cluster(api_server, ca_path, cert_file=self.cert_path, key_file=key_path)
        kubecsr.submit(cluster, body)
        cert = kubecsr.wait_certificate(cluster, name, timeout=self.enroll.certificate_timeout,
                                        sleep=self._wait)
        with self._credential_lock:
            if self.revoked.is_set() or self._revocations != revocations:
                raise CredentialRevoked(f"revoked while CSR {name} was pending; certificate discarded")
            write_private(self.cert_path, cert)
            kubecsr.write_kubelet_kubeconfig(self.enroll.kubeconfig, api_server=api_server, ca_pem=ca_pem,
                                             cert_file=self.cert_path, key_file=key_path,
                                             node_name=self.state.node_name)
            self.state.record("renewal", time.monotonic() - t0, f"CSR {name}")
            self._save()
        self.renewals += 1
        log.info("node certificate renewed through CSR %s", name)
        return self.cert_path

    def _await_new_payload(self) -> None:
        """No credential (dropped on revocation): the next payload's join material enrolls the key again."""
        if not self._delivered.wait(0.5) or self._stop.is_set():
            return
        assert self.ident is not None
        data, revocations = self._stored_payload()
        self._delivered.clear()
        if data is None:
            return
        try:
            material = self._parse_material(data)
            self.revoked.clear()
            self._credential(self.ident, material, revocations=revocations)
        except (EdgeAgentError, ClusterError) as e:
            log.warning("re-enrollment with the new payload failed: %s", e)
            with self._credential_lock:
                self.state.steps.pop("csr", None)  # a new payload brings a new token: make a new CSR
                self.state.csr_creating = None

    def _stored_payload(self) -> tuple[bytes | None, int]:
        """The stored payload and the revocations counted when it was read (atomically: a revocation
        deletes the payload under the same lock), so a credential it yields can be checked against later
        revocations."""
        assert self._payload_dir is not None
        with self._credential_lock:
            return payload.stored(self._payload_dir), self._revocations

    # ------------------------------------------------------------ revocation
    def _on_revocation(self, rev: protocol.Revocation) -> None:
        """A verified revocation: for this agent, delete the node credential (one log line either way)."""
        what = rev.msg.get("event_id") or rev.msg.get("type") or "revocation"
        if rev.agent_id != self.state.uuid:
            log.info("verifier revoked another agent (%s): %s", rev.agent_id, what)
            return
        with self._credential_lock:
            self.revoked.set()
            self._revocations += 1
            dropped = []
            for path in (self.cert_path, self.enroll.kubeconfig):
                try:
                    path.unlink()
                    dropped.append(str(path))
                except FileNotFoundError:
                    pass
            if self._payload_dir is not None:  # its bootstrap token is spent; a new payload must come
                (self._payload_dir / payload.PAYLOAD_FILE).unlink(missing_ok=True)
            self._delivered.clear()
            for step in ("attest", "csr", "certificate", "kubeconfig"):
                self.state.steps.pop(step, None)
            self.state.csr_name = self.state.csr_creating = None
            self._save()
        log.warning("verifier revoked this agent (%s): dropped the node credential %s", what,
                    ", ".join(dropped) or "(none stored)")

    def close(self) -> None:
        if self.push is not None:
            self.push.stop()
            if self._push_thread is not None:
                self._push_thread.join(timeout=15)
            self.push = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.tpm is not None and self._owns_tpm:
            self.tpm.close()
            self.tpm = None

    def _result(self, ident: tpm_identity.Identity) -> EnrollResult:
        return EnrollResult(
            uuid=self.state.uuid or "",
            node_name=self.state.node_name or "",
            ak_name=ident.ak_name.hex(),
            agent_address=("push: no listening socket" if self.enroll.mode == "push"
                           else f"{self.enroll.agent_host}:{self.enroll.agent_port}"),
            kubeconfig=self.enroll.kubeconfig if "kubeconfig" in self.state.steps else None,
            steps=list(self.events),
            figures=dict(self.figures),
        )

    def _timed(self, step: str) -> _Timer:
        return _Timer(self, step)

    # ------------------------------------------------------------ steps
    def _provision(self) -> tpm_identity.Identity:
        with self._timed("provision") as t:
            if self.tpm is None:
                self.tpm = Tpm.open(self.config.tpm_tcti)
            ident = tpm_identity.provision(self.tpm, self.state_dir, ek_type=self.config.tpm.ek_type,
                                           ak_type=self.config.tpm.ak_type)
            uuid = agent_uuid(self.enroll.uuid, ident.ek_public)
            if self.state.uuid not in (None, uuid):
                # Another uuid (changed config) means another Keylime agent: start from scratch.
                self.state = EnrollState()
            if self.state.ak_name not in (None, ident.ak_name.hex()):
                self.state.registration = None  # a new AK must be registered and activated again
            self.state.uuid = uuid
            self.state.node_name = node_name(self.enroll.node_name)
            self.state.ak_name = ident.ak_name.hex()
            t.detail = f"uuid {uuid}, AK {ident.ak_name.hex()[:16]}…"
        return ident

    def _measure(self) -> None:
        from edgeagent.measure import measurer

        with self._timed("measure") as t:
            assert self.tpm is not None
            res = measurer.measure(self.config, self.tpm)
            value = next(iter(res.pcr_values.values()), b"").hex()
            t.detail = f"{res.measured} new, {len(res.items)} files, PCR {res.pcr} = {value[:16]}…"

    def _register(self, ident: tpm_identity.Identity) -> None:
        if self.enroll.mode == "push":
            self._register_push(ident)
            return
        assert self.tpm is not None and self.state.uuid is not None
        uuid = self.state.uuid
        self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        server_id = tls.load_or_create(self.agent_dir, uuid=uuid, host=self.enroll.agent_host)
        wanted = {
            "ak_name": ident.ak_name.hex(),
            "ip": self.enroll.agent_host,
            "port": self.enroll.agent_port,
            "tls_sha256": hashlib.sha256(server_id.cert_pem.encode()).hexdigest(),
            "registrar": self.enroll.registrar_url,
        }
        self._start_server(ident, server_id)
        if self.state.registration == wanted and "register" in self.state.steps:
            self._emit("register", "skipped", detail="already registered and activated with this AK")
            return
        request = protocol.RegistrationRequest(
            ek_tpm=ident.ek_public, aik_tpm=ident.ak_public, ekcert=ident.ek_cert,
            mtls_cert=server_id.cert_pem, ip=self.enroll.agent_host, port=self.enroll.agent_port,
        )
        tpm = self.tpm
        with self._timed("register") as t:
            def attempt() -> None:
                client = RegistrarClient(self.enroll.registrar_url, retry=self.registrar_retry)
                client.register_and_activate(uuid, request,
                                             lambda blob: tpm.activate_credential(ident, blob))

            self._retrying("register", "registration", attempt)
            self.state.registration = wanted
            t.detail = f"registered {uuid} at {self.enroll.registrar_url}"

    # ------------------------------------------------------------ push mode
    def _register_push(self, ident: tpm_identity.Identity) -> None:
        """Registration without an address or a TLS certificate, then the push thread (no socket opened)."""
        assert self.tpm is not None and self.state.uuid is not None
        uuid = self.state.uuid
        self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._payload_dir = payload.payload_dir(self.enroll.payload_dir, self.state_dir)
        wanted = {"ak_name": ident.ak_name.hex(), "mode": "push", "registrar": self.enroll.registrar_url}
        if self.state.registration == wanted and "register" in self.state.steps:
            self._emit("register", "skipped", detail="already registered and activated with this AK")
        else:
            request = protocol.RegistrationRequest(
                ek_tpm=ident.ek_public, aik_tpm=ident.ak_public, ekcert=ident.ek_cert,
                mtls_cert=None, ip="", port=0,
            )
            tpm = self.tpm
            with self._timed("register") as t:
                def attempt() -> str:
                    client = RegistrarClient(self.enroll.registrar_url, retry=self.registrar_retry)
                    return client.register_v3(uuid, request,
                                              lambda blob: tpm.activate_credential(ident, blob))

                version = self._retrying("register", "registration", attempt)
                self.state.registration = wanted
                t.detail = f"registered {uuid} at {self.enroll.registrar_url} (API {version}), no address"
        self._start_push(ident)

    def _start_push(self, ident: tpm_identity.Identity) -> None:
        assert self.tpm is not None and self.state.uuid is not None
        verifier = push_client.HttpsClient(self.enroll.verifier_url, self.enroll.keylime_ca, what="verifier")
        self._join_client = push_client.HttpsClient(self.enroll.join_url, self.enroll.keylime_ca,
                                                    what="join endpoint")
        self._push_revocation_key = (
            _load_revocation_key(self.enroll.revocation_cert)
            or _load_revocation_key(self.agent_dir / REVOCATION_CERT_FILE, configured=False))
        firmware = self.config.measure.firmware_log
        self.push = push_client.PushAttester(
            tpm=self.tpm, identity=ident, agent_id=self.state.uuid, verifier=verifier,
            firmware_log=firmware if firmware.exists() else None,
            cel_log=self.config.state_path(self.config.measure.event_log),
            backoff_max=self.enroll.push_backoff_max, on_cycle=self._push_cycle,
        )
        self._first_push_at = None
        self._server_started = time.monotonic()
        self._push_thread = threading.Thread(target=self._push_main, name="push-attestation", daemon=True)
        self._push_thread.start()

    def _push_main(self) -> None:
        """The push thread: tell the controller this device has registered (any join request does: it adds
        a pending device at once), open the first session (the verifier's costly part, a PBKDF2 token hash)
        and answer its challenge, then wait (briefly, polling the join endpoint) until the controller has
        added the agent to the verifier, so that answer is not spent on a refusal; then push until stopped.
        The controller adds the agent while the verifier hashes the token."""
        assert self.push is not None and self._join_client is not None and self.state.uuid is not None
        with contextlib.suppress(PeerUnreachable, ProtocolError):  # the loop below asks again
            push_client.fetch_join(self._join_client, self.state.uuid)
        try:
            self.push.prepare_session()
        except (PeerUnreachable, ProtocolError, TpmError) as e:
            log.info("push: cannot open a session ahead (%s); the push loop retries", e)
        deadline = time.monotonic() + JOIN_WAIT_FOR_ADD
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                answer = push_client.fetch_join(self._join_client, self.state.uuid)
            except (PeerUnreachable, ProtocolError):
                break  # the push loop reports and retries what is wrong
            if answer.state != "pending" or answer.added:
                break
            if self.push.wait(0.05):
                return
        self.push.run()

    def _push_cycle(self) -> None:
        """Runs in the push thread after every push the verifier accepted: ask the join endpoint whether
        there is join material (opened only when none is held) or a revocation (acted on only when its
        signature verifies with the enrollment's revocation certificate)."""
        if self._first_push_at is None:
            self._first_push_at = time.monotonic()
        assert self._join_client is not None and self.state.uuid is not None
        try:
            answer = push_client.fetch_join(self._join_client, self.state.uuid)
        except (PeerUnreachable, ProtocolError) as e:
            self._note_join_error(str(e))
            return
        if answer.state == "pending" and self._needs_material():
            # The verifier checks evidence after accepting it and the controller seals the material once it
            # sees the pass: ask again shortly rather than only after the next push (seconds away).
            until_next = (self.push.stats.seconds_to_next or 0.0) if self.push is not None else 0.0
            deadline = time.monotonic() + until_next - 0.2
            while answer.state == "pending" and time.monotonic() < deadline and not self._stop.wait(0.05):
                try:
                    answer = push_client.fetch_join(self._join_client, self.state.uuid)
                except (PeerUnreachable, ProtocolError) as e:
                    self._note_join_error(str(e))
                    return
        if answer.state == "attested" and answer.sealed is not None:
            if not self._needs_material():
                return
            assert self.tpm is not None and self.ident is not None
            try:
                data = push_client.open_join(self.tpm, self.ident, answer.sealed)
            except (TpmError, ProtocolError) as e:
                self._note_join_error(f"join material not for this TPM: {e}")
                return
            self._join_error = None
            self._on_delivery(payload.Delivery(key=b"", payload=data))
        elif answer.state == "revoked":
            if self.revoked.is_set():
                return
            key = self._push_revocation_key
            if key is None or not isinstance(key, rsa.RSAPublicKey) or answer.revocation is None:
                self._note_join_error("the cluster side says this device is revoked, unsigned or without a "
                                      "revocation certificate here: credential kept until renewal is refused")
                return
            try:
                revocation = protocol.verify_revocation(answer.revocation, key)
            except (SignatureError, ProtocolError) as e:
                self._note_join_error(f"revocation answer refused: {e}")
                return
            self._on_revocation(revocation)

    def _needs_material(self) -> bool:
        with self._credential_lock:
            return self.revoked.is_set() or (
                self._payload_dir is not None and payload.stored(self._payload_dir) is None)

    def attestation_traffic(self) -> tuple[int, int]:
        """(attestations so far, bytes this device sent for them): pull, the agent API's answers to the
        verifier; push, its requests to the verifier and the join endpoint. HTTP only, TLS not counted."""
        if self.push is not None:
            sent = self.push.verifier.bytes_sent + (self._join_client.bytes_sent if self._join_client else 0)
            return self.push.stats.attestations, sent
        if self.api is not None:
            return self.api.quotes_served, self.api.bytes_sent
        return 0, 0

    def _note_join_error(self, message: str) -> None:
        if message != self._join_error:
            log.warning("push: %s", message)
        self._join_error = message

    def _start_server(self, ident: tpm_identity.Identity, server_id: tls.ServerIdentity) -> None:
        assert self.tpm is not None and self.state.uuid is not None
        key = nk.load_or_create(self.agent_dir)
        self._payload_dir = payload.payload_dir(self.enroll.payload_dir, self.state_dir)
        shares = payload.KeyShares(self.state.uuid, on_delivery=self._on_delivery)
        firmware_log = self.config.measure.firmware_log
        self.api = AgentApi(
            tpm=self.tpm, identity=ident, uuid=self.state.uuid, nk=key, shares=shares,
            firmware_log=firmware_log,
            revocation_key=(_load_revocation_key(self.enroll.revocation_cert)
                            or _load_revocation_key(self.agent_dir / REVOCATION_CERT_FILE, configured=False)),
            on_revocation=self._on_revocation,
        )
        context = tls.server_context(server_id, self.enroll.keylime_ca)
        try:
            self.server = AgentServer(self.api, self.enroll.agent_host, self.enroll.agent_port, context)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.enroll.agent_host}:{self.enroll.agent_port}: "
                              f"{e.strerror}") from None
        self.server.start()
        self._server_started = time.monotonic()

    def _on_delivery(self, delivery: payload.Delivery) -> None:
        """Runs in a request thread: store the payload before the request is answered."""
        assert self._payload_dir is not None
        if delivery.payload is None:
            log.info("bootstrap key K derived; the U share carried no payload")
            return
        payload.store(self._payload_dir, delivery.payload)
        self._store_revocation_cert(delivery.payload)
        with self._credential_lock:
            # Join material sent after a revocation is the cloud side's answer to a device attested again:
            # the revocation (perhaps re-sent by the verifier while it still judged the old state) is over.
            self.revoked.clear()
        self._delivered.set()

    def _store_revocation_cert(self, data: bytes) -> None:
        """Keeps the payload's revocation certificate (0600); later notifications are checked with it."""
        try:
            material = payload.parse_join_material(data)
        except ProtocolError as e:
            log.warning("payload is not join material: %s", e)
            return
        if material.revocation_cert is None or self.enroll.revocation_cert is not None:
            return  # a configured certificate wins over one sent by the cloud side
        write_private(self.agent_dir / REVOCATION_CERT_FILE, material.revocation_cert)
        key = x509.load_pem_x509_certificate(material.revocation_cert).public_key()
        if self.api is not None and isinstance(key, rsa.RSAPublicKey):  # parse_join_material refuses others
            self.api.revocation_key = key
        self._push_revocation_key = key

    def _attest(self) -> tuple[payload.JoinMaterial | None, int]:
        """The join material (None: the credential is already issued) and the revocation count when the
        payload was read (see `_stored_payload`)."""
        assert self._payload_dir is not None
        cert_ok = _certificate_valid(self.node_dir / CERT_FILE)
        if cert_ok and "kubeconfig" in self.state.steps:
            self._emit("attest", "skipped", detail="node credential already issued")
            return None, self._revocations
        data, revocations = self._stored_payload()
        if data is not None:  # delivered before (perhaps just before a kill that kept it unrecorded)
            self._emit("attest", "skipped", detail="payload already delivered")
            return self._parse_material(data), revocations
        with self._timed("attest") as t:
            if self.enroll.mode == "push":
                self._emit("attest", "waiting",
                           detail=f"pushing quotes to {self.enroll.verifier_url}; waiting for the join "
                                  f"material from {self.enroll.join_url}")
            else:
                self._emit("attest", "waiting",
                           detail=f"agent API on {self.enroll.agent_host}:{self.enroll.agent_port}; "
                                  "waiting for the verifier to accept a quote and deliver the payload")
            timeout = self.enroll.payload_timeout
            deadline = None if timeout <= 0 else time.monotonic() + timeout
            while not self._delivered.wait(0.1):
                if self._stop.is_set():
                    raise AttestationError("enrollment stopped while waiting for the payload")
                if deadline is not None and time.monotonic() > deadline:
                    last = ""
                    if self.push is not None and self.push.stats.last_error:
                        last = f" (last push error: {self.push.stats.last_error})"
                    raise AttestationError(f"no payload within {timeout:.0f} s: is the agent added to the "
                                           f"Keylime verifier?{last}")
            data, revocations = self._stored_payload()
            if data is None:
                raise StateError(f"payload vanished from {self._payload_dir}")
            if self.push is not None:
                if self._first_push_at is not None:
                    self.figures["first_quote"] = self._first_push_at - self._server_started
                t.detail = (f"join material opened by this TPM ({len(data)} bytes) after "
                            f"{self.push.stats.attestations} pushes")
            else:
                assert self.api is not None
                if self.api.first_quote_at is not None:
                    self.figures["first_quote"] = self.api.first_quote_at - self._server_started
                t.detail = f"payload delivered ({len(data)} bytes) after {self.api.quotes_served} quotes"
            material = self._parse_material(data)
        return material, revocations

    def _parse_material(self, data: bytes) -> payload.JoinMaterial:
        material = payload.parse_join_material(data)
        if material.node_name != self.state.node_name:
            raise ProtocolError(
                f"payload is for node {material.node_name!r}, this is {self.state.node_name!r}")
        return material

    def _credential(self, ident: tpm_identity.Identity, material: payload.JoinMaterial | None, *,
                    revocations: int) -> None:
        """CSR -> certificate -> kubeconfig; raises CredentialRevoked (and keeps nothing) when a revocation
        came after the payload was read (``revocations`` is the count then): the revocation wins."""
        cert_path, key_path = self.node_dir / CERT_FILE, self.node_dir / nodekey.KEY_FILE
        if material is None:
            for step in ("csr", "certificate", "kubeconfig"):
                self._emit(step, "skipped", detail="node credential already issued")
            return
        assert self.tpm is not None and self.state.uuid is not None and self.state.node_name is not None
        node = self.state.node_name
        ca_path = kubecsr.write_ca(self.node_dir / CA_FILE, material.ca_cert)
        self.state.api_server = material.api_server
        cluster = kubecsr.Cluster(material.api_server, ca_path, token=material.bootstrap_token)
        if _certificate_valid(cert_path) and "certificate" in self.state.steps:
            self._emit("csr", "skipped", detail="certificate already issued")
            self._emit("certificate", "skipped", detail=str(cert_path))
            cert = None
        else:
            if self.state.csr_name is not None and "csr" in self.state.steps:
                self._emit("csr", "skipped", detail=f"CSR {self.state.csr_name} already created")
            else:
                with self._timed("csr") as t:
                    key = nodekey.load_or_create(self.node_dir)
                    binding = nodekey.tpm_binding(self.tpm, ident, agent_uuid=self.state.uuid,
                                                  public_key=key.public_key())
                    name = self.state.csr_creating or nodekey.csr_name(node)
                    body = nodebinding.csr_body(name=name, csr_pem=nodekey.build_csr(key, node),
                                            binding=binding,
                                            expiration_seconds=self.enroll.certificate_seconds)
                    self.state.csr_creating = name
                    self._save()  # before the request: see EnrollState.csr_creating
                    self.state.csr_name = self._retrying("csr", "CSR creation",
                                                         lambda: kubecsr.submit(cluster, body))
                    self.state.csr_creating = None
                    t.detail = f"CSR {name} for system:node:{node}"
            name = self.state.csr_name
            assert name is not None
            self._emit("certificate", "start")
            self._emit("certificate", "waiting", detail=f"waiting for CSR {name} to be approved and signed")
            t0 = time.monotonic()
            try:
                cert = self._retrying("certificate", "certificate", lambda: kubecsr.wait_certificate(
                    cluster, name, timeout=self.enroll.certificate_timeout, sleep=self._wait))
            except CsrRefused:
                # Never to be signed: the next attempt makes a new CSR (with a fresh TPM binding) rather
                # than waiting on this one forever (a CSR judged a moment before a restore was denied).
                self.state.csr_name = self.state.csr_creating = None
                self.state.steps.pop("csr", None)
                self._save()
                raise
            cert_seconds = time.monotonic() - t0
        # The certificate and the kubeconfig are written and recorded under the lock a revocation takes,
        # after checking none came since the payload was read: either the revocation deletes them after
        # they are written, or they are never written.
        with self._credential_lock:
            if self._revocations != revocations:
                # its bootstrap token is spent: the next payload makes a new CSR
                self.state.csr_name = self.state.csr_creating = None
                self.state.steps.pop("csr", None)
                self._save()
                raise CredentialRevoked("revoked while the node credential was being obtained; nothing "
                                        "stored, waiting for a new payload")
            if cert is not None:
                write_private(cert_path, cert)
                self._finish("certificate", cert_seconds, f"certificate in {cert_path}")
            t0 = time.monotonic()
            self._emit("kubeconfig", "start")
            kubecsr.write_kubelet_kubeconfig(self.enroll.kubeconfig, api_server=material.api_server,
                                             ca_pem=material.ca_cert, cert_file=cert_path, key_file=key_path,
                                             node_name=node)
            self._finish("kubeconfig", time.monotonic() - t0, str(self.enroll.kubeconfig))


class _Timer:
    """Times a step, records it in the state file when it ends without an error, emits progress."""

    def __init__(self, run: Enrollment, step: str) -> None:
        self.run = run
        self.step = step
        self.detail = ""
        self.t0 = 0.0

    def __enter__(self) -> _Timer:
        self.t0 = time.monotonic()
        self.run._emit(self.step, "start")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            if isinstance(exc, EdgeAgentError | ClusterError):
                log.info("enroll %s failed: %s", self.step, exc)
            return
        self.run._finish(self.step, time.monotonic() - self.t0, self.detail)
