"""The attestation controller: EdgeNodes in, Keylime driven, node credentials approved or withdrawn.

One worker thread reconciles one key at a time ("node/NAME" or "csr/NAME") from a delay queue fed by two
watches (EdgeNodes, CSRs) and by its own requeues; a per-node lock serialises it with the webhook thread,
which revokes directly so a notification takes effect in milliseconds. Nothing acts unless this replica holds
the Lease (`leader.LeaseElector`).

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
import heapq
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from edgeagent.cloud import bootstrap, crd, ekcheck, keylime, leader, revoke, tenant, webhook
from edgeagent.cloud import csr as csr_mod
from edgeagent.errors import ClusterError, ConfigError, EdgeAgentError

log = logging.getLogger(__name__)

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
    credential_lifetime: int = 86400
    token_ttl: int = 600
    max_binding_age: float = 300.0
    poll_interval: float = 2.0
    """Seconds between two verifier checks of an attested node (the fallback behind the webhook)."""
    pending_interval: float = 0.2
    """Seconds between two checks while a node enrolls (waiting for registration or the first quote)."""
    reactivate_interval: float = 5.0
    """Seconds between two reactivations of a failed agent (each makes the verifier quote it again)."""
    status_interval: float = 10.0
    """Least seconds between two lastAttestation updates of one EdgeNode (keeps etcd writes low)."""
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
    install_crd: bool = False


class DelayQueue:
    """Keys due at a time; a key queued twice keeps its earliest due time. Thread-safe."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._cv = threading.Condition()

    def add(self, key: str, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cv:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._cv.notify()

    def get(self, stop: threading.Event) -> str | None:
        with self._cv:
            while not stop.is_set():
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded entries
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                timeout = self._heap[0][0] - time.monotonic() if self._heap else 0.5
                self._cv.wait(min(max(timeout, 0.0), 0.5))
        return None


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


class Controller:
    def __init__(
        self,
        api: k8s.ApiClient,
        settings: Settings,
        *,
        keylime_client: keylime.KeylimeClient | None = None,
        tls: keylime.KeylimeTls | None = None,
    ) -> None:
        self.api = api
        self.s = settings
        self.tls = tls or keylime.KeylimeTls.from_dir(settings.keylime_ca_dir)
        self.keylime = keylime_client or keylime.KeylimeClient(
            registrar_url=settings.registrar_url, verifier_url=settings.verifier_url, tls=self.tls
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
        self.queue = DelayQueue()
        self.stop_event = threading.Event()
        self.memory: dict[str, _Memory] = defaultdict(_Memory)
        self.locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
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
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        """Failed reconciles ("key: error"), for tests and diagnostics; the last 100 are kept."""
        self.notifications: list[tuple[float, str, str]] = []
        """(time, event, node) of every verified webhook notification, as received."""
        self.actions: list[tuple[float, str, str]] = []
        """(time, action, node) of every state-changing action, for tests and the bench."""

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
        self.elector.start()
        for target, name in (
            (self._worker, "worker"),
            (self._watch_edgenodes, "watch-edgenodes"),
            (self._watch_csrs, "watch-csrs"),
        ):
            t = threading.Thread(target=target, name=f"{self.s.identity}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.webhook is not None:
            self.webhook.stop()
        self.elector.stop()
        for t in self._threads:
            t.join(timeout=5)

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
        try:
            self._ensure_cluster_objects()
            for en in self.edgenodes.list()[0]:
                self.queue.add(f"node/{en.name}")
        except Exception as e:  # the watches list again anyway; the API server may just be restarting
            log.warning("on becoming leader: %s", e)

    def _ensure_cluster_objects(self) -> None:
        rbac = k8s.RbacAuthorizationV1Api(self.api)
        try:
            rbac.read_cluster_role(revoke.NODE_ROLE)
        except ApiException as e:
            if e.status != 404:
                raise ClusterError(f"cannot read ClusterRole {revoke.NODE_ROLE}: {e.reason}") from None
            self.access.ensure_role()
        try:
            rbac.read_cluster_role_binding(bootstrap.BOOTSTRAPPER_BINDING)
        except ApiException as e:
            if e.status != 404:
                raise ClusterError(f"cannot read {bootstrap.BOOTSTRAPPER_BINDING}: {e.reason}") from None
            bootstrap.ensure_rbac(self.api)

    # ------------------------------------------------------------ watches
    def _watch_edgenodes(self) -> None:
        custom = k8s.CustomObjectsApi(self.api)
        for obj in self._watch(custom.list_cluster_custom_object, crd.GROUP, crd.VERSION, crd.PLURAL):
            name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
            if name:
                self.queue.add(f"node/{name}")

    def _watch_csrs(self) -> None:
        for obj in self._watch(self.certs.list_certificate_signing_request):
            name = getattr(getattr(obj, "metadata", None), "name", None)
            if name:
                self.queue.add(f"csr/{name}")

    def _watch(self, list_fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """List then watch, forever: reconnects with backoff, relists when the resourceVersion is gone."""
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                listed = list_fn(*args)
                items = listed["items"] if isinstance(listed, dict) else listed.items
                rv = (
                    listed["metadata"]["resourceVersion"]
                    if isinstance(listed, dict)
                    else listed.metadata.resource_version
                )
                yield from items
                w = k8s_watch.Watch()
                for event in w.stream(
                    list_fn, *args, resource_version=rv, timeout_seconds=30, _request_timeout=40
                ):
                    if self.stop_event.is_set():
                        w.stop()
                        return
                    if event.get("type") == "ERROR":
                        break
                    yield event["object"]
                backoff = 0.5
            except Exception as e:  # API server down or restarting: keep watching
                log.info("watch %s: %s", getattr(list_fn, "__name__", list_fn), e)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)

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
            mem = self.memory[key]
            try:
                delay = self.reconcile_node(name) if kind == "node" else self.reconcile_csr(name)
                mem.failures = 0
            except Exception as e:  # EdgeAgentError, or the client's connection errors when the API is down
                mem.failures += 1
                self.errors = [*self.errors[-99:], f"{key}: {e}"]
                delay = min(0.5 * 2 ** (mem.failures - 1), 30.0)
                log.warning(
                    "%s: %s (retry in %.1f s)", key, e if isinstance(e, EdgeAgentError) else repr(e), delay
                )
            if delay is not None:
                self.queue.add(key, delay)

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
                return None
            mem.uuid = en.spec.agent_uuid
            if not en.status.get("delivered"):
                return self._enroll(en)
            state = self.keylime.agent_state(en.spec.agent_uuid)
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
                elif state.good:
                    self._attested(en, state, mem)
                return self.s.pending_interval if en.phase == "Pending" else self.s.poll_interval
            # Unattested: have the verifier look again, restore once a quote after that passes
            # restore only on a good quote taken after the revocation (and after our last reactivation)
            floor = int(max(mem.revoked_at, mem.reactivated_at))
            if state.good and state.last_successful_attestation > floor:
                self.access.restore(en, enrolled=_credential_alive(en))
                self._record("restore", name)
                self._redeliver(en, mem)
            elif state.failed and time.time() - mem.reactivated_at > self.s.reactivate_interval:
                self.keylime.reactivate_agent(en.spec.agent_uuid)
                mem.reactivated_at = time.time()
            return self.s.pending_interval

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

    def _enroll(self, en: crd.EdgeNode) -> float:
        """Pending, nothing delivered: check the TPM, add it to the verifier, deliver U and the payload."""
        agent = self.keylime.registrar_agent(en.spec.agent_uuid)
        if agent is None:
            self._status_message(en, "waiting for the agent to register and activate its AK")
            return self.s.pending_interval
        try:
            verdict = self.check_ek(en, agent)
        except ekcheck.EkRejected as e:
            if en.status.get("message") != str(e):
                self.edgenodes.patch_status(
                    en.name,
                    {
                        "phase": "Pending",
                        "attested": False,
                        "message": str(e),
                        "conditions": crd.merge_conditions(
                            en.status.get("conditions"),
                            crd.condition("EKTrusted", False, "EKRejected", str(e)),
                        ),
                    },
                )
                self.access.event(en, reason="EKRejected", message=str(e), warning=True)
                self._record("ek-rejected", en.name)
            return 30.0
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
        self.memory[f"node/{en.name}"].revoked_at = time.time()
        updated = self.access.revoke(en, reason, message)
        self._record("revoke", en.name)
        return updated

    # ------------------------------------------------------------ CSRs
    def reconcile_csr(self, name: str) -> float | None:
        try:
            obj = self.certs.read_certificate_signing_request(name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise ClusterError(f"cannot read CSR {name}: {e.status} {e.reason}") from None
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
            if en.phase == "Pending" and en.status.get("delivered"):
                # The device asks as soon as K opened its payload, i.e. right after the verifier's first
                # good quote: bring the EdgeNode up to date before judging, instead of racing the poll.
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
            try:
                self.certs.replace_certificate_signing_request_approval(name, obj)
            except ApiException as e:
                raise ClusterError(f"cannot approve/deny CSR {name}: {e.status} {e.reason}") from None
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
        if current is None or stamp > current:
            patch: dict[str, Any] = {"credentialExpiry": stamp}
            if en.phase in ("Attested", "Pending") and en.status.get("attested"):
                patch["phase"] = "Enrolled"
            self.edgenodes.patch_status(en.name, patch)
            self.access.event(en, reason="CredentialIssued", message=f"node certificate valid until {stamp}")
            self._record("issued", en.name)
        token_id = en.status.get("bootstrapTokenID")
        if token_id:  # single use: the device now authenticates with its certificate
            bootstrap.delete(self.api, token_id)
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
    return bool(expiry) and expiry > crd.now_rfc3339()
