"""PCR numbers, banks and selections in TPM 2.0 terms: pure, no tpm2-pytss (the cluster side uses them to
verify quotes). The ESAPI structures built from them are in `edgeagent.tpm.esys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from edgeagent.errors import TpmError

# PC-client TPMs have 24 PCRs (IMPLEMENTATION_PCR); selections are 3 bytes (sizeofSelect = 3).
PCR_COUNT = 24
PCR_SELECT_SIZE = 3

# TCG Algorithm Registry identifiers of the hash algorithms a PCR bank can use, with their digest sizes.
HASH_ALGS: dict[str, int] = {
    "sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D, "sm3_256": 0x0012,
}
DIGEST_SIZES: dict[str, int] = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sm3_256": 32}
HASH_NAMES: dict[int, str] = {v: k for k, v in HASH_ALGS.items()}


def check_indices(indices: Iterable[int]) -> list[int]:
    """Sorted unique PCR indices; raises TpmError for an index the TPM does not have."""
    out = sorted(set(indices))
    bad = [i for i in out if not isinstance(i, int) or not 0 <= i < PCR_COUNT]
    if bad:
        raise TpmError(f"PCR index {bad[0]} out of range 0-{PCR_COUNT - 1}")
    return out


def select_bits(indices: Iterable[int]) -> bytes:
    """The pcrSelect bitmap (PCR n is bit n % 8 of byte n // 8)."""
    bits = bytearray(PCR_SELECT_SIZE)
    for i in indices:
        bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def selected(bitmap: bytes) -> list[int]:
    """The PCR indices set in a pcrSelect bitmap."""
    return [i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte & (1 << b)]


def extend_digest(old: bytes, digest: bytes, bank: str = "sha256") -> bytes:
    """The value a PCR holds after extending ``digest`` into ``old``: H(old || digest)."""
    return hashlib.new(bank, old + digest).digest()
