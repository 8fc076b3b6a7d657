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
import datetime
import time
from typing import Any

from kubernetes import client as k8s

from edgeagent.cloud import crd
from edgeagent.errors import EdgeAgentError
from edgeagent.kube import errors as kube_errors

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
        create = self.rbac.create_cluster_role
        kube_errors.call(f"create ClusterRole {NODE_ROLE}", create, node_role(), ok=(409,))

    def grant(self, node: str) -> None:
        """Binds the node to NODE_ROLE. The binding is owned by that ClusterRole, so it lives no longer than
        the role: uninstalling the cluster side (the chart) removes every node's grant with it, and no device
        keeps rights that nobody revokes any more."""
        read = self.rbac.read_cluster_role
        role: Any = kube_errors.call(f"read ClusterRole {NODE_ROLE}", read, NODE_ROLE, ok=(404,))
        owners = None
        if role is not None and role.metadata.uid:
            owners = [k8s.V1OwnerReference(api_version="rbac.authorization.k8s.io/v1", kind="ClusterRole",
                                           name=NODE_ROLE, uid=role.metadata.uid)]
        body = k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=binding_name(node), labels={"edgeagent.io/node": node},
                                      owner_references=owners),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NODE_ROLE),
            subjects=[
                k8s.RbacV1Subject(
                    kind="User", name=f"system:node:{node}", api_group="rbac.authorization.k8s.io"
                )
            ],
        )
        kube_errors.call(f"grant {node} its RBAC", self.rbac.create_cluster_role_binding, body, ok=(409,))

    def withdraw(self, node: str) -> None:
        name = binding_name(node)
        kube_errors.call(f"delete {name}", self.rbac.delete_cluster_role_binding, name, ok=(404,))

    def granted(self, node: str) -> bool:
        name = binding_name(node)
        read = self.rbac.read_cluster_role_binding
        return kube_errors.call(f"read {name}", read, name, ok=(404,)) is not None

    # ------------------------------------------------------------ Node
    def quarantine(self, node: str) -> bool:
        """Cordons and taints the Node if it exists; False when there is no Node (yet)."""
        current = self._read_node(node)
        if current is None:
            return False
        taints = [t for t in (current.spec.taints or []) if t.key != TAINT_KEY]
        taints.append(k8s.V1Taint(key=TAINT_KEY, value="true", effect="NoExecute"))
        patch: dict[str, Any] = {
            "spec": {
                "unschedulable": True,
                "taints": [self.core.api_client.sanitize_for_serialization(t) for t in taints],
            }
        }
        if not current.spec.unschedulable:
            patch["metadata"] = {"annotations": {CORDON_ANNOTATION: "true"}}
        self._patch_node(node, patch)
        return True

    def release(self, node: str) -> bool:
        """Removes the taint, and the cordon if this controller set it."""
        current = self._read_node(node)
        if current is None:
            return False
        taints = [
            self.core.api_client.sanitize_for_serialization(t)
            for t in (current.spec.taints or [])
            if t.key != TAINT_KEY
        ]
        patch: dict[str, Any] = {"spec": {"taints": taints or None}}
        if (current.metadata.annotations or {}).get(CORDON_ANNOTATION) == "true":
            patch["spec"]["unschedulable"] = False
            patch["metadata"] = {"annotations": {CORDON_ANNOTATION: None}}
        self._patch_node(node, patch)
        return True

    def _read_node(self, node: str) -> Any:
        return kube_errors.call(f"read Node {node}", self.core.read_node, node, ok=(404,))

    def _patch_node(self, node: str, patch: dict[str, Any]) -> None:
        merge = "application/merge-patch+json"
        kube_errors.call(f"patch Node {node}", self.core.patch_node, node, patch, _content_type=merge)

    # ------------------------------------------------------------ events
    def event(self, en: crd.EdgeNode, *, reason: str, message: str, warning: bool = False) -> None:
        """Records a core/v1 Event about ``en`` (best effort: an Event never blocks a revocation)."""
        stamp = k8s.V1ObjectMeta(generate_name=f"{en.name}.", namespace=EVENT_NAMESPACE)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
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
        with contextlib.suppress(EdgeAgentError):
            create = self.core.create_namespaced_event
            kube_errors.call(f"record Event {reason}", create, EVENT_NAMESPACE, body)

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
