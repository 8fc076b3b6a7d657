"""Bootstrap tokens: the short-lived, single-enrollment credential that lets a device ask for its certificate.

The token travels inside Keylime's U/V payload, so only a device the verifier has just attested can open it.
It is a standard Kubernetes bootstrap token (Secret `bootstrap-token-ID` in kube-system, type
bootstrap.kubernetes.io/token): the API server authenticates it as `system:bootstrap:ID` in groups
system:bootstrappers and system:bootstrappers:edgeagent; it stops authenticating at its expiration, when
kube-controller-manager's tokencleaner deletes it. Its only power is creating and reading CSRs (ClusterRole
system:node-bootstrapper, bound to the edgeagent group, not to every bootstrapper).

Single use is enforced where it matters, at approval: once the CSR it asked for is issued, the controller
drops it from the EdgeNode (status.bootstrapTokenID), so the approver denies any further CSR it sends. It is
not deleted then: the device polls that CSR with this token, and it sees the certificate only after it was
issued, so deleting the token at issuance took the certificate away from a device that had not read it yet
(401; the API server's 10 s cache of successful token authentications hid that unless signing came late).
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass

from kubernetes import client as k8s

from edgeagent.kube import errors as kube_errors

NAMESPACE = "kube-system"
GROUP = "system:bootstrappers:edgeagent"
"""Extra group of edgeagent tokens; bootstrap groups must start with system:bootstrappers:."""
BOOTSTRAPPER_BINDING = "edgeagent:bootstrappers-create-csr"
BOOTSTRAPPER_ROLE = "system:node-bootstrapper"
"""Built-in ClusterRole: create/get/list/watch certificatesigningrequests, nothing else."""
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    secret: str
    expires_at: float

    @property
    def token(self) -> str:
        """The bearer token the device presents: "ID.SECRET"."""
        return f"{self.token_id}.{self.secret}"

    @property
    def username(self) -> str:
        """The user name the API server gives requests made with this token."""
        return f"system:bootstrap:{self.token_id}"


def token_id_of(username: str | None) -> str | None:
    """The token ID of a request made with a bootstrap token (its user name ``system:bootstrap:ID``)."""
    prefix = "system:bootstrap:"
    if username and username.startswith(prefix) and len(username) > len(prefix):
        return username[len(prefix):]
    return None


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def create(api: k8s.ApiClient, *, node_name: str, ttl_seconds: int = 300) -> BootstrapToken:
    """A fresh token for one enrollment of ``node_name``, expiring in ``ttl_seconds``."""
    token = BootstrapToken(_random(6), _random(16), time.time() + ttl_seconds)
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(
            name=f"bootstrap-token-{token.token_id}",
            namespace=NAMESPACE,
            labels={"edgeagent.io/node": node_name},
        ),
        type="bootstrap.kubernetes.io/token",
        string_data={
            "token-id": token.token_id,
            "token-secret": token.secret,
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at)),
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": GROUP,
            "description": f"edgeagent enrollment of node {node_name}",
        },
    )
    create = k8s.CoreV1Api(api).create_namespaced_secret
    kube_errors.call(f"create bootstrap token for {node_name}", create, NAMESPACE, body)
    return token


def delete(api: k8s.ApiClient, token_id: str) -> None:
    """Deletes a token (already gone is fine: the tokencleaner may have been first)."""
    delete = k8s.CoreV1Api(api).delete_namespaced_secret
    kube_errors.call(
        f"delete bootstrap token {token_id}", delete, f"bootstrap-token-{token_id}", NAMESPACE, ok=(404,)
    )


def ensure_rbac(api: k8s.ApiClient) -> None:
    """Lets edgeagent bootstrap tokens create (and watch) their CSRs; idempotent."""
    body = k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(
            name=BOOTSTRAPPER_BINDING, labels={"app.kubernetes.io/part-of": "edgeagent"}
        ),
        role_ref=k8s.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=BOOTSTRAPPER_ROLE
        ),
        subjects=[k8s.RbacV1Subject(kind="Group", name=GROUP, api_group="rbac.authorization.k8s.io")],
    )
    create = k8s.RbacAuthorizationV1Api(api).create_cluster_role_binding
    kube_errors.call(f"bind {BOOTSTRAPPER_ROLE} for bootstrappers", create, body, ok=(409,))
