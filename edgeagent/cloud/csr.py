"""The CSR approver: a kubelet client certificate only for a device that is attested now and owns the key.

kube-controller-manager signs whatever is approved, so approval is the security decision. A CSR is ours when
it asks the kubelet client signer for CN=system:node:NAME of an existing EdgeNode; every one of those is then
approved or denied (with the reason) by these checks, in this order:
- shape: signer, subject exactly CN=system:node:NAME / O=system:nodes, usages within the kubelet's, a
  lifetime no longer than the configured maximum;
- requester: the bootstrap token issued for this enrollment, or the node itself (renewal with its cert);
- binding: annotation edgeagent.io/tpm-binding is a quote by the AK the registrar lists for the EdgeNode's
  agent (whose EK still matches the pin) over sha256("edgeagent-node-key-v1" || the CSR key's SPKI ||
  nonce); the nonce is fresh (its unix-time prefix within `max_binding_age`) and never used before;
  PCR 23 in it is the attested value;
- attestation: the verifier reports the agent's last quote good *now* (asked at decision time, not cached).
CSRs for names without an EdgeNode are left alone for other approvers.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeagent.cloud.crd import EdgeNode
from edgeagent.cloud.ekcheck import EkRejected
from edgeagent.cloud.keylime import RegistrarAgent, VerifierAgent
from edgeagent.errors import QuoteVerificationError
from edgeagent.kube import errors as kube_errors
from edgeagent.protocol import nodebinding
from edgeagent.tpm.quote import Quote, verify_quote

KUBELET_SIGNER = nodebinding.KUBELET_SIGNER
ALLOWED_USAGES = frozenset({"digital signature", "key encipherment", "client auth"})
NODE_PREFIX = "system:node:"
_NONCE_RE = re.compile(r"^[0-9]{10}[A-Za-z0-9]{10}$")


class Denied(Exception):
    """A CSR fails a check; ``reason`` is a CamelCase condition reason, ``str()`` the message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CsrView:
    """The parts of a certificates.k8s.io/v1 CSR the decision reads."""

    name: str
    signer: str
    request_pem: bytes
    usages: tuple[str, ...]
    username: str
    groups: tuple[str, ...]
    annotations: dict[str, str]
    expiration_seconds: int | None

    @classmethod
    def from_object(cls, obj: object) -> CsrView:
        meta, spec = obj.metadata, obj.spec  # type: ignore[attr-defined]
        return cls(
            name=meta.name,
            signer=spec.signer_name or "",
            request_pem=base64.b64decode(spec.request)
            if isinstance(spec.request, str)
            else bytes(spec.request),
            usages=tuple(spec.usages or ()),
            username=spec.username or "",
            groups=tuple(spec.groups or ()),
            annotations=dict(meta.annotations or {}),
            expiration_seconds=getattr(spec, "expiration_seconds", None),
        )

    def subject_node(self) -> str | None:
        """NAME from CN=system:node:NAME, or None if the request does not parse or names no node."""
        try:
            csr = x509.load_pem_x509_csr(self.request_pem)
        except ValueError:
            return None
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or not str(cns[0].value).startswith(NODE_PREFIX):
            return None
        return str(cns[0].value)[len(NODE_PREFIX) :]


@dataclass(frozen=True)
class Decision:
    approve: bool
    reason: str
    message: str
    node: str
    nonce_time: int | None = None
    nonce: str | None = None


