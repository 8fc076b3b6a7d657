"""The node's Kubernetes client key: generated on the device, never leaving it, and bound to the attested TPM.

The key is EC P-256 (``cryptography``), stored 0600 in ``state_dir/node/``. The CSR that carries it is bound
to the AK by a fresh quote; the format is `edgeagent.protocol.nodebinding` (the cluster side checks it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeagent.attest.secrets import read_private, write_private
from edgeagent.errors import StateError
from edgeagent.protocol import nodebinding
from edgeagent.tpm.quote import Quote

if TYPE_CHECKING:
    from edgeagent.tpm.identity import Identity

KEY_FILE = "node.key"


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
        loaded = serialization.load_pem_private_key(raw, password=None)
    except ValueError:
        raise StateError(f"{path} is not a PEM private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise StateError(f"{path} is not an EC P-256 key")
    return loaded


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # SEC1 ("EC PRIVATE KEY"): the form kubelet and client-go write and read for EC keys.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def tpm_binding(tpm: QuotingTpm, identity: Identity, *, agent_uuid: str,
                public_key: ec.EllipticCurvePublicKey, pcrs: Sequence[int] = nodebinding.BINDING_PCRS,
                nonce: str | None = None) -> dict[str, str]:
    """The annotation value (as a dict): a fresh quote over ``pcrs`` binding ``public_key`` to the AK."""
    nonce = nonce or nodebinding.make_nonce()
    digest = nodebinding.binding_digest(nodebinding.spki_der(public_key), nonce)
    quote = tpm.quote(identity, digest, list(pcrs))
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
