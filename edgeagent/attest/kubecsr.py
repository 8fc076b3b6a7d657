"""Kubelet TLS bootstrap from the device: the node's CSR sent with the bootstrap token, then its certificate.

Standard Kubernetes flow through the official client: a bootstrap token (group system:bootstrappers) may
create and read CertificateSigningRequests; the attestation controller approves only CSRs whose TPM binding
checks out; kube-controller-manager signs. The device then writes a kubeconfig for the
kubelet that points at its key and certificate files.

Transport failures (API server down or restarting) are `PeerUnreachable`, which `enroll` retries with backoff;
a refusal (401 for an expired token, 403, a denied CSR) is a `ClusterError`: retrying cannot change it.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from edgeagent.attest.secrets import write_private
from edgeagent.errors import ClusterError, PeerUnreachable
from edgeagent.kube import kubeconfig as kubeconfig_file

REQUEST_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How the device reaches the API server: URL, CA file, and a bearer token or client cert/key files."""

    api_server: str
    ca_file: Path
    token: str | None = dataclasses.field(default=None, repr=False)
    cert_file: Path | None = None
    key_file: Path | None = None

    def api(self) -> k8s.CertificatesV1Api:
        cfg = k8s.Configuration()
        cfg.host = self.api_server
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.verify_ssl = True
        cfg.retries = False  # enroll owns retrying, with its own backoff and deadline
        if self.token is not None:
            cfg.api_key = {"authorization": self.token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        if self.cert_file is not None and self.key_file is not None:
            cfg.cert_file, cfg.key_file = str(self.cert_file), str(self.key_file)
        return k8s.CertificatesV1Api(k8s.ApiClient(cfg))


def _call(what: str, server: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ApiException as e:
        if e.status is not None and e.status >= 500:
            raise PeerUnreachable(f"API server {server} failed the {what}: HTTP {e.status}") from None
        reason = (e.reason or "").strip() or f"HTTP {e.status}"
        raise ClusterError(f"API server {server} refused the {what}: {e.status} {reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise PeerUnreachable(f"API server {server} unreachable for the {what}: "
                              f"{e.__class__.__name__}") from None


def submit(cluster: Cluster, body: dict[str, Any]) -> str:
    """Creates the CSR object; returns its name. An existing CSR of the same name is taken as ours."""
    name = body["metadata"]["name"]
    api = cluster.api()
    try:
        _call("CSR creation", cluster.api_server,
              lambda: api.create_certificate_signing_request(body, _request_timeout=REQUEST_TIMEOUT))
    except ClusterError as e:
        if " 409 " not in f" {e} ":  # AlreadyExists: a restart after the create reached the server
            raise
    return name


def issued_certificate(cluster: Cluster, name: str) -> bytes | None:
    """The signed certificate (PEM) once issued, None while pending; ClusterError when denied or failed."""
    api = cluster.api()
    csr = _call("CSR read", cluster.api_server,
                lambda: api.read_certificate_signing_request(name, _request_timeout=REQUEST_TIMEOUT))
    status = csr.status
    for cond in (status.conditions or []) if status else []:
        if cond.type in ("Denied", "Failed") and cond.status in (None, "True"):
            raise ClusterError(f"CSR {name} was {cond.type.lower()}: {cond.reason or ''} {cond.message or ''}"
                               .strip())
    if status is None or not status.certificate:
        return None
    return base64.b64decode(status.certificate)


def wait_certificate(cluster: Cluster, name: str, *, timeout: float, interval: float = 0.2,
                     sleep: Callable[[float], None] = time.sleep) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        cert = issued_certificate(cluster, name)
        if cert is not None:
            return cert
        if time.monotonic() >= deadline:
            raise ClusterError(f"CSR {name} was not signed within {timeout:.0f} s (not approved?)")
        sleep(interval)


def write_kubelet_kubeconfig(path: Path, *, api_server: str, ca_pem: bytes, cert_file: Path,
                             key_file: Path, node_name: str) -> Path:
    """The kubelet's kubeconfig (0600, atomic), pointing at the node's certificate and key files.

    Files rather than embedded data: the kubelet (and `enroll` on renewal) replaces the certificate in place.
    """
    user = f"system:node:{node_name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "edgeagent", "cluster": {
            "server": api_server,
            "certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
        }}],
        "users": [{"name": user, "user": {"client-certificate": str(cert_file),
                                          "client-key": str(key_file)}}],
        "contexts": [{"name": f"{user}@edgeagent", "context": {"cluster": "edgeagent", "user": user}}],
        "current-context": f"{user}@edgeagent",
    }
    return kubeconfig_file.write(path, config)


def write_ca(path: Path, ca_pem: bytes) -> Path:
    return write_private(path, ca_pem)
