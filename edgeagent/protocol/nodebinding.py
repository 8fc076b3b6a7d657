"""The node-key binding: the CSR annotation that ties a node's key to the AK of an attested TPM.

The device (`edgeagent.attest.nodekey`) makes it, the cluster side (`edgeagent.cloud.csr`) checks it; this
is the format both agree on. The CSR gets the annotation ``edgeagent.io/tpm-binding`` = JSON
{"agentUUID", "nonce", "quote"}: a Keylime quote string made by the agent's AK with qualifying data
sha256(b"edgeagent-node-key-v1" || SPKI DER of the CSR's key || nonce).
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
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

BINDING_ANNOTATION = "edgeagent.io/tpm-binding"
BINDING_CONTEXT = b"edgeagent-node-key-v1"
BINDING_PCRS = (23,)
NONCE_LENGTH = 20
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_USAGES = ("digital signature", "key encipherment", "client auth")
_ALNUM = string.ascii_letters + string.digits


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
