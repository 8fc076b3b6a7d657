"""Hash algorithms by their TCG Algorithm Registry identifiers (TPM_ALG_ID), and the PCR extend operation.

Logs name algorithms by TPM_ALG_ID (binary TCG2 log) or by name (CEL-JSON ``hashAlg``, the TPM contract's bank
names); both map to the same table so a digest can be followed from a log to a PCR bank.
"""

from __future__ import annotations

import hashlib

# TPM_ALG_ID -> (name, digest size), TCG Algorithm Registry. Names match edgeagent.tpm's bank names.
TPM_ALG: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    0x000B: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
    0x0012: ("sm3_256", 32),
    0x0027: ("sha3_256", 32),
    0x0028: ("sha3_384", 48),
    0x0029: ("sha3_512", 64),
}
ALG_ID: dict[str, int] = {name: alg for alg, (name, _) in TPM_ALG.items()}
DIGEST_SIZE: dict[str, int] = {name: size for name, size in TPM_ALG.values()}

# hashlib spells SM3 without the size suffix.
_HASHLIB_NAME = {"sm3_256": "sm3"}


def alg_name(alg_id: int) -> str:
    """The registry name, or ``alg_0x....`` for an identifier this table does not know."""
    known = TPM_ALG.get(alg_id)
    return known[0] if known else f"alg_0x{alg_id:04x}"


def can_hash(name: str) -> bool:
    """Whether this Python can compute ``name`` (a PCR bank we cannot hash cannot be replayed)."""
    try:
        hashlib.new(_HASHLIB_NAME.get(name, name))
    except (ValueError, TypeError):
        return False
    return name in DIGEST_SIZE


def digest(name: str, data: bytes) -> bytes:
    return hashlib.new(_HASHLIB_NAME.get(name, name), data).digest()


def extend(name: str, value: bytes, measurement: bytes) -> bytes:
    """TPM2_PCR_Extend: PCR_new = H(PCR_old || digest)."""
    return hashlib.new(_HASHLIB_NAME.get(name, name), value + measurement).digest()


def zero(name: str) -> bytes:
    """A PCR's value after TPM2_Startup(CLEAR) or TPM2_PCR_Reset (PCR 0 aside: see StartupLocality)."""
    return bytes(DIGEST_SIZE[name])
