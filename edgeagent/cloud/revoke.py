"""What a node may do, granted while it attests and withdrawn the moment it does not.

On failure (`revoke`), in this order, each step idempotent so a retry after a partial failure completes it:
1. delete ClusterRoleBinding edgeagent-node-NAME: the node's grants beyond the kubelet's baseline end with
   the next request (RBAC is evaluated per request);
2. cordon the Node and taint it edgeagent.io/unattested:NoExecute, so the scheduler places nothing there and
   the taint manager evicts what runs (the Node authorizer then stops serving it those pods' secrets);
3. EdgeNode status Unattested (the approver refuses renewals from then on) and a Warning Event.
`restore` undoes 1-2 (uncordoning only a cordon this controller made) and records a Normal Event.

What this cannot do: a certificate cannot be revoked in Kubernetes, and the Node authorizer gives any
system:node:NAME identity the kubelet's baseline (its own Node, pods bound to it); that is why credentials
are short-lived and renewed only while attested.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from edgeagent.cloud import crd
from edgeagent.errors import ClusterError

NODE_ROLE = "edgeagent:node"
"""ClusterRole every attested node is bound to (what the device's own controllers need)."""
TAINT_KEY = "edgeagent.io/unattested"
CORDON_ANNOTATION = "edgeagent.io/cordoned"
EVENT_NAMESPACE = "default"
"""Events about cluster-scoped objects live in the default namespace."""


def binding_name(node: str) -> str:
    return f"edgeagent-node-{node}"


def node_role() -> k8s.V1ClusterRole:
    return k8s.V1ClusterRole(
        metadata=k8s.V1ObjectMeta(name=NODE_ROLE, labels={"app.kubernetes.io/part-of": "edgeagent"}),
        rules=[
            k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list", "watch"]),
            k8s.V1PolicyRule(api_groups=[crd.GROUP], resources=[crd.PLURAL], verbs=["get", "list", "watch"]),
        ],
    )


class Access:
    """RBAC grants, cordon/taint and status/events for EdgeNodes, through the official client."""

    def __init__(self, api: k8s.ApiClient, *, component: str = "edgeagent-attestation-controller") -> None:
        self.rbac = k8s.RbacAuthorizationV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.edgenodes = crd.EdgeNodes(api)
        self.component = component

    # ------------------------------------------------------------ RBAC
    def ensure_role(self) -> None:
        try:
            self.rbac.create_cluster_role(node_role())
        except ApiException as e:
            if e.status != 409:
                raise ClusterError(f"cannot create ClusterRole {NODE_ROLE}: {e.status} {e.reason}") from None

    def grant(self, node: str) -> None:
        body = k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=binding_name(node), labels={"edgeagent.io/node": node}),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NODE_ROLE),
            subjects=[
                k8s.RbacV1Subject(
                    kind="User", name=f"system:node:{node}", api_group="rbac.authorization.k8s.io"
                )
            ],
        )
        try:
            self.rbac.create_cluster_role_binding(body)
        except ApiException as e:
            if e.status != 409:
                raise ClusterError(f"cannot grant {node} its RBAC: {e.status} {e.reason}") from None

    def withdraw(self, node: str) -> None:
        try:
            self.rbac.delete_cluster_role_binding(binding_name(node))
        except ApiException as e:
            if e.status != 404:
                raise ClusterError(f"cannot delete {binding_name(node)}: {e.status} {e.reason}") from None

    def granted(self, node: str) -> bool:
        try:
            self.rbac.read_cluster_role_binding(binding_name(node))
        except ApiException as e:
            if e.status == 404:
                return False
            raise ClusterError(f"cannot read {binding_name(node)}: {e.status} {e.reason}") from None
        return True

    # ------------------------------------------------------------ Node
    def quarantine(self, node: str) -> bool:
        """Cordons and taints the Node if it exists; False when there is no Node (yet)."""
        try:
            current = self.core.read_node(node)
        except ApiException as e:
            if e.status == 404:
                return False
            raise ClusterError(f"cannot read Node {node}: {e.status} {e.reason}") from None
        spec = current.spec or k8s.V1NodeSpec()
        taints = [t for t in (spec.taints or []) if t.key != TAINT_KEY]
        taints.append(k8s.V1Taint(key=TAINT_KEY, value="true", effect="NoExecute"))
        patch: dict = {
            "spec": {
                "unschedulable": True,
                "taints": [self.core.api_client.sanitize_for_serialization(t) for t in taints],
            }
        }
        if not spec.unschedulable:
            patch["metadata"] = {"annotations": {CORDON_ANNOTATION: "true"}}
        self._patch_node(node, patch)
        return True

    def release(self, node: str) -> bool:
        """Removes the taint, and the cordon if this controller set it."""
        try:
            current = self.core.read_node(node)
        except ApiException as e:
            if e.status == 404:
                return False
            raise ClusterError(f"cannot read Node {node}: {e.status} {e.reason}") from None
        taints = [
            self.core.api_client.sanitize_for_serialization(t)
            for t in ((current.spec.taints if current.spec else None) or [])
            if t.key != TAINT_KEY
        ]
        patch: dict = {"spec": {"taints": taints or None}}
        annotations = (current.metadata.annotations if current.metadata else None) or {}
        if annotations.get(CORDON_ANNOTATION) == "true":
            patch["spec"]["unschedulable"] = False
            patch["metadata"] = {"annotations": {CORDON_ANNOTATION: None}}
        self._patch_node(node, patch)
        return True

    def _patch_node(self, node: str, patch: dict) -> None:
        try:
            self.core.patch_node(node, patch, _content_type="application/merge-patch+json")
        except ApiException as e:
            raise ClusterError(f"cannot patch Node {node}: {e.status} {e.reason}") from None

    # ------------------------------------------------------------ events
    def event(self, en: crd.EdgeNode, *, reason: str, message: str, warning: bool = False) -> None:
        """Records a core/v1 Event about ``en`` (best effort: an Event never blocks a revocation)."""
        stamp = k8s.V1ObjectMeta(generate_name=f"{en.name}.", namespace=EVENT_NAMESPACE)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)  # serialised as RFC 3339
        body = k8s.CoreV1Event(
            metadata=stamp,
            involved_object=en.reference(),
            reason=reason,
            message=message[:1000],
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=k8s.V1EventSource(component=self.component),
        )
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(EVENT_NAMESPACE, body)

    # ------------------------------------------------------------ the two transitions
    def revoke(self, en: crd.EdgeNode, reason: str, message: str) -> crd.EdgeNode:
        """Withdraws everything, most important first; returns the updated EdgeNode."""
        t0 = time.monotonic()
        self.withdraw(en.name)
        quarantined = self.quarantine(en.name)
        status = {
            "phase": "Unattested",
            "attested": False,
            "message": message[:1000],
            "conditions": crd.merge_conditions(
                en.status.get("conditions"), crd.condition("Attested", False, reason, message)
            ),
        }
        updated = self.edgenodes.patch_status(en.name, status)
        took = time.monotonic() - t0
        self.event(
            updated,
            reason="AttestationFailed",
            warning=True,
            message=f"{message}; RBAC withdrawn, node {'cordoned and tainted' if quarantined else 'absent'} "
            f"in {took * 1000:.0f} ms",
        )
        return updated

    def restore(self, en: crd.EdgeNode, *, enrolled: bool) -> crd.EdgeNode:
        self.grant(en.name)
        self.release(en.name)
        status = {
            "phase": "Enrolled" if enrolled else "Attested",
            "attested": True,
            "lastAttestation": crd.now_rfc3339(),
            "message": "attestation is good again",
            "conditions": crd.merge_conditions(
                en.status.get("conditions"),
                crd.condition(
                    "Attested", True, "QuotesVerified", "Keylime's verifier accepts the device's quotes"
                ),
            ),
        }
        updated = self.edgenodes.patch_status(en.name, status)
        self.event(updated, reason="AttestationRestored", message="attestation good again; access restored")
        return updated
