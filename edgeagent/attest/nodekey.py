"""The node's Kubernetes client key: generated on the device, never leaving it, and bound to the attested TPM.

The key is EC P-256 (``cryptography``), stored 0600 in ``state_dir/node/``. The CSR that carries it gets
the annotation ``edgeagent.io/tpm-binding`` = JSON {"agentUUID", "nonce", "quote"}: a Keylime quote string
made by the agent's AK with qualifying data sha256(b"edgeagent-node-key-v1" || SPKI DER of the
CSR's key || nonce).
Only the TPM holding the AK that Keylime's registrar lists for ``agentUUID`` can produce it, and only for this
key, so the controller can check the key in the CSR belongs to the device it just attested. The nonce is 20
characters starting with the unix time, so a binding older than a few minutes can be refused as stale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeagent.attest.secrets import read_private, write_private
from edgeagent.errors import StateError
from edgeagent.tpm.identity import Identity
from edgeagent.tpm.quote import Quote

KEY_FILE = "node.key"
BINDING_ANNOTATION = "edgeagent.io/tpm-binding"
BINDING_CONTEXT = b"edgeagent-node-key-v1"
BINDING_PCRS = (23,)
NONCE_LENGTH = 20
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_USAGES = ("digital signature", "key encipherment", "client auth")
_ALNUM = string.ascii_letters + string.digits


class QuotingTpm(Protocol):
    def quote(self, identity: Identity, nonce: bytes, pcrs: list[int], bank: str = "sha256") -> Quote: ...


def load_or_create(directory: Path) -> ec.EllipticCurvePrivateKey:
    """The node key in ``directory``, generated the first time (0600, atomically)."""
    path = directory / KEY_FILE
    raw = read_private(path)
    if raw is None:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, private_pem(key))
        return key
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except ValueError:
        raise StateError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise StateError(f"{path} is not an EC P-256 key")
    return key


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # SEC1 ("EC PRIVATE KEY"): the form kubelet and client-go write and read for EC keys.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def make_nonce(now: float | None = None) -> str:
    """20 alphanumerics: the 10-digit unix time, then 10 random characters."""
    stamp = f"{int(time.time() if now is None else now):010d}"
    return stamp + "".join(secrets.choice(_ALNUM) for _ in range(NONCE_LENGTH - len(stamp)))


def nonce_time(nonce: str) -> int:
    """The unix time a nonce was made at (its first 10 characters)."""
    return int(nonce[:10])


def binding_digest(spki: bytes, nonce: str) -> bytes:
    """The quote's qualifying data: sha256(context || SPKI DER || nonce)."""
    return hashlib.sha256(BINDING_CONTEXT + spki + nonce.encode("ascii")).digest()


def tpm_binding(tpm: QuotingTpm, identity: Identity, *, agent_uuid: str,
                public_key: ec.EllipticCurvePublicKey, pcrs: Sequence[int] = BINDING_PCRS,
                nonce: str | None = None) -> dict[str, str]:
    """The annotation value (as a dict): a fresh quote over ``pcrs`` binding ``public_key`` to the AK."""
    nonce = nonce or make_nonce()
    quote = tpm.quote(identity, binding_digest(spki_der(public_key), nonce), list(pcrs))
    return {"agentUUID": agent_uuid, "nonce": nonce, "quote": quote.keylime_string()}


def build_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """PEM CSR for the kubelet client certificate: CN=system:node:NAME, O=system:nodes."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
    ])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_name(node_name: str, now: float | None = None) -> str:
    return f"edgeagent-{node_name}-{int(time.time() if now is None else now)}"


def csr_body(*, name: str, csr_pem: bytes, binding: dict[str, str],
             expiration_seconds: int) -> dict[str, Any]:
    """The certificates.k8s.io/v1 CertificateSigningRequest object (a plain dict, as the API takes it)."""
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "annotations": {BINDING_ANNOTATION: json.dumps(binding, sort_keys=True)}},
        "spec": {
            "request": base64.b64encode(csr_pem).decode("ascii"),
            "signerName": KUBELET_SIGNER,
            "usages": list(KUBELET_USAGES),
            "expirationSeconds": expiration_seconds,
        },
    }
