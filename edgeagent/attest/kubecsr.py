"""Kubelet TLS bootstrap from the device: the node's CSR sent with the bootstrap token, then its certificate.

Standard Kubernetes flow: a bootstrap token (group system:bootstrappers) may create and read
CertificateSigningRequests; the attestation controller approves only CSRs whose TPM binding checks out;
kube-controller-manager signs. The device then writes a kubeconfig for the kubelet that points at its key and
certificate files.

Two JSON requests need no typed models: they go through ``edgeagent.kube`` (urllib3), not the official
kubernetes client, whose import alone would cost the device ~18 MB of RSS.

Transport failures (API server down or restarting, or answering 429/5xx) are `PeerUnreachable`, which `enroll`
retries with backoff; a refusal (401 for an expired token, 403, a denied CSR) is a `ClusterError`: retrying
cannot change it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.attest.secrets import write_private
from edgeagent.errors import ClusterError, CsrRefused
from edgeagent.kube import errors as kube_errors
from edgeagent.kube import kubeconfig as kubeconfig_file
from edgeagent.kube import transport
from edgeagent.kube.api import KubeApi, resource_path

REQUEST_TIMEOUT = 10.0
CSR_GROUP, CSR_VERSION, CSR_PLURAL = "certificates.k8s.io", "v1", "certificatesigningrequests"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How the device reaches the API server: URL, CA file, and a bearer token or client cert/key files."""

    api_server: str
    ca_file: Path
    token: str | None = dataclasses.field(default=None, repr=False)
    cert_file: Path | None = None
    key_file: Path | None = None

    @functools.cached_property
    def api(self) -> KubeApi:
        """The client, made on first use and kept (one TLS pool for all polls of ``wait_certificate``). It
        never retries by itself: enroll owns retrying, with its own backoff and deadline. ConfigError if the
        CA or the key pair cannot be loaded."""
        return KubeApi(
            transport.direct(
                self.api_server,
                ca_file=self.ca_file,
                token=self.token,
                cert_file=self.cert_file,
                key_file=self.key_file,
            ),
            timeout=REQUEST_TIMEOUT,
        )


def _csr_path(name: str = "") -> str:
    return resource_path(CSR_GROUP, CSR_VERSION, CSR_PLURAL, name=name)


def _request(cluster: Cluster, what: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """One request; ``kube.errors`` name ``what`` and the API server ("cannot read CSR x at https://...")."""
    return cluster.api.request_json(method, path, what=f"{what} at {cluster.api_server}", body=body)


def submit(cluster: Cluster, body: dict[str, Any]) -> str:
    """Creates the CSR object; returns its name. An existing CSR of the same name is taken as ours."""
    name = body["metadata"]["name"]
    # AlreadyExists (409): a restart after the create reached the server
    with contextlib.suppress(kube_errors.Conflict):
        _request(cluster, f"create CSR {name}", "POST", _csr_path(), body)
    return name


def issued_certificate(cluster: Cluster, name: str) -> bytes | None:
    """The signed certificate (PEM) once issued, None while pending; CsrRefused when denied or failed."""
    csr = _request(cluster, f"read CSR {name}", "GET", _csr_path(name))
    status = csr.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status") in (None, "True"):
            raise CsrRefused(f"CSR {name} was {cond['type'].lower()}: {cond.get('reason') or ''} "
                               f"{cond.get('message') or ''}".strip())
    cert = status.get("certificate")
    if not cert:
        return None
    try:
        return base64.b64decode(cert, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ClusterError(f"CSR {name}: status.certificate is not base64") from None


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
