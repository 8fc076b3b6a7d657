"""TPM2_ActivateCredential for the credential a Keylime registrar sends (tpm2-tools' file format).

The registrar runs MakeCredential against the EK for the AK's name; only a TPM holding both the EK and that
exact AK can recover the secret, which proves to the registrar that the AK lives in the TPM whose EK (and EK
certificate) it was shown. tpm2-tools' format, which Keylime produces: u32 magic 0xBADCC0DE, u32 version 1,
TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET secret (all big-endian).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tpm2_pytss import ESYS_TR, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TSS2_Exception

from edgeagent.errors import TpmError
from edgeagent.tpm.identity import ek_policy_session

if TYPE_CHECKING:
    from edgeagent.tpm.connection import Tpm
    from edgeagent.tpm.identity import Identity

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


def activate(tpm: Tpm, identity: Identity, blob: bytes) -> bytes:
    """The secret inside ``blob``; CredentialError if the TPM refuses it (made for another EK or AK)."""
    credential, secret = parse_tools_credential(blob)
    with tpm.locked("credential activation") as ectx:
        sess = ek_policy_session(ectx)
        try:
            out = ectx.activate_credential(
                identity.ak_handle, identity.ek_handle,
                TPM2B_ID_OBJECT(credential=credential), TPM2B_ENCRYPTED_SECRET(secret=secret),
                session1=ESYS_TR.PASSWORD, session2=sess,
            )
        except TSS2_Exception as e:
            if (e.rc & 0xFF0000) == 10 << 16:
                raise
            raise CredentialError(
                f"the TPM refused the credential (not made for this EK and AK, or corrupt): {e}"
            ) from None
        finally:
            ectx.flush_context(sess)
    return bytes(out)
