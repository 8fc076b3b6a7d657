"""The attestation controller: EdgeNodes in, Keylime driven, node credentials approved or withdrawn.

Threads, and what each owns:
- workers (``IDENTITY-worker-K``, ``Settings.workers`` of them): the only ones that reconcile. Each takes one
  key at a time ("node/NAME" or "csr/NAME") from the ``kube.queue.DelayQueue`` (which hands a key to one
  taker) and acts under that node's lock, so two workers never act on one node while a fleet's enrollments,
  which mostly wait on the network (registrar, verifier, agent, API server), overlap. They own ``memory``
  (per-node facts) and the requeues (delays, backoff). Nothing acts unless this replica holds the Lease: a
  follower's keys wait a second.
- the verifier poller (``IDENTITY-verifier-poll``): one bulk request for every agent's state each
  ``poll_interval`` (not one per device), kept as the latest snapshot; it queues only the nodes whose state
  changed, that vanished from the verifier, or whose lastAttestation is due. Attested nodes are otherwise
  left alone: the webhook and this poll are how a failure is seen.
- two shared watches (``kube.watch.SharedWatch``: ``watch-edgenodes.edgeagent.io`` and
  ``watch-certificatesigningrequests.certificates.k8s.io``): each owns its stream and resume point, and only
  adds keys to the queue. They list once and then watch from the last resourceVersion, relisting only on 410
  Gone (or every ``Settings.resync_interval`` seconds if set: one LIST per kind, keys only for what changed).
  A watch that fails backs off and retries; ``health()`` reports it. The CSR watch starts only once
  ``selfcheck`` finds the rights to act on CSRs; while they are missing (reported once, in the log and an
  Event on the controller's Pod) the ``IDENTITY-csr-rights`` thread asks again every
  ``Settings.rights_recheck_interval`` seconds and starts the watch when they are granted.
- the lease elector (``lease-IDENTITY``): owns the Lease; on winning it makes sure the cluster objects exist
  and queues every EdgeNode the watch knows (no request).
- the webhook server's threads: verify Keylime's revocation notifications and revoke directly, under the
  per-node lock that serialises them with the worker, so a notification takes effect in milliseconds.
- the caller's thread runs ``run_forever`` (or ``start``/``stop``) and nothing else.

EdgeNode life cycle (status.phase), each step idempotent:
  Pending    -> registrar has the activated agent, EK chains to the vendor CA store and matches the pin ->
                agent added to the verifier with V, U + join material delivered (status.delivered)
  Pending    -> verifier's first good quote                 -> Attested (RBAC granted)
  Attested   -> a CSR approved and signed                    -> Enrolled (credentialExpiry)
  Attested/Enrolled -> webhook or polled failure             -> Unattested (revoke.Access.revoke)
  Unattested -> reactivated at the verifier, quote good again -> Attested/Enrolled (revoke.Access.restore),
                and fresh join material under the last K (a device that dropped its credential on the
                verifier's revocation notification asks for a new certificate with it)
The verifier's policy: PCR 23 (spec.tpmPolicy, or trust on first use), plus spec.bootPCRs (reference PCR 0-7
values) and spec.mbRefstate (a Keylime measured-boot policy, replayed against the firmware event log).
Failures talking to Keylime or the API server requeue the key with exponential backoff (0.5 s .. 30 s).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s

from edgeagent.cloud import (
    bootstrap,
    crd,
    ekcheck,
    joinserver,
    keylime,
    leader,
    revoke,
    selfcheck,
    signingkey,
    tenant,
    webhook,
)
from edgeagent.cloud import csr as csr_mod
from edgeagent.errors import ClusterError, ConfigError, EdgeAgentError
from edgeagent.kube import errors as kube_errors
from edgeagent.kube.api import KubeApi
from edgeagent.kube.queue import DelayQueue
from edgeagent.kube.transport import ClientTransport
from edgeagent.kube.watch import Event, Everything, SharedWatch
from edgeagent.protocol import keylime as protocol
from edgeagent.protocol import push
from edgeagent.tpm import attest as tpm_attest

log = logging.getLogger(__name__)

PUSH_VERDICT_DELAY = 0.15
"""Seconds after a push-mode device's join request before its node is reconciled (the verifier's verdict on
the evidence it just accepted is ready by then in the common case; the regular poll covers the rest)."""

HISTORY = 1000
"""Recent actions and notifications kept for tests and diagnostics (bounded: a controller runs for months)."""

BINDING_PCRS = [23]
"""The agent's own measurements (CEL log from `edgeagent measure`) live in PCR 23."""