class NonceLedger:
    """Binding nonces already accepted, remembered for as long as they could still pass the age check."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, nonce: str, now: float) -> bool:
        """True the first time ``nonce`` is seen; False for a replay."""
        with self._lock:
            for n, t in list(self._seen.items()):
                if now - t > 2 * self.max_age:
                    del self._seen[n]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


@dataclass
class Approver:
    """Decides one CSR. The I/O it needs is injected so the decision is testable on its own."""

    registrar_agent: Callable[[str], RegistrarAgent | None]
    verifier_state: Callable[[str], VerifierAgent | None]
    check_ek: Callable[[EdgeNode, RegistrarAgent], object]
    max_lifetime: int = 86400
    max_binding_age: float = 300.0
    clock_skew: float = 30.0
    ledger: NonceLedger | None = None

    def __post_init__(self) -> None:
        if self.ledger is None:
            self.ledger = NonceLedger(self.max_binding_age)

    def decide(self, csr: CsrView, edgenode: EdgeNode, *, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        try:
            nonce = self._check(csr, edgenode, now)
        except Denied as d:
            return Decision(False, d.reason, str(d), edgenode.name)
        return Decision(
            True,
            "AttestedDeviceKey",
            f"{edgenode.name} is attested by Keylime and its TPM binds this key",
            edgenode.name,
            nodebinding.nonce_time(nonce),
            nonce,
        )

    # ------------------------------------------------------------ checks
    def _check(self, csr: CsrView, en: EdgeNode, now: float) -> str:
        public_key = self._check_shape(csr, en.name)
        self._check_requester(csr, en)
        if en.phase == "Unattested" or not en.status.get("attested"):
            raise Denied("NotAttested", f"EdgeNode {en.name} is not attested (phase {en.phase})")
        binding = self._parse_binding(csr)
        nonce = self._check_nonce(binding, en, now)
        agent = self.registrar_agent(en.spec.agent_uuid)
        if agent is None:
            raise Denied("UnknownAgent", f"the registrar has no activated agent {en.spec.agent_uuid}")
        try:
            self.check_ek(en, agent)
        except EkRejected as e:
            raise Denied("EKRejected", str(e)) from None
        self._check_quote(binding, agent, public_key, nonce, en)
        state = self.verifier_state(en.spec.agent_uuid)
        if state is None or not state.good:
            st = "not polled" if state is None else f"operational_state {state.operational_state}"
            raise Denied("NotAttested", f"the verifier does not attest {en.name} now ({st})")
        assert self.ledger is not None
        if not self.ledger.claim(nonce, now):
            raise Denied("ReplayedBinding", f"binding nonce {nonce} was already used")
        return nonce

    def _check_shape(self, csr: CsrView, node: str) -> bytes:
        if csr.signer != KUBELET_SIGNER:
            raise Denied("WrongSigner", f"signer {csr.signer!r} is not {KUBELET_SIGNER}")
        try:
            req = x509.load_pem_x509_csr(csr.request_pem)
        except ValueError:
            raise Denied("BadRequest", "spec.request is not a PEM certificate request") from None
        if not req.is_signature_valid:
            raise Denied("BadRequest", "the certificate request's self-signature does not verify")
        cns = [str(a.value) for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        orgs = [str(a.value) for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        if cns != [f"{NODE_PREFIX}{node}"] or orgs != ["system:nodes"] or len(req.subject) != 2:
            raise Denied(
                "BadSubject",
                f"subject {req.subject.rfc4514_string()!r} is not CN=system:node:{node},O=system:nodes",
            )
        if "client auth" not in csr.usages or not set(csr.usages) <= ALLOWED_USAGES:
            raise Denied("BadUsages", f"usages {sorted(csr.usages)} are not a kubelet client's")
        if csr.expiration_seconds is not None and csr.expiration_seconds > self.max_lifetime:
            raise Denied(
                "LifetimeTooLong",
                f"expirationSeconds {csr.expiration_seconds} exceeds the maximum {self.max_lifetime}",
            )
        return nodebinding.spki_der(req.public_key())  # type: ignore[arg-type]

    @staticmethod
    def _check_requester(csr: CsrView, en: EdgeNode) -> None:
        token_id = en.status.get("bootstrapTokenID")
        if (
            token_id
            and csr.username == f"system:bootstrap:{token_id}"
            and "system:bootstrappers" in csr.groups
        ):
            return
        if csr.username == f"{NODE_PREFIX}{en.name}" and "system:nodes" in csr.groups:
            return
        raise Denied("WrongRequester", f"{csr.username!r} may not request a certificate for node {en.name}")

    @staticmethod
    def _parse_binding(csr: CsrView) -> dict[str, str]:
        raw = csr.annotations.get(nodebinding.BINDING_ANNOTATION)
        if raw is None:
            raise Denied("NoBinding", f"annotation {nodebinding.BINDING_ANNOTATION} is missing")
        try:
            binding = json.loads(raw)
        except ValueError:
            raise Denied("BadBinding", f"annotation {nodebinding.BINDING_ANNOTATION} is not JSON") from None
        if not isinstance(binding, dict) or not all(
            isinstance(binding.get(k), str) for k in ("agentUUID", "nonce", "quote")
        ):
            raise Denied("BadBinding", "binding needs string fields agentUUID, nonce and quote")
        return binding

    def _check_nonce(self, binding: dict[str, str], en: EdgeNode, now: float) -> str:
        if binding["agentUUID"] != en.spec.agent_uuid:
            raise Denied(
                "WrongAgent",
                f"binding names agent {binding['agentUUID']!r}, the EdgeNode {en.spec.agent_uuid!r}",
            )
        nonce = binding["nonce"]
        if not _NONCE_RE.match(nonce):
            raise Denied("BadBinding", "binding nonce is not 10 digits of unix time + 10 alphanumerics")
        made = nodebinding.nonce_time(nonce)
        if made < now - self.max_binding_age or made > now + self.clock_skew:
            raise Denied(
                "StaleBinding",
                f"binding nonce is from {int(now - made)} s ago (accepted: {int(self.max_binding_age)} s)",
            )
        floor = en.status.get("bindingTime")
        if isinstance(floor, int) and (made < floor or nonce == en.status.get("bindingNonce")):
            raise Denied("ReplayedBinding", "binding nonce is not newer than the last one accepted")
        return nonce

    @staticmethod
    def _check_quote(
        binding: dict[str, str], agent: RegistrarAgent, spki: bytes, nonce: str, en: EdgeNode
    ) -> None:
        try:
            quote = Quote.from_keylime_string(binding["quote"])
            verify_quote(quote, agent.aik_tpm, nodebinding.binding_digest(spki, nonce))
        except QuoteVerificationError as e:
            raise Denied("BindingMismatch", f"TPM binding does not verify for this key: {e}") from None
        policy = en.spec.tpm_policy or en.status.get("trustedPolicy") or {}
        for pcr, value in quote.pcr_values.items():
            accepted = policy.get(str(pcr))
            if accepted and value.hex() not in [a.lower() for a in accepted]:
                raise Denied("PolicyMismatch", f"PCR {pcr} in the binding quote is not the attested value")


AUTO_APPROVAL_ROLES = (
    "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
)
"""ClusterRoles that make kube-controller-manager's csrapproving controller approve kubelet client CSRs by
itself (kubeadm binds them: kubeadm:node-autoapprove-bootstrap, kubeadm:node-autoapprove-certificate-
rotation)."""


KUBEADM_AUTO_APPROVAL = (
    "kubeadm:node-autoapprove-bootstrap",
    "kubeadm:node-autoapprove-certificate-rotation",
)


def auto_approval_bindings(api: Any) -> list[str]:
    """ClusterRoleBindings through which kubelet client certificates get approved without this controller.

    Where kube-controller-manager runs its csrapproving controller (the default), each such binding lets its
    subjects obtain or renew a node certificate with no attestation and no TPM binding, so the controller's
    decision would not be the only one. The API does not say whether csrapproving runs: the bindings are
    what can be seen, and what the operator removes.
    """
    from kubernetes import client as k8s

    rbac = k8s.RbacAuthorizationV1Api(api)
    try:
        listed: Any = kube_errors.call("list ClusterRoleBindings", rbac.list_cluster_role_binding)
        found = [b for b in listed.items]
    except kube_errors.ApiError as e:
        if e.status != 403:
            raise
        # Least privilege (deploy/rbac.yaml grants get, not list): kubeadm's bindings by name.
        found = [b for name in KUBEADM_AUTO_APPROVAL
                 if (b := kube_errors.call(f"read {name}", rbac.read_cluster_role_binding, name, ok=(404,)))]
    return sorted(str(b.metadata.name) for b in found if b.role_ref.name in AUTO_APPROVAL_ROLES)
