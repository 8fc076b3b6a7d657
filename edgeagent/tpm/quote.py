"""TPM2_Quote results: verifying a quote in Python, and Keylime's wire format for it (pure: no tpm2-pytss;
taking a quote is `edgeagent.tpm.esys.take_quote`).

A quote is TPMS_ATTEST (magic, type ATTEST_QUOTE, the nonce as extraData, the PCR selection and the digest of
the selected PCR values) signed by the AK. The TPM does not return the PCR values, so they are read next to
the quote; if a PCR moved in between, the digest no longer matches and the quote is taken again.

Keylime's format is ``"r" + b64(TPMS_ATTEST) + ":" + b64(TPMT_SIGNATURE) + ":" + b64(pcrblob)`` where pcrblob
is tpm2-tools' in-memory (little-endian, padded) dump of the TPML_PCR_SELECTION and the TPML_DIGESTs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from edgeagent.errors import QuoteVerificationError
from edgeagent.tpm import attest, pcr

# TPM2B_DATA holds at most a TPMT_HA; the TPM rejects qualifying data longer than its largest digest.
MAX_NONCE = 64
# tpm2-tools' pcrblob: TPML_PCR_SELECTION is count + TPMS_PCR_SELECTION[HASH_COUNT=16], each 8 bytes in memory
# (hash u16, sizeofSelect u8, pcrSelect[4], 1 byte padding); TPML_DIGEST is count + TPM2B_DIGEST[8], each
# u16 size + 64 bytes (sizeof(TPMU_HA)).
_HASH_COUNT = 16
_DIGESTS_PER_LIST = 8
_TPMU_HA_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Quote:
    """A quote with the PCR values it covers (bank ``bank``)."""

    attest: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcr_values: dict[int, bytes]
    bank: str = "sha256"

    def pcrblob(self) -> bytes:
        """The PCR values in tpm2-tools' ``tpm2_quote -o`` layout, which Keylime's verifier parses."""
        return pcrblob(self.bank, self.pcr_values)

    def keylime_string(self) -> str:
        """Keylime's quote wire format: "r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64 pcrblob>"."""
        parts = (self.attest, self.signature, self.pcrblob())
        return "r" + ":".join(base64.b64encode(p).decode("ascii") for p in parts)

    @classmethod
    def from_keylime_string(cls, text: str) -> Quote:
        """Parses Keylime's wire format back; raises QuoteVerificationError when it is malformed."""
        if not text.startswith("r") or text.count(":") != 2:
            raise QuoteVerificationError("not a Keylime TPM quote string (want 'r<attest>:<sig>:<pcrblob>')")
        try:
            att, sig, blob = (base64.b64decode(p, validate=True) for p in text[1:].split(":"))
        except ValueError:
            raise QuoteVerificationError("Keylime quote string: bad base64") from None
        bank, values = parse_pcrblob(blob)
        return cls(att, sig, values, bank)


