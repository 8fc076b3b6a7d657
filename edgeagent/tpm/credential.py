"""The credential a Keylime registrar sends (tpm2-tools' file format): parsing, pure (no tpm2-pytss);
activating it is `edgeagent.tpm.identity.activate_credential`.

The registrar runs MakeCredential against the EK for the AK's name; only a TPM holding both the EK and that
exact AK can recover the secret, which proves to the registrar that the AK lives in the TPM whose EK (and EK
certificate) it was shown. tpm2-tools' format, which Keylime produces: u32 magic 0xBADCC0DE, u32 version 1,
TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET secret (all big-endian).
"""

from __future__ import annotations

import struct

from edgeagent.errors import TpmError

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
