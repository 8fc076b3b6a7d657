"""The agent's NK: the RSA key Keylime's tenant and verifier encrypt the U and V key shares to.

It is a software key (Keylime's own agents use one too) made trustworthy by the quote: before every quote
the agent resets PCR 16 and extends it with sha256 of this key's public PEM, so a verifier that checks PCR 16
knows the key belongs to the TPM that signed the quote. It is created once and kept (0600) because the
verifier caches the public key: after a restart the agent must present the same
one, or PCR 16 would no longer match.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeagent.attest.secrets import read_private, write_private
from edgeagent.errors import StateError

NK_FILE = "nk.pem"
NK_BITS = 2048


@dataclasses.dataclass(frozen=True)
class AgentKey:
    private_key: rsa.RSAPrivateKey = dataclasses.field(repr=False)
    public_pem: str
    """SubjectPublicKeyInfo PEM, byte for byte what `quotes/*` send as ``pubkey`` and PCR 16 binds."""


def _wrap(key: rsa.RSAPrivateKey) -> AgentKey:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return AgentKey(key, pem)


def load_or_create(directory: Path) -> AgentKey:
    """The NK stored in ``directory``, created (0600, atomically) the first time."""
    path = directory / NK_FILE
    raw = read_private(path)
    if raw is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=NK_BITS)
        write_private(path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        return _wrap(key)
    try:
        loaded = serialization.load_pem_private_key(raw, password=None)
    except ValueError:
        raise StateError(f"{path} is not a PEM private key; remove it to make a new NK") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise StateError(f"{path} is not an RSA key")
    return _wrap(loaded)
