"""The controller's own rights, asked of the API server before it relies on them, and how it reports a gap.

A controller deployed without RBAC for CertificateSigningRequests would otherwise fail quietly: its CSR watch
retries a 403 with a warning every few seconds and devices wait for a credential forever. At start it asks
with SelfSubjectAccessReviews (any authenticated identity may create them, and they answer for the identity
the request is made as, impersonation included) and reports what is missing once: one log line, and a
Warning Event on its own Pod (``POD_NAME``/``POD_NAMESPACE``/``POD_UID`` from the downward API) so
``kubectl describe pod`` shows it, or on its leader Lease when it runs outside a Pod.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubernetes import client as k8s

from edgeagent.errors import EdgeAgentError
from edgeagent.kube import errors as kube_errors

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@dataclass(frozen=True)
class Right:
    """One verb on one resource (Kubernetes' ResourceAttributes, the names RBAC rules use)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    name: str = ""

    def attributes(self) -> k8s.V1ResourceAttributes:
        return k8s.V1ResourceAttributes(
            verb=self.verb,
            group=self.group,
            resource=self.resource,
            subresource=self.subresource or None,
            name=self.name or None,
        )

    @property
    def target(self) -> str:
        """What the verb applies to, as ``kubectl auth can-i`` spells it."""
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return resource + (f"/{self.subresource}" if self.subresource else "") + (
            f"/{self.name}" if self.name else ""
        )


CSR_RIGHTS = (
    Right("get", "certificates.k8s.io", "certificatesigningrequests"),
    Right("list", "certificates.k8s.io", "certificatesigningrequests"),
    Right("watch", "certificates.k8s.io", "certificatesigningrequests"),
    Right("update", "certificates.k8s.io", "certificatesigningrequests", "approval"),
    Right("approve", "certificates.k8s.io", "signers", name=KUBELET_SIGNER),
)
"""What approving kubelet client CSRs takes (the CSR watch and csr.Approver; deploy/rbac.yaml grants it)."""


def missing(api: k8s.ApiClient, rights: Iterable[Right]) -> list[Right]:
    """The ``rights`` the API server says this client's identity lacks (one review each).

    Raises ``EdgeAgentError`` when a review cannot be made (API server unreachable, reviews refused).
    """
    authz = k8s.AuthorizationV1Api(api)
    lacking = []
    for right in rights:
        review = k8s.V1SelfSubjectAccessReview(
            spec=k8s.V1SelfSubjectAccessReviewSpec(resource_attributes=right.attributes())
        )
        answer = kube_errors.call(
            f"review {right.verb} {right.target}", authz.create_self_subject_access_review, review
        )
        if answer is None or not answer.status or not answer.status.allowed:
            lacking.append(right)
    return lacking


def describe(rights: Iterable[Right]) -> str:
    """``list, watch certificatesigningrequests.certificates.k8s.io; update ...``: verbs grouped by target."""
    by_target: dict[str, list[str]] = {}
    for right in rights:
        by_target.setdefault(right.target, []).append(right.verb)
    return "; ".join(f"{', '.join(verbs)} {target}" for target, verbs in by_target.items())


@dataclass(frozen=True)
class SelfRef:
    """The object Events about the controller itself point at: its Pod, or (outside a Pod) its Lease."""

    kind: str
    api_version: str
    name: str
    namespace: str
    uid: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SelfRef | None:
        """Its Pod from the downward API (POD_NAME, POD_NAMESPACE, POD_UID), or None outside a Pod."""
        env = os.environ if env is None else env
        name, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        if not name or not namespace:
            return None
        return cls("Pod", "v1", name, namespace, env.get("POD_UID") or None)

    @classmethod
    def lease(cls, name: str, namespace: str) -> SelfRef:
        return cls("Lease", "coordination.k8s.io/v1", name, namespace)


def warn(
    api: k8s.ApiClient, about: SelfRef, *, reason: str, message: str, component: str
) -> bool:
    """A Warning Event about ``about``, in its namespace; best effort (False when it could not be made: the
    log line is then the only report, and a missing right to create Events must not stop the controller)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    body = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{about.name}.", namespace=about.namespace),
        involved_object=k8s.V1ObjectReference(
            api_version=about.api_version,
            kind=about.kind,
            name=about.name,
            namespace=about.namespace,
            uid=about.uid,
        ),
        reason=reason,
        message=message[:1000],
        type="Warning",
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=k8s.V1EventSource(component=component),
    )
    create = k8s.CoreV1Api(api).create_namespaced_event
    with contextlib.suppress(EdgeAgentError):
        kube_errors.call(f"record Event {reason}", create, about.namespace, body)
        return True
    return False
