"""What needs tpm2-pytss besides the connection and the identity: PCR selections and digests as ESAPI
structures, the chunked PCR read, and taking a quote.

TPM2_PCR_Read returns at most 8 digests per call (TPML_DIGEST holds 8), and may return fewer than asked, so
reads loop until every PCR is in. A quote does not carry the PCR values, so they are read next to it; if a
PCR moved in between, the digest no longer matches and the quote is taken again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2B_DATA,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMU_HA,
)

from edgeagent.errors import TpmError
from edgeagent.tpm import attest, pcr
from edgeagent.tpm.quote import MAX_NONCE, Quote, pcr_digest

if TYPE_CHECKING:
    from edgeagent.tpm.connection import Tpm
    from edgeagent.tpm.identity import Identity

_RETRIES = 3


def active_banks(assigned: TPML_PCR_SELECTION) -> list[str]:
    """Bank names with at least one PCR allocated (TPM2_GetCapability(TPM_CAP_PCRS))."""
    banks = []
    for sel in assigned:
        if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
            name = pcr.HASH_NAMES.get(int(sel.hash))
            if name is not None:
                banks.append(name)
    return banks


def selection(indices: Iterable[int], bank: str) -> TPML_PCR_SELECTION:
    idx = list(indices)
    sel = TPMS_PCR_SELECTION(hash=TPM2_ALG(pcr.HASH_ALGS[bank]), sizeofSelect=pcr.PCR_SELECT_SIZE)
    bits = pcr.select_bits(idx)
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
        if len(digest) != pcr.DIGEST_SIZES[bank]:
            raise TpmError(f"{bank} digest must be {pcr.DIGEST_SIZES[bank]} bytes, got {len(digest)}")
        values.append(TPMT_HA(hashAlg=TPM2_ALG(pcr.HASH_ALGS[bank]), digest=TPMU_HA(**{bank: digest})))
    return TPML_DIGEST_VALUES(values)


def read(ectx: ESAPI, indices: list[int], bank: str) -> dict[int, bytes]:
    """Reads ``indices`` of ``bank``; loops because one TPM2_PCR_Read returns at most 8 digests."""
    out: dict[int, bytes] = {}
    todo = list(indices)
    while todo:
        _, sel, digests = ectx.pcr_read(selection(todo[:8], bank))
        got = [i for s in sel for i in pcr.selected(bytes(s.pcrSelect)[: s.sizeofSelect])]
        if not got:
            raise TpmError(f"TPM returned no {bank} PCR values for PCRs {todo[:8]}")
        for i, d in zip(got, digests, strict=False):
            out[i] = bytes(d)
        todo = [i for i in todo if i not in out]
    return out


def take_quote(tpm: Tpm, identity: Identity, nonce: bytes, pcrs: list[int], bank: str = "sha256") -> Quote:
    """Quotes ``pcrs`` with ``identity``'s AK; re-reads and re-quotes if a PCR moved in between."""
    if not 0 < len(nonce) <= MAX_NONCE:
        raise TpmError(f"quote nonce must be 1-{MAX_NONCE} bytes, got {len(nonce)}")
    indices = pcr.check_indices(pcrs)
    if not indices:
        raise TpmError("a quote needs at least one PCR")
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)  # the AK's own scheme (RSASSA or ECDSA with SHA-256)
    pcr_selection = selection(indices, bank)
    for _ in range(_RETRIES):
        with tpm.locked(f"quote over {bank} PCRs {','.join(map(str, indices))}") as ectx:
            values = read(ectx, indices, bank)
            quoted, signature = ectx.quote(identity.ak_handle, pcr_selection, TPM2B_DATA(nonce), scheme)
        att, sig = bytes(quoted), bytes(signature.marshal())
        if pcr_digest(values, attest.parse_signature(sig).hash_alg) == attest.parse_attest(att).pcr_digest:
            return Quote(att, sig, values, bank)
    raise TpmError(f"PCRs kept changing while quoting ({_RETRIES} attempts)")


def certify_self(tpm: Tpm, identity: Identity, qualifying_data: bytes) -> tuple[bytes, bytes]:
    """TPM2_Certify of the AK by the AK itself over ``qualifying_data``: (TPMS_ATTEST, TPMT_SIGNATURE).

    Keylime's push-mode proof of possession: the verifier checks the signature with the registered AK, the
    certified name against that AK and the qualifying data against its session challenge.
    """
    if not 0 < len(qualifying_data) <= MAX_NONCE:
        raise TpmError(f"certify qualifying data must be 1-{MAX_NONCE} bytes, got {len(qualifying_data)}")
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)  # the AK's own scheme
    with tpm.locked("certify of the AK") as ectx:
        info, signature = ectx.certify(identity.ak_handle, identity.ak_handle, TPM2B_DATA(qualifying_data),
                                       scheme, session1=ESYS_TR.PASSWORD, session2=ESYS_TR.PASSWORD)
    return bytes(info), bytes(signature.marshal())