# ---------------------------------------------------------------- pcrblob
def pcrblob(bank: str, pcr_values: dict[int, bytes]) -> bytes:
    indices = sorted(pcr_values)
    out = bytearray(struct.pack("<I", 1))
    out += struct.pack("<HB", pcr.HASH_ALGS[bank], pcr.PCR_SELECT_SIZE)
    out += pcr.select_bits(indices) + b"\x00\x00"  # pcrSelect[4] (PCR_SELECT_MAX) + alignment padding
    out += bytes(8 * (_HASH_COUNT - 1))
    chunks = [indices[i : i + _DIGESTS_PER_LIST] for i in range(0, len(indices), _DIGESTS_PER_LIST)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for j in range(_DIGESTS_PER_LIST):
            value = pcr_values[chunk[j]] if j < len(chunk) else b""
            out += struct.pack("<H", len(value)) + value + bytes(_TPMU_HA_SIZE - len(value))
    return bytes(out)


def parse_pcrblob(blob: bytes) -> tuple[str, dict[int, bytes]]:
    """The bank and PCR values of a single-bank pcrblob; raises QuoteVerificationError if malformed."""
    try:
        (count,) = struct.unpack_from("<I", blob, 0)
        selections = [struct.unpack_from("<HB3s", blob, 4 + 8 * i) for i in range(_HASH_COUNT)]
        off = 4 + 8 * _HASH_COUNT
        (lists,) = struct.unpack_from("<I", blob, off)
        off += 4
        values: list[bytes] = []
        for _ in range(lists):
            (n,) = struct.unpack_from("<I", blob, off)
            off += 4
            for j in range(_DIGESTS_PER_LIST):
                (size,) = struct.unpack_from("<H", blob, off)
                if size > _TPMU_HA_SIZE or (j < n) != (size > 0):
                    raise QuoteVerificationError("pcrblob: bad digest size")
                values.append(blob[off + 2 : off + 2 + size])
                off += 2 + _TPMU_HA_SIZE
    except struct.error:
        raise QuoteVerificationError("pcrblob truncated") from None
    if off != len(blob):
        raise QuoteVerificationError(f"pcrblob has {len(blob) - off} trailing bytes")
    if count != 1:
        raise QuoteVerificationError(f"pcrblob selects {count} banks; only single-bank quotes are supported")
    alg, size, bits = selections[0]
    bank = pcr.HASH_NAMES.get(alg)
    if bank is None or size != pcr.PCR_SELECT_SIZE:
        raise QuoteVerificationError(f"pcrblob: unsupported selection (hash 0x{alg:04x}, size {size})")
    indices = pcr.selected(bits)
    values = [v for v in values if v]
    if len(indices) != len(values):
        raise QuoteVerificationError(f"pcrblob selects {len(indices)} PCRs but holds {len(values)} values")
    return bank, dict(zip(indices, values, strict=True))


def pcr_digest(values: dict[int, bytes], hash_id: int) -> bytes:
    """The quote's pcrDigest: the PCR values in index order, hashed with the signing scheme's hash."""
    name = attest.HASH_BY_ID.get(hash_id)
    if name is None:
        raise QuoteVerificationError(f"unsupported signature hash 0x{hash_id:04x}")
    return hashlib.new(name, b"".join(values[i] for i in sorted(values))).digest()


# ---------------------------------------------------------------- verification
def verify_quote(quote: Quote, ak_public: bytes, nonce: bytes) -> None:
    """Checks a quote as a verifier would: AK is a restricted signing key, the signature over TPMS_ATTEST, the
    magic, the type, the nonce, and the PCR digest recomputed from ``quote.pcr_values``.

    Raises QuoteVerificationError naming the first check that fails.
    """
    try:
        ak = attest.parse_public(ak_public)
    except attest.StructureError as e:
        raise QuoteVerificationError(f"AK public key: {e}") from None
    if not ak.is_restricted_signing:
        raise QuoteVerificationError("the AK is not a restricted signing key")
    try:
        sig = attest.parse_signature(quote.signature)
    except attest.StructureError as e:
        raise QuoteVerificationError(str(e)) from None
    verify_signature(ak, sig, quote.attest)
    try:
        parsed = attest.parse_attest(quote.attest)
    except attest.StructureError as e:
        raise QuoteVerificationError(str(e)) from None
    if parsed.magic != attest.TPM_GENERATED_VALUE:
        raise QuoteVerificationError(f"TPMS_ATTEST magic is 0x{parsed.magic:08x}, not TPM_GENERATED_VALUE")
    if parsed.type != attest.TPM_ST_ATTEST_QUOTE:
        raise QuoteVerificationError(f"TPMS_ATTEST type is 0x{parsed.type:04x}, not TPM_ST_ATTEST_QUOTE")
    if not hmac.compare_digest(parsed.extra_data, nonce):
        raise QuoteVerificationError("the quote's nonce (extraData) does not match")
    want = pcr.HASH_ALGS.get(quote.bank)
    if len(parsed.pcr_select) != 1 or parsed.pcr_select[0].hash != want:
        raise QuoteVerificationError(f"the quote does not select exactly the {quote.bank} bank")
    if list(parsed.pcr_select[0].pcrs) != sorted(quote.pcr_values):
        raise QuoteVerificationError(
            f"the quote covers PCRs {list(parsed.pcr_select[0].pcrs)}, "
            f"the values given are for {sorted(quote.pcr_values)}"
        )
    if not hmac.compare_digest(pcr_digest(quote.pcr_values, sig.hash_alg), parsed.pcr_digest):
        raise QuoteVerificationError("the PCR values do not match the quote's PCR digest")


def verify_signature(ak: attest.Public, sig: attest.Signature, message: bytes) -> None:
    """``message`` (a TPMS_ATTEST) signed by the AK ``ak`` (RSASSA or ECDSA); QuoteVerificationError."""
    if sig.hash_alg not in attest.HASH_BY_ID or attest.HASH_BY_ID[sig.hash_alg] == "sha1":
        raise QuoteVerificationError(f"unsupported signature hash 0x{sig.hash_alg:04x}")
    algorithm = attest.crypto_hash(sig.hash_alg)
    try:
        if isinstance(ak.key, rsa.RSAPublicKey):
            if sig.sig_alg != attest.TPM_ALG_RSASSA:
                raise QuoteVerificationError(f"an RSA AK must sign RSASSA, got sigAlg 0x{sig.sig_alg:04x}")
            ak.key.verify(sig.sig, message, padding.PKCS1v15(), algorithm)
        else:
            if sig.sig_alg != attest.TPM_ALG_ECDSA:
                raise QuoteVerificationError(f"an ECC AK must sign ECDSA, got sigAlg 0x{sig.sig_alg:04x}")
            der = utils.encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            ak.key.verify(der, message, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise QuoteVerificationError("the quote's signature does not verify with the AK") from None
