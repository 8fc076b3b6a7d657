"""The credential a Keylime registrar sends (tpm2-tools' file format): parsing, pure (no tpm2-pytss);
activating it is `edgeagent.tpm.identity.activate_credential`.

The registrar runs MakeCredential against the EK for the AK's name; only a TPM holding both the EK and that
exact AK can recover the secret, which proves to the registrar that the AK lives in the TPM whose EK (and EK
certificate) it was shown. tpm2-tools' format, which Keylime produces: u32 magic 0xBADCC0DE, u32 version 1,
TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET secret (all big-endian).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.decrepit.ciphers.modes import CFB  # the TPM's outer wrap is AES-CFB
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from edgeagent.errors import TpmError
from edgeagent.tpm import attest

TOOLS_CREDENTIAL_MAGIC = 0xBADCC0DE
TOOLS_CREDENTIAL_VERSION = 1


class CredentialError(TpmError):
    """A credential blob is malformed or was not made for this TPM's EK and AK."""


def parse_tools_credential(blob: bytes) -> tuple[bytes, bytes]:
    """(credentialBlob, secret) from tpm2-tools' credential file; raises CredentialError."""
    if len(blob) < 8:
        raise CredentialError("credential blob truncated in its header")
    magic, version = struct.unpack_from(">II", blob, 0)
    if magic != TOOLS_CREDENTIAL_MAGIC:
        raise CredentialError(f"credential blob magic is 0x{magic:08x}, not 0x{TOOLS_CREDENTIAL_MAGIC:08X}")
    if version != TOOLS_CREDENTIAL_VERSION:
        raise CredentialError(f"credential blob version {version} is not supported")
    off = 8
    parts = []
    for field in ("credentialBlob", "secret"):
        if off + 2 > len(blob):
            raise CredentialError(f"credential blob truncated in {field}")
        (size,) = struct.unpack_from(">H", blob, off)
        if off + 2 + size > len(blob):
            raise CredentialError(f"credential blob truncated in {field}")
        parts.append(blob[off + 2 : off + 2 + size])
        off += 2 + size
    if off != len(blob):
        raise CredentialError(f"credential blob has {len(blob) - off} trailing bytes")
    return parts[0], parts[1]


# ---------------------------------------------------------------- TPM2_MakeCredential, in software
def kdfa(hash_name: str, key: bytes, label: str, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa of TPM 2.0 Part 1 §11.4.10.2 (SP 800-108 counter mode with HMAC)."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        msg = (counter.to_bytes(4, "big") + label.encode() + b"\0" + context_u + context_v
               + bits.to_bytes(4, "big"))
        out += hmac.new(key, msg, hash_name).digest()
        counter += 1
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def make_credential(ek_public: bytes, object_name: bytes, secret: bytes, *,
                    seed: bytes | None = None) -> bytes:
    """TPM2_MakeCredential done outside any TPM (Part 1 §24, "Credential Protection"), as tpm2-tools' blob.

    Only the TPM that holds the private half of ``ek_public`` *and* has an object loaded whose name is
    ``object_name`` (the AK) can get ``secret`` back with TPM2_ActivateCredential: the seed is encrypted to
    the EK, and both the symmetric key and the integrity HMAC are derived from the seed and the AK's name.
    RSA EKs only (the standard template: RSA-2048, AES-128-CFB, SHA-256); an ECC EK raises CredentialError.
    ``seed`` is for known-answer tests only.
    """
    try:
        ek = attest.parse_public(ek_public)
    except attest.StructureError as e:
        raise CredentialError(f"EK public area: {e}") from None
    if not isinstance(ek.key, rsa.RSAPublicKey):
        raise CredentialError("MakeCredential to an ECC EK is not supported (push delivery needs an RSA EK)")
    if ek.sym_alg != attest.TPM_ALG_AES or ek.sym_bits not in (128, 192, 256):
        raise CredentialError(f"EK symmetric algorithm 0x{ek.sym_alg:04x}/{ek.sym_bits} is not AES-CFB")
    hash_name = attest.HASH_BY_ID.get(ek.name_alg)
    if hash_name is None:
        raise CredentialError(f"EK nameAlg 0x{ek.name_alg:04x} is not supported")
    if not 0 < len(secret) <= 64:
        raise CredentialError(f"a credential is 1-64 bytes (TPM2B_DIGEST), got {len(secret)}")
    digest_size = hashlib.new(hash_name).digest_size
    seed = os.urandom(digest_size) if seed is None else seed
    h = attest.crypto_hash(ek.name_alg)
    encrypted_seed = ek.key.encrypt(
        seed, padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=b"IDENTITY\0"))
    sym_key = kdfa(hash_name, seed, "STORAGE", object_name, b"", ek.sym_bits)
    plain = struct.pack(">H", len(secret)) + secret
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = kdfa(hash_name, seed, "INTEGRITY", b"", b"", digest_size * 8)
    outer_hmac = hmac.new(hmac_key, enc_identity + object_name, hash_name).digest()
    credential_blob = struct.pack(">H", len(outer_hmac)) + outer_hmac + enc_identity
    return (struct.pack(">II", TOOLS_CREDENTIAL_MAGIC, TOOLS_CREDENTIAL_VERSION)
            + struct.pack(">H", len(credential_blob)) + credential_blob
            + struct.pack(">H", len(encrypted_seed)) + encrypted_seed)