@dataclass
class Settings:
    """Everything the controller is configured with (the CLI fills it from options)."""

    registrar_url: str
    verifier_url: str
    keylime_ca_dir: Path
    ek_ca_store: Path
    api_server_url: str
    """The API server URL devices are told to use (the payload's apiServer)."""
    api_server_ca_pem: str
    require_ek_cert: bool = True
    more_verifiers: tuple[str, ...] = ()
    """Further Keylime verifiers (same registrar and CA, own databases) new devices are spread over; see
    `keylime.KeylimeClient`."""
    credential_lifetime: int = 86400
    token_ttl: int = 600
    max_binding_age: float = 300.0
    poll_interval: float = 1.0
    """Seconds between two bulk polls of the verifier (every agent in one request): the fallback behind the
    webhook that sees an attested node fail, and what restores an Unattested one."""
    pending_interval: float = 0.2
    """Seconds between two checks while a node enrolls (waiting for registration or the first quote)."""
    reactivate_interval: float = 5.0
    """Seconds between two reactivations of a failed agent (each makes the verifier quote it again)."""
    status_interval: float = 30.0
    """Least seconds between two lastAttestation updates of one EdgeNode: each is an etcd write, so a fleet
    of N devices costs N / status_interval writes a second (the verifier's own state is what revocation
    follows, not this field)."""
    workers: int = 4
    """Reconciling threads: enrollments of a fleet overlap (each waits on the network most of its time)."""
    lease_name: str = "edgeagent-attestation-controller"
    lease_namespace: str = "kube-system"
    identity: str = "edgeagent-attestation-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    webhook_host: str = "0.0.0.0"
    webhook_port: int | None = 8443
    webhook_cert: Path | None = None
    """Server certificate of the webhook (Keylime's notifier speaks HTTPS and checks it against the
    verifier's trusted_server_ca); None serves plain HTTP (for a TLS-terminating proxy in front)."""
    webhook_key: Path | None = None
    webhook_client_ca: Path | None = None
    """CA the notifier's client certificate must chain to (the Keylime CA); None: no client certificate."""
    join_host: str = "0.0.0.0"
    join_port: int | None = None
    """Port of the join endpoint push-mode devices fetch their sealed join material from (`joinserver`);
    None: not served (pull-mode devices only). TLS with ``webhook_cert``/``webhook_key`` when set (no client
    certificate: devices have none yet; the material is sealed to each device's TPM)."""
    signing_secret: str = signingkey.SECRET_NAME
    """Secret (in ``lease_namespace``, the controller's own) holding the key that signs the join endpoint's
    revocation answers; created on first use (`signingkey`)."""
    install_crd: bool = False
    self_ref: selfcheck.SelfRef | None = None
    """What Events about the controller itself point at (its Pod, from the downward API); None: its Lease."""
    rights_recheck_interval: float = 30.0
    """Seconds between two checks of the CSR rights while they are missing."""
    watch_timeout: int = 300
    """Seconds one watch request lasts on the API server (timeoutSeconds; each request gets 1-1.5 times it);
    the next one resumes from the last resourceVersion, so this costs no list."""
    resync_interval: float = 0.0
    """Seconds between two scheduled relists of EdgeNodes and CSRs; 0 (the default): never. The watches resume
    from their resourceVersion and relist only on 410 Gone, so nothing is missed without it; a relist is one
    paged LIST per kind and queues only objects whose resourceVersion changed (no per-object GET)."""


@dataclass
class _Memory:
    """Per-node facts that need not survive a restart (all are re-derived from the API and Keylime)."""

    failures: int = 0
    reactivated_at: float = 0.0
    """Unix time of the last reactivation request (compared with the verifier's unix timestamps)."""
    revoked_at: float = 0.0
    """Unix time of the last revocation: only a good quote after it restores the node."""
    last_status_write: float = 0.0
    uuid: str | None = None
    revocation_key: rsa.RSAPublicKey | None = None
    split_key: tenant.SplitKey | None = None
    """K of the last delivery: lets a restore send fresh join material without re-adding the agent."""
    revocation_cert_pem: str | None = None
    revocation_private: rsa.RSAPrivateKey | None = None
    """Pull mode: the enrollment's revocation key (the device holds its certificate, Keylime the key): signs
    the revocation this controller forwards to the device; kept only in memory: after a restart the device
    learns of a revocation from Keylime's agent notifier if it is on, else when its renewal is refused."""
    sealed: push.Sealed | None = None
    """Push mode: the join material of the current period, sealed to the device's TPM; sealed as soon as the
    agent is added (or access restored), handed out only while the verifier passes the device."""
    sealed_at: float = 0.0
    """time.monotonic() of the seal: its bootstrap token is renewed at half its TTL."""
    state_seen_at: float = 0.0
    """time.monotonic() of the newest verifier state acted on: an older poll snapshot is not used."""
    attested: bool = False
    """Phase Attested or Enrolled at the last reconcile: the verifier poller watches it."""


@dataclass(frozen=True)
class _Snapshot:
    """Every agent's state from one bulk request, and when it was asked (time.monotonic())."""

    at: float
    states: dict[str, keylime.VerifierAgent]


