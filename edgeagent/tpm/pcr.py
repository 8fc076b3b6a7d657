"""PCR selections, digests and reads in TPM 2.0 terms (TPML_PCR_SELECTION, TPML_DIGEST_VALUES).

Pure helpers for bank names and selections, plus the chunked read: TPM2_PCR_Read returns at most 8 digests
per call (TPML_DIGEST holds 8), and may return fewer than asked, so reads loop until every PCR is in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMT_HA,
    TPMU_HA,
)

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


def active_banks(assigned: TPML_PCR_SELECTION) -> list[str]:
    """Bank names with at least one PCR allocated (TPM2_GetCapability(TPM_CAP_PCRS))."""
    banks = []
    for sel in assigned:
        if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
            name = HASH_NAMES.get(int(sel.hash))
            if name is not None:
                banks.append(name)
    return banks


def selection(indices: Iterable[int], bank: str) -> TPML_PCR_SELECTION:
    idx = list(indices)
    sel = TPMS_PCR_SELECTION(hash=TPM2_ALG(HASH_ALGS[bank]), sizeofSelect=PCR_SELECT_SIZE)
    bits = select_bits(idx)
    for i, b in enumerate(bits):
        sel.pcrSelect[i] = b
    return TPML_PCR_SELECTION([sel])


def pcr_handle(index: int) -> ESYS_TR:
    return ESYS_TR.parse(f"pcr{index}")


def digest_values(digests: Mapping[str, bytes], banks: list[str]) -> TPML_DIGEST_VALUES:
    """TPML_DIGEST_VALUES for an extend; every active bank needs a digest of its size (else TpmError)."""
    missing = [b for b in banks if b not in digests]
    if missing:
        raise TpmError(f"PCR extend needs a digest for every active bank; missing {', '.join(missing)}")
    values = []
    for bank, digest in digests.items():
        if bank not in banks:
            raise TpmError(f"PCR bank {bank!r} is not active on this TPM (active: {', '.join(banks)})")
        if len(digest) != DIGEST_SIZES[bank]:
            raise TpmError(f"{bank} digest must be {DIGEST_SIZES[bank]} bytes, got {len(digest)}")
        values.append(TPMT_HA(hashAlg=TPM2_ALG(HASH_ALGS[bank]), digest=TPMU_HA(**{bank: digest})))
    return TPML_DIGEST_VALUES(values)


def read(ectx: ESAPI, indices: list[int], bank: str) -> dict[int, bytes]:
    """Reads ``indices`` of ``bank``; loops because one TPM2_PCR_Read returns at most 8 digests."""
    out: dict[int, bytes] = {}
    todo = list(indices)
    while todo:
        _, sel, digests = ectx.pcr_read(selection(todo[:8], bank))
        got = [i for s in sel for i in selected(bytes(s.pcrSelect)[: s.sizeofSelect])]
        if not got:
            raise TpmError(f"TPM returned no {bank} PCR values for PCRs {todo[:8]}")
        for i, d in zip(got, digests, strict=False):
            out[i] = bytes(d)
        todo = [i for i in todo if i not in out]
    return out


def extend_digest(old: bytes, digest: bytes, bank: str = "sha256") -> bytes:
    """The value a PCR holds after extending ``digest`` into ``old``: H(old || digest)."""
    return hashlib.new(bank, old + digest).digest()