class Controller:
    def __init__(
        self,
        api: k8s.ApiClient,
        settings: Settings,
        *,
        keylime_client: keylime.KeylimeClient | None = None,
        tls: keylime.KeylimeTls | None = None,
        kube: KubeApi | None = None,
    ) -> None:
        """``api`` (the official client) makes the typed writes; ``kube`` carries the watches, by default
        over ``api``'s own connection (same credentials, same Impersonate-User)."""
        self.api = api
        self.s = settings
        self.tls = tls or keylime.KeylimeTls.from_dir(settings.keylime_ca_dir)
        self.keylime = keylime_client or keylime.KeylimeClient(
            registrar_url=settings.registrar_url, verifier_url=settings.verifier_url, tls=self.tls,
            more_verifiers=settings.more_verifiers,
        )
        self.edgenodes = crd.EdgeNodes(api)
        self.access = revoke.Access(api)
        self.certs = k8s.CertificatesV1Api(api)
        self.ek_store = ekcheck.load_ca_store(settings.ek_ca_store)
        self.approver = csr_mod.Approver(
            registrar_agent=self.keylime.registrar_agent,
            verifier_state=self.keylime.agent_state,
            check_ek=self.check_ek,
            max_lifetime=settings.credential_lifetime,
            max_binding_age=settings.max_binding_age,
        )
        self.queue: DelayQueue[str] = DelayQueue()
        self.kube = kube or KubeApi(ClientTransport(api))
        watch_options: dict[str, Any] = dict(
            timeout_seconds=(settings.watch_timeout, settings.watch_timeout * 3 // 2),
            backoff=(0.5, 10.0),
            relist_interval=settings.resync_interval,
        )
        self.edgenode_watch = SharedWatch(self.kube, crd.GROUP, crd.VERSION, crd.PLURAL, **watch_options)
        self.edgenode_watch.subscribe(Everything(), lambda ev: self._queue_event("node", ev))
        self.csr_watch = SharedWatch(
            self.kube, "certificates.k8s.io", "v1", "certificatesigningrequests", **watch_options
        )
        self.csr_watch.subscribe(Everything(), lambda ev: self._queue_event("csr", ev))
        self.stop_event = threading.Event()
        self.memory: dict[str, _Memory] = defaultdict(_Memory)
        """Per-node facts ("node/NAME"), dropped when the EdgeNode is deleted."""
        self.failures: dict[str, int] = {}
        """Consecutive failed reconciles per key, dropped at the next success (bounds the backoff)."""
        self.locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
        self.snapshot: _Snapshot | None = None
        """The verifier poller's latest bulk view."""
        self.elector = leader.LeaseElector(
            api,
            name=settings.lease_name,
            namespace=settings.lease_namespace,
            identity=settings.identity,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
            on_started=self._on_started_leading,
        )
        self.receiver = webhook.RevocationReceiver(
            revocation_key=self._revocation_key,
            on_revocation=self.on_revocation,
            active=self.elector.is_leader,
        )
        self.webhook: webhook.WebhookServer | None = None
        self.join_server: joinserver.JoinServer | None = None
        self.signing_key = signingkey.SigningKey(api, settings.lease_namespace, settings.signing_secret)
        """Signs the join endpoint's revocation answers; push-mode devices get its certificate."""
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        """Failed reconciles ("key: error"), for tests and diagnostics; the last 100 are kept."""
        self.notifications: deque[tuple[float, str, str]] = deque(maxlen=HISTORY)
        """(time, event, node) of the latest verified webhook notifications, as received."""
        self.auto_approval: list[str] = []
        """ClusterRoleBindings that approve kubelet certificates without this controller (seen on leading)."""
        self.missing_rights: list[selfcheck.Right] = []
        """CSR rights the API server said this controller lacks (empty once they are granted)."""
        self.actions: deque[tuple[float, str, str]] = deque(maxlen=HISTORY)
        """(time, action, node) of the latest state-changing actions, for tests and the bench."""

    # ------------------------------------------------------------ life cycle
    def start(self) -> Controller:
        if self.s.install_crd:
            crd.install(self.api)
        if self.s.webhook_port is not None:
            ctx = None
            if self.s.webhook_cert is not None and self.s.webhook_key is not None:
                ctx = webhook.server_context(
                    self.s.webhook_cert, self.s.webhook_key, self.s.webhook_client_ca
                )
            self.webhook = webhook.WebhookServer(
                self.receiver, self.s.webhook_host, self.s.webhook_port, ctx
            ).start()
        if self.s.join_port is not None:
            join_ctx = None
            if self.s.webhook_cert is not None and self.s.webhook_key is not None:
                join_ctx = webhook.server_context(self.s.webhook_cert, self.s.webhook_key, None)
            self.join_server = joinserver.JoinServer(
                self.join_answer, self.s.join_host, self.s.join_port, join_ctx
            ).start()
        self.elector.start()
        self.edgenode_watch.start()
        if self._csr_rights_granted():
            self.csr_watch.start()
        else:
            t = threading.Thread(
                target=self._await_csr_rights, name=f"{self.s.identity}-csr-rights", daemon=True
            )
            t.start()
            self._threads.append(t)
        for k in range(max(1, self.s.workers)):
            t = threading.Thread(target=self._worker, name=f"{self.s.identity}-worker-{k}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._poll_verifier, name=f"{self.s.identity}-verifier-poll", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _csr_rights_granted(self) -> bool:
        """Whether this controller may watch and approve CSRs; when not, says so once (log line and Event).

        It goes on without them rather than exit: attestation and revocation need no CSR right, and an exiting
        controller would stop revoking the devices already enrolled (a missing grant must fail closed, not
        open). Without the rights no credential is approved. Unknown (no answer now) counts as granted: the
        CSR watch then reports its own failures.
        """
        try:
            lacking = selfcheck.missing(self.api, selfcheck.CSR_RIGHTS)
        except EdgeAgentError as e:
            log.warning("cannot check this controller's rights on CSRs (%s); watching them anyway", e)
            return True
        if not lacking:
            return True
        self.missing_rights = lacking
        message = (
            f"no RBAC for CSRs: this controller may not {selfcheck.describe(lacking)}, so it approves no "
            f"node credential until its ClusterRole grants that (deploy/rbac.yaml); checking again every "
            f"{self.s.rights_recheck_interval:g} s"
        )
        log.error("%s", message)
        about = self.s.self_ref or selfcheck.SelfRef.lease(self.s.lease_name, self.s.lease_namespace)
        component = self.access.component
        selfcheck.warn(self.api, about, reason="MissingRBAC", message=message, component=component)
        return False

    def _await_csr_rights(self) -> None:
        """The ``IDENTITY-csr-rights`` thread: asks again until the rights are granted, then starts the CSR
        watch (its first list queues every pending CSR). Quiet meanwhile: the gap was reported once."""
        while not self.stop_event.wait(self.s.rights_recheck_interval):
            try:
                if selfcheck.missing(self.api, selfcheck.CSR_RIGHTS):
                    continue
            except EdgeAgentError:
                continue
            self.missing_rights = []
            # warning, like the gap it ends: shown at the default level, next to the error line
            log.warning("RBAC for CSRs granted now: watching and approving CSRs")
            self.csr_watch.start()  # a start racing stop() ends at once: the watch's stop flag is set
            return

    def stop(self) -> None:
        self.stop_event.set()
        self.queue.close()
        if self.webhook is not None:
            self.webhook.stop()
        if self.join_server is not None:
            self.join_server.stop()
        self.elector.stop()
        self.edgenode_watch.stop()
        self.csr_watch.stop()
        for t in self._threads:
            t.join(timeout=5)

    def health(self) -> dict[str, dict[str, Any]]:
        """Each watch: healthy (listed, last request accepted, thread running) and its stats."""
        return {
            w.kind: {"healthy": w.healthy and w.alive, "resource_version": w.resource_version}
            | asdict(w.stats)
            for w in (self.edgenode_watch, self.csr_watch)
        }

    def run_forever(self) -> None:
        """Runs until SIGINT/SIGTERM (the CLI); exits non-zero through the CLI if startup fails."""
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()

    def _on_started_leading(self) -> None:
        log.info("%s is the leader", self.s.identity)
        # Every EdgeNode the watch knows, from its memory: a follower dropped nothing, but its keys may be
        # waiting out their backoff. Before the watch's first list this is empty; that list queues them all.
        for _, name in self.edgenode_watch.known():
            self.queue.add(f"node/{name}")
        try:
            self._ensure_cluster_objects()
        except EdgeAgentError as e:  # the API server may just be restarting; the reconciles retry
            log.warning("on becoming leader: %s", e)

    def _ensure_cluster_objects(self) -> None:
        rbac = k8s.RbacAuthorizationV1Api(self.api)
        role = revoke.NODE_ROLE
        if kube_errors.call(f"read ClusterRole {role}", rbac.read_cluster_role, role, ok=(404,)) is None:
            self.access.ensure_role()
        binding = bootstrap.BOOTSTRAPPER_BINDING
        read_binding = rbac.read_cluster_role_binding
        if kube_errors.call(f"read {binding}", read_binding, binding, ok=(404,)) is None:
            bootstrap.ensure_rbac(self.api)
        try:
            self.auto_approval = csr_mod.auto_approval_bindings(self.api)
        except EdgeAgentError as e:
            log.warning("cannot check for other approvers of kubelet certificates: %s", e)
        if self.auto_approval:
            log.warning(
                "kubelet client certificates are also approved without attestation through %s (csrapproving "
                "in kube-controller-manager): delete these bindings, or run it with "
                "--controllers=*,-csrapproving",
                ", ".join(self.auto_approval))

    # ------------------------------------------------------------ watches
    def _queue_event(self, kind: str, ev: Event) -> None:
        """A watch event (on a watch thread): the object's key is due now."""
        if ev.name:
            self.queue.add(f"{kind}/{ev.name}")

    # ------------------------------------------------------------ worker
    def _worker(self) -> None:
        while not self.stop_event.is_set():
            key = self.queue.get(self.stop_event)
            if key is None:
                return
            if not self.elector.is_leader():
                self.queue.add(key, 1.0)
                continue
            kind, _, name = key.partition("/")
            try:
                delay = self.reconcile_node(name) if kind == "node" else self.reconcile_csr(name)
                self.failures.pop(key, None)
            except Exception as e:  # EdgeAgentError, or the client's connection errors when the API is down
                failures = self.failures[key] = self.failures.get(key, 0) + 1
                self.errors = [*self.errors[-99:], f"{key}: {e}"]
                delay = min(0.5 * 2 ** (failures - 1), 30.0)
                log.warning(
                    "%s: %s (retry in %.1f s)", key, e if isinstance(e, EdgeAgentError) else repr(e), delay
                )
            if delay is not None:
                self.queue.add(key, delay)

    # ------------------------------------------------------------ verifier poll
    def _poll_verifier(self) -> None:
        """Every ``poll_interval`` while leading: `poll_verifier_once` (see the module's threads)."""
        failing = False
        while not self.stop_event.wait(self.s.poll_interval):
            if not self.elector.is_leader():
                continue
            try:
                self.poll_verifier_once()
            except EdgeAgentError as e:
                if not failing:
                    log.warning("verifier poll: %s (the webhook still revokes; retrying)", e)
                failing = True
                continue
            failing = False

    def poll_verifier_once(self) -> list[str]:
        """One bulk GET of the verifier's agents; queues (and returns) the attested nodes whose state
        changed, that the verifier lost, or whose lastAttestation is due. Nothing per device is asked."""
        asked = time.monotonic()  # the snapshot is as old as its request, not its answer
        states = self.keylime.agent_states()
        previous, self.snapshot = self.snapshot, _Snapshot(asked, states)
        queued = []
        for key, mem in list(self.memory.items()):
            if not (mem.attested and mem.uuid):
                continue
            now, before = states.get(mem.uuid), previous.states.get(mem.uuid) if previous else None
            changed = (now is None or before is None or now.failed != before.failed
                       or now.operational_state != before.operational_state
                       or now.attestation_status != before.attestation_status)
            if changed or asked - mem.last_status_write >= self.s.status_interval:
                self.queue.add(key)
                queued.append(key)
        return queued

    def _verifier_state(self, uuid: str, mem: _Memory, *,
                        fresh: bool = False) -> keylime.VerifierAgent | None:
        """The agent's state: from the poller's snapshot when it has the agent and is no older than what
        this node last acted on (never going back in time), else (or when ``fresh``) asked now."""
        snap = self.snapshot
        if not fresh and snap is not None and uuid in snap.states and snap.at >= mem.state_seen_at:
            mem.state_seen_at = snap.at
            return snap.states[uuid]
        asked = time.monotonic()
        state = self.keylime.agent_state(uuid)
        mem.state_seen_at = asked
        return state

    def _record(self, action: str, node: str) -> None:
        self.actions.append((time.time(), action, node))
        log.info("%s %s", action, node)

    # ------------------------------------------------------------ EdgeNodes
    def check_ek(self, en: crd.EdgeNode, agent: keylime.RegistrarAgent) -> ekcheck.EkVerdict:
        return ekcheck.check(
            ek_tpm=agent.ek_tpm,
            ekcert_der=agent.ekcert,
            store=self.ek_store,
            pin_cert_sha256=en.spec.ek_cert_sha256,
            pin_public_sha256=en.spec.ek_public_sha256,
            require_ek_cert=self.s.require_ek_cert,
        )

    def reconcile_node(self, name: str) -> float | None:
        """One step of the node's life cycle; returns when to look again (None: wait for a watch event)."""
        with self.locks[name]:
            en = self.edgenodes.get(name)
            mem = self.memory[f"node/{name}"]
            if en is None:  # deleted: no grants, and the verifier stops polling a device nobody pins
                self.access.withdraw(name)
                if mem.uuid:
                    self.keylime.delete_agent(mem.uuid)
                    mem.uuid = None
                self.memory.pop(f"node/{name}", None)  # nothing of a deleted node stays behind
                return None
            mem.uuid = en.spec.agent_uuid
            mem.attested = en.phase in ("Attested", "Enrolled")
            if not en.status.get("delivered"):
                return self._enroll_push(en) if en.spec.mode == "push" else self._enroll(en)
            # enrolling or unattested: asked now (the snapshot may be a poll period old)
            state = self._verifier_state(en.spec.agent_uuid, mem, fresh=not mem.attested)
            if state is None:  # the verifier lost the agent (deleted, database reset): enroll again
                if en.phase != "Unattested":
                    en = self._revoke(en, "VerifierLostAgent", "the verifier no longer polls this agent")
                self.edgenodes.patch_status(name, {"delivered": False})
                return 0.0
            if en.phase in ("Pending", "Attested", "Enrolled"):
                if state.failed:
                    self._revoke(
                        en, "QuoteFailed", f"verifier reports operational_state {state.operational_state}"
                    )
                    mem.attested = False
                    return self.s.pending_interval
                if state.good:
                    self._attested(en, state, mem)
                    mem.attested = True
                    if en.spec.mode == "push" and mem.sealed is None:
                        self._seal(en, mem)
                    return None  # attested: the verifier poller and the webhook look after it now
                return self.s.pending_interval
            # Unattested: have the verifier look again, restore once a quote after that passes
            # restore only on a good quote taken after the revocation (and after our last reactivation)
            floor = int(max(mem.revoked_at, mem.reactivated_at))
            if state.good and state.last_successful_attestation > floor:
                self.access.restore(en, enrolled=_credential_alive(en))
                self._record("restore", name)
                if en.spec.mode == "push":
                    self._seal(en, mem)  # fresh join material (a new bootstrap token) for the device
                else:
                    self._redeliver(en, mem)
                mem.attested = True
                return None
            if (state.failed and en.spec.mode != "push"
                    and time.time() - mem.reactivated_at > self.s.reactivate_interval):
                # push agents are not reactivated: the verifier accepts their next evidence anyway
                self.keylime.reactivate_agent(en.spec.agent_uuid)
                mem.reactivated_at = time.time()
            # Unattested: looked at again often enough to restore within about a second of a good quote
            # (the poller does not watch it), but not at the enrolling pace: a fleet may have many.
            return min(self.s.poll_interval, self.s.reactivate_interval)

    def _attested(self, en: crd.EdgeNode, state: keylime.VerifierAgent, mem: _Memory) -> None:
        if en.phase == "Pending":
            self.access.grant(en.name)
            self.edgenodes.patch_status(
                en.name,
                {
                    "phase": "Attested",
                    "attested": True,
                    "lastAttestation": crd.now_rfc3339(),
                    "verifierState": state.operational_state,
                    "message": "Keylime's verifier accepts its quotes",
                    "conditions": crd.merge_conditions(
                        en.status.get("conditions"),
                        crd.condition(
                            "Attested",
                            True,
                            "QuotesVerified",
                            "Keylime's verifier accepts the device's quotes",
                        ),
                    ),
                },
            )
            self.access.event(en, reason="Attested", message="first good quote; join material unlocked")
            self._record("attested", en.name)
            mem.last_status_write = time.monotonic()
        elif time.monotonic() - mem.last_status_write >= self.s.status_interval:
            self.edgenodes.patch_status(
                en.name, {"lastAttestation": crd.now_rfc3339(), "verifierState": state.operational_state}
            )
            mem.last_status_write = time.monotonic()

    def _registered_and_trusted(
        self, en: crd.EdgeNode
    ) -> tuple[keylime.RegistrarAgent, ekcheck.EkVerdict] | float:
        """The registrar's activated agent and the verdict on its EK, or when to look again: not registered
        yet (the enrolling pace), or its EK refused (said once, in the status, an Event and the log)."""
        agent = self.keylime.registrar_agent(en.spec.agent_uuid)
        if agent is None:
            self._status_message(en, "waiting for the agent to register and activate its AK")
            return self.s.pending_interval
        try:
            return agent, self.check_ek(en, agent)
        except ekcheck.EkRejected as e:
            if en.status.get("message") != str(e):
                self.edgenodes.patch_status(en.name, {
                    "phase": "Pending", "attested": False, "message": str(e),
                    "conditions": crd.merge_conditions(
                        en.status.get("conditions"), crd.condition("EKTrusted", False, "EKRejected", str(e))),
                })
                self.access.event(en, reason="EKRejected", message=str(e), warning=True)
                self._record("ek-rejected", en.name)
            return 30.0

    def _enroll(self, en: crd.EdgeNode) -> float:
        """Pending, nothing delivered: check the TPM, add it to the verifier, deliver U and the payload."""
        checked = self._registered_and_trusted(en)
        if not isinstance(checked, tuple):
            return checked
        agent, verdict = checked
        client = tenant.AgentClient(agent, self.tls, address=en.spec.agent_address)
        version = client.api_version()
        policy = en.spec.tpm_policy or en.status.get("trustedPolicy")
        if not policy:  # trust on first use: the agent's PCR 23 as its first verified quote shows it
            values = client.pcr_values(BINDING_PCRS)
            policy = {str(i): [v.hex()] for i, v in values.items()}
        verifier_policy = {**policy, **boot_policy(en.spec)}
        self.keylime.delete_agent(en.spec.agent_uuid)  # a leftover from an earlier attempt has another V
        revocation_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = bootstrap.create(self.api, node_name=en.name, ttl_seconds=self.s.token_ttl)
        revocation_cert = tenant.revocation_certificate(revocation_key, en.name)
        material = tenant.JoinMaterial(
            self.s.api_server_url, self.s.api_server_ca_pem, token.token, en.name, revocation_cert
        )
        key = tenant.SplitKey.fresh()
        host, port = client.address
        self.keylime.add_agent(
            en.spec.agent_uuid,
            agent=agent,
            v=key.v,
            ip=host,
            port=port,
            tpm_policy=verifier_policy,
            mb_policy=json.dumps(en.spec.mb_refstate, sort_keys=True) if en.spec.mb_refstate else None,
            revocation_key_pem=revocation_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            agent_api_version=version,
            metadata={"edgenode": en.name},
        )
        nk = client.identity_quote()
        client.post_ukey(nk, key, material.to_bytes())
        public_pem = (
            revocation_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        mem = self.memory[f"node/{en.name}"]
        mem.revocation_key = revocation_key.public_key()
        mem.revocation_private = revocation_key  # signs the revocation this controller forwards to the device
        mem.split_key, mem.revocation_cert_pem = key, revocation_cert
        self.edgenodes.patch_status(
            en.name,
            {
                "phase": "Pending",
                "attested": False,
                "delivered": True,
                "bootstrapTokenID": token.token_id,
                "revocationPublicKey": public_pem,
                "trustedPolicy": policy,
                "message": "added to the verifier; join material delivered, openable after a good quote",
                "conditions": crd.merge_conditions(
                    en.status.get("conditions"),
                    crd.condition(
                        "EKTrusted", True, "EKVerified", f"EK certified by {verdict.issuer or 'pin'}"
                    ),
                ),
            },
        )
        self._record("delivered", en.name)
        return 0.1

    def _redeliver(self, en: crd.EdgeNode, mem: _Memory) -> None:
        """Fresh join material after a restore: a device that dropped its credential on revocation needs a
        new bootstrap token to get one again. Sent under the K of the last delivery (a new U share and
        payload for the V the device already holds), so the verifier's state is left alone. Without K (the
        controller restarted since) nothing is sent: re-enrolling is then set status.delivered=false."""
        if mem.split_key is None:
            log.info("no K for %s since a restart: no new join material after the restore", en.name)
            return
        try:
            agent = self.keylime.registrar_agent(en.spec.agent_uuid)
            if agent is None:
                return
            client = tenant.AgentClient(agent, self.tls, address=en.spec.agent_address)
            token = bootstrap.create(self.api, node_name=en.name, ttl_seconds=self.s.token_ttl)
            material = tenant.JoinMaterial(
                self.s.api_server_url, self.s.api_server_ca_pem, token.token, en.name, mem.revocation_cert_pem
            )
            client.post_ukey(client.identity_quote(), mem.split_key, material.to_bytes())
            self.edgenodes.patch_status(en.name, {"bootstrapTokenID": token.token_id})
            self._record("redelivered", en.name)
        except (EdgeAgentError, ClusterError) as e:
            log.warning("cannot send %s new join material after the restore: %s", en.name, e)

    # ------------------------------------------------------------ push mode
    def _enroll_push(self, en: crd.EdgeNode) -> float:
        """Pending push-mode device: check the TPM and add it to the push-mode verifier. Nothing is sent to
        the device (nothing can reach it); its join material is sealed once the verifier passes it."""
        checked = self._registered_and_trusted(en)
        if not isinstance(checked, tuple):
            return checked
        agent, verdict = checked
        if not en.spec.tpm_policy:
            # No trust on first use: nothing can ask a device behind NAT for its PCRs before it is trusted.
            message = ("push mode needs spec.tpmPolicy (the PCR 23 value `edgeagent measure` reports): "
                       "the controller cannot ask an unreachable device for it")
            self._status_message(en, message)
            return 30.0
        verifier_policy = {**en.spec.tpm_policy, **boot_policy(en.spec)}
        self.keylime.delete_agent(en.spec.agent_uuid)
        revocation_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keylime.add_agent(
            en.spec.agent_uuid,
            agent=agent,
            v=tenant.SplitKey.fresh().v,  # unused in push mode; Keylime's schema still wants one
            ip=None,
            port=None,
            tpm_policy=verifier_policy,
            mb_policy=json.dumps(en.spec.mb_refstate, sort_keys=True) if en.spec.mb_refstate else None,
            revocation_key_pem=revocation_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            agent_api_version="2.1",
            metadata={"edgenode": en.name, "mode": "push"},
        )
        mem = self.memory[f"node/{en.name}"]
        mem.revocation_key = revocation_key.public_key()  # Keylime's own notifications are signed with it
        mem.sealed = None
        public_pem = mem.revocation_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.edgenodes.patch_status(en.name, {
            "phase": "Pending", "attested": False, "delivered": True,
            "revocationPublicKey": public_pem,
            "trustedPolicy": en.spec.tpm_policy,
            "message": "added to the push-mode verifier; join material is sealed to its TPM once it attests",
            "conditions": crd.merge_conditions(
                en.status.get("conditions"),
                crd.condition("EKTrusted", True, "EKVerified", f"EK certified by {verdict.issuer or 'pin'}")),
        })
        self._record("added-push", en.name)
        # Sealed now, released by join_answer only once the verifier passes the device: saves the device a
        # round of waiting for this controller to notice the pass before it can get its credential.
        self._seal(en, mem)
        return self.s.pending_interval

    def _seal(self, en: crd.EdgeNode, mem: _Memory) -> None:
        """Join material for this attested period (a fresh bootstrap token), sealed with MakeCredential to
        the registrar's EK of the device for its registered AK's name."""
        agent = self.keylime.registrar_agent(en.spec.agent_uuid)
        if agent is None:
            return
        # The certificate of the controller's persistent answer key (not of the enrollment's key, which
        # Keylime holds): revocation answers stay verifiable on the device across controller restarts.
        revocation_cert = tenant.revocation_certificate(self.signing_key.get(), en.name)
        token = bootstrap.create(self.api, node_name=en.name, ttl_seconds=self.s.token_ttl)
        material = tenant.JoinMaterial(self.s.api_server_url, self.s.api_server_ca_pem, token.token, en.name,
                                       revocation_cert)
        mem.sealed = push.seal(agent_id=en.spec.agent_uuid, ek_public=agent.ek_tpm,
                               ak_name=tpm_attest.object_name(agent.aik_tpm), material=material.to_bytes())
        mem.sealed_at = time.monotonic()
        self.edgenodes.patch_status(en.name, {"bootstrapTokenID": token.token_id})
        self._record("sealed", en.name)

    def join_answer(self, agent_id: str) -> joinserver.Answer:
        """What the join endpoint tells a push-mode device (see `joinserver`); asks the verifier each time,
        so material goes out only while the verifier passes the device now."""
        if not self.elector.is_leader():
            return 503, {"state": "follower"}
        name = self.node_of(agent_id)
        if name is None:
            return 404, {"state": "unknown", "detail": f"no push-mode EdgeNode pins agent {agent_id}"}
        with self.locks[name]:
            # Read under the node's lock: a reconcile adding, revoking or restoring the node holds it, so
            # the answer reflects what that reconcile wrote (read before it, a device was told "not added"
            # or "revoked" one poll longer than true).
            en = self.edgenodes.get(name)
            if en is None or en.spec.mode != "push":
                return 404, {"state": "unknown", "detail": f"no push-mode EdgeNode pins agent {agent_id}"}
            # A device asks right after the verifier accepted its evidence, which the verifier then checks
            # asynchronously: look at the verdict shortly (no webhook in push mode; this keeps tamper ->
            # denied near one attestation interval without polling every push-mode node faster). A device
            # not added yet asks right after registering: add it now rather than at the next pending poll.
            delay = PUSH_VERDICT_DELAY if en.status.get("delivered") else 0.0
            self.queue.add(f"node/{name}", delay)
            mem = self.memory[f"node/{name}"]
            if en.phase == "Unattested":
                msg = {"type": "revocation", "agent_id": agent_id, "event_id": "edgeagent.unattested",
                       "node": name, "time": int(time.time())}
                revocation = protocol.sign_revocation(msg, self.signing_key.get())
                return 403, {"state": "revoked", "revocation": revocation,
                             "detail": en.status.get("message") or "attestation failed"}
            state = self.keylime.agent_state(agent_id)
            # Pending counts too: the verifier's word, asked now, is what releases the material (the
            # reconcile that marks the EdgeNode Attested may come a moment later).
            if state is None or not state.good or mem.sealed is None:
                status = state.attestation_status if state is not None else "not added"
                added = state is not None and bool(en.status.get("delivered"))
                return 404, {"state": "pending", "added": added,
                             "detail": f"verifier status {status}; phase {en.phase}"}
            if time.monotonic() - mem.sealed_at > self.s.token_ttl / 2:
                self._seal(en, mem)  # a fresh bootstrap token: the sealed one may lapse before it is used
                assert mem.sealed is not None
            return 200, mem.sealed.to_json()

    def _status_message(self, en: crd.EdgeNode, message: str) -> None:
        if en.status.get("message") != message or "phase" not in en.status:
            self.edgenodes.patch_status(en.name, {"phase": en.phase, "attested": False, "message": message})

    # ------------------------------------------------------------ revocation
    def _revocation_key(self, agent_id: str) -> rsa.RSAPublicKey | None:
        name = self.node_of(agent_id)
        if name is None:
            return None
        mem = self.memory[f"node/{name}"]
        if mem.revocation_key is None:
            en = self.edgenodes.get(name)
            pem = en.status.get("revocationPublicKey") if en else None
            mem.revocation_key = webhook.load_public_key(pem) if pem else None
        return mem.revocation_key

    def node_of(self, agent_id: str) -> str | None:
        for key, mem in list(self.memory.items()):
            if key.startswith("node/") and mem.uuid == agent_id:
                return key.removeprefix("node/")
        try:
            nodes = self.edgenodes.list()[0]
        except EdgeAgentError:
            return None
        for en in nodes:
            self.memory[f"node/{en.name}"].uuid = en.spec.agent_uuid
        return next((en.name for en in nodes if en.spec.agent_uuid == agent_id), None)

    def on_revocation(self, agent_id: str, msg: dict[str, Any]) -> None:
        """A verified webhook notification: revoke now, without asking the verifier first.

        Only the verifier holds the revocation key of this enrollment, so the signature is its word; and it
        sends before its database shows the failure, so asking back would only delay (or miss) revocation.
        A stale retry arriving after a restore costs one short revocation: the next reconcile restores the
        node as soon as the verifier reports a good quote newer than the revocation.
        """
        received = time.time()
        name = self.node_of(agent_id)
        if name is None:
            return
        self.notifications.append((received, str(msg.get("event_id") or msg.get("type")), name))
        with self.locks[name]:
            en = self.edgenodes.get(name)
            if en is None or en.phase == "Unattested":
                return
            what = msg.get("event_id") or msg.get("type") or "revocation"
            self._revoke(en, "RevocationNotified", f"Keylime revocation notification: {what}")
        self.queue.add(f"node/{name}", self.s.pending_interval)

    def _revoke(self, en: crd.EdgeNode, reason: str, message: str) -> crd.EdgeNode:
        mem = self.memory[f"node/{en.name}"]
        mem.revoked_at = time.time()
        mem.sealed = None  # the join endpoint stops handing out material
        updated = self.access.revoke(en, reason, message)
        self._record("revoke", en.name)
        if en.spec.mode != "push" and mem.revocation_private is not None:
            threading.Thread(target=self._tell_device, args=(en, mem.revocation_private, reason),
                             name=f"{self.s.identity}-tell-{en.name}", daemon=True).start()
        return updated

    def _tell_device(self, en: crd.EdgeNode, key: rsa.RSAPrivateKey, reason: str) -> None:
        """Pull mode (a thread of its own, best effort): the revoked device, and only it, is told, signed
        with its enrollment's revocation key, so it drops its credential. Keylime's "agent" notifier does
        the same by telling every agent it polls of every revocation: N x N requests when a fleet is
        revoked at once (`edgeagent bench fleet`), so at scale it can be switched off."""
        msg = {"type": "revocation", "agent_id": en.spec.agent_uuid, "event_id": f"edgeagent.{reason}",
               "node": en.name, "time": int(time.time())}
        try:
            agent = self.keylime.registrar_agent(en.spec.agent_uuid)
            if agent is None:
                return
            client = tenant.AgentClient(agent, self.tls, address=en.spec.agent_address, timeout=5.0)
            client.post_revocation(protocol.sign_revocation(msg, key))
            self._record("told-device", en.name)
        except (EdgeAgentError, ClusterError) as e:
            log.info("could not tell %s of its revocation (it learns at its next renewal): %s", en.name, e)

    # ------------------------------------------------------------ CSRs
    def reconcile_csr(self, name: str) -> float | None:
        read = self.certs.read_certificate_signing_request
        obj = kube_errors.call(f"read CSR {name}", read, name, ok=(404,))
        if obj is None:
            return None
        view = csr_mod.CsrView.from_object(obj)
        if view.signer != csr_mod.KUBELET_SIGNER:
            return None
        node = view.subject_node()
        if node is None:
            return None
        conditions = {c.type for c in (obj.status.conditions or [])} if obj.status else set()
        with self.locks[node]:
            en = self.edgenodes.get(node)
            if en is None:
                return None  # not an edgeagent node: another approver's business
            if "Approved" in conditions:
                return self._issued(en, obj)
            if conditions & {"Denied", "Failed"}:
                return None
            if en.phase in ("Pending", "Unattested") and en.status.get("delivered"):
                # The device asks as soon as K opened its payload, i.e. right after the verifier's first
                # good quote (or the good quote that restores it): bring the EdgeNode up to date before
                # judging, instead of racing the reconcile that would restore it a moment later.
                self.reconcile_node(node)
                en = self.edgenodes.get(node) or en
            decision = self.approver.decide(view, en)
            obj.status = obj.status or k8s.V1CertificateSigningRequestStatus()
            obj.status.conditions = [
                *(obj.status.conditions or []),
                k8s.V1CertificateSigningRequestCondition(
                    type="Approved" if decision.approve else "Denied",
                    status="True",
                    reason=decision.reason,
                    message=decision.message[:1000],
                ),
            ]
            approve = self.certs.replace_certificate_signing_request_approval
            kube_errors.call(f"approve/deny CSR {name}", approve, name, obj)
            self._record("approve" if decision.approve else f"deny:{decision.reason}", node)
            if decision.approve:
                self.edgenodes.patch_status(
                    node, {"bindingTime": decision.nonce_time, "bindingNonce": decision.nonce}
                )
            else:
                self.access.event(en, reason="CSRDenied", message=f"{name}: {decision.message}", warning=True)
            return 0.5 if decision.approve else None

    def _issued(self, en: crd.EdgeNode, obj: Any) -> float | None:
        cert_b64 = obj.status.certificate if obj.status else None
        if not cert_b64:
            return 0.5  # approved, kube-controller-manager has not signed yet
        raw = base64.b64decode(cert_b64) if isinstance(cert_b64, str) else bytes(cert_b64)
        try:
            expiry = x509.load_pem_x509_certificate(raw).not_valid_after_utc.timestamp()
        except ValueError:
            return None
        current = en.status.get("credentialExpiry")
        stamp = crd.now_rfc3339(expiry)
        newer = current is None or stamp > current
        patch: dict[str, Any] = {}
        if newer:
            patch["credentialExpiry"] = stamp
            if en.phase in ("Attested", "Pending") and en.status.get("attested"):
                patch["phase"] = "Enrolled"
        # Single use: the bootstrap token that asked for this certificate gets no second one (the approver
        # takes a bootstrap requester only while it is status.bootstrapTokenID). It is not deleted: the
        # device reads this certificate with it, and it can only see the certificate after this point, so a
        # deletion here raced that read. The API server's 10 s token cache usually hid it; a certificate
        # signed later than that after the token's first use (kube-controller-manager catching up after an
        # API server restart) left the device with 401 and no certificate. The token stops authenticating
        # at its expiration (Settings.token_ttl), when the tokencleaner deletes it. Only that token is
        # spent, not a newer one sealed since (a relist hands old CSRs here again).
        spent = bootstrap.token_id_of(obj.spec.username if obj.spec else None)
        if spent is not None and spent == en.status.get("bootstrapTokenID"):
            patch["bootstrapTokenID"] = None  # merge patch: the field is removed
        if patch:
            self.edgenodes.patch_status(en.name, patch)
        if newer:
            self.access.event(en, reason="CredentialIssued", message=f"node certificate valid until {stamp}")
            self._record("issued", en.name)
        return None


def boot_policy(spec: crd.EdgeNodeSpec) -> dict[str, list[str]]:
    """The EdgeNode's measured-boot reference as tpm_policy entries (PCRs 0-7 only; ConfigError otherwise)."""
    out: dict[str, list[str]] = {}
    for pcr, values in (spec.boot_pcrs or {}).items():
        if not pcr.isdigit() or not 0 <= int(pcr) <= 7:
            raise ConfigError(f"spec.bootPCRs names PCR {pcr!r}: only the firmware PCRs 0-7 belong there")
        out[str(int(pcr))] = [v.lower() for v in values]
    return out


def _credential_alive(en: crd.EdgeNode) -> bool:
    expiry = en.status.get("credentialExpiry")
    return isinstance(expiry, str) and expiry > crd.now_rfc3339()
