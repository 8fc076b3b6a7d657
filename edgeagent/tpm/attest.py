"""TPM 2.0 structures a verifier reads (TPM 2.0 Library Part 2 names and field order), in pure Python.

Verification needs no TSS and no TPM: TPMS_ATTEST, TPMT_SIGNATURE and TPM2B_PUBLIC are parsed here from
their canonical big-endian marshalling, and the AK's public key becomes a `cryptography` key. A truncated or
malformed structure raises `StructureError` (a ValueError) naming the field; callers turn it into their
project error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ST_ATTEST_CERTIFY = 0x8017

TPM_ALG_RSA = 0x0001
TPM_ALG_AES = 0x0006
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECDAA = 0x001A
TPM_ALG_ECC = 0x0023

TPMA_OBJECT_FIXEDTPM = 1 << 1
TPMA_OBJECT_RESTRICTED = 1 << 16
TPMA_OBJECT_SIGN_ENCRYPT = 1 << 18

HASH_BY_ID: dict[int, str] = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
CURVES: dict[int, ec.EllipticCurve] = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(), 0x0005: ec.SECP521R1()}


class StructureError(ValueError):
    """A TPM structure is truncated or malformed."""


class _Reader:
    """Big-endian reader over a marshalled structure; every short read names the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.off = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.off + n > len(self.data):
            raise StructureError(f"{self.what} truncated in {field}")
        out = self.data[self.off : self.off + n]
        self.off += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int(struct.unpack(">H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack(">I", self.take(4, field))[0])

    def u64(self, field: str) -> int:
        return int(struct.unpack(">Q", self.take(8, field))[0])

    def tpm2b(self, field: str) -> bytes:
        return self.take(self.u16(field + ".size"), field)

    def end(self) -> None:
        if self.off != len(self.data):
            raise StructureError(f"{self.what} has {len(self.data) - self.off} trailing bytes")


@dataclasses.dataclass(frozen=True)
class PcrSelection:
    """TPMS_PCR_SELECTION: a bank (hash algorithm id) and the PCRs selected in it."""

    hash: int
    pcrs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclasses.dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST with TPMS_QUOTE_INFO as ``attested`` (only quotes are parsed in full)."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclasses.dataclass(frozen=True)
class Signature:
    """TPMT_SIGNATURE for RSASSA/RSAPSS (``sig``) and ECDSA (``r``, ``s``)."""

    sig_alg: int
    hash_alg: int
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""


@dataclasses.dataclass(frozen=True)
class Public:
    """TPMT_PUBLIC reduced to what verification needs."""

    type: int
    name_alg: int
    object_attributes: int
    scheme: int
    scheme_hash: int
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    sym_alg: int = TPM_ALG_NULL
    """parameters.symmetric of a storage key (an EK: AES-128-CFB); TPM_ALG_NULL for signing keys."""
    sym_bits: int = 0

    @property
    def is_restricted_signing(self) -> bool:
        want = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM
        return self.object_attributes & want == want


def parse_pcr_selection(r: _Reader) -> tuple[PcrSelection, ...]:
    count = r.u32("pcrSelect.count")
    if count > 16:
        raise StructureError(f"{r.what}: implausible pcrSelect.count {count}")
    out = []
    for i in range(count):
        alg = r.u16(f"pcrSelect[{i}].hash")
        bitmap = r.take(r.u8(f"pcrSelect[{i}].sizeofSelect"), f"pcrSelect[{i}].pcrSelect")
        pcrs = tuple(j * 8 + b for j, byte in enumerate(bitmap) for b in range(8) if byte & (1 << b))
        out.append(PcrSelection(alg, pcrs))
    return tuple(out)


def parse_attest(data: bytes) -> Attest:
    """TPMS_ATTEST of a quote (the TPM2B_ATTEST's buffer). Raises StructureError."""
    r = _Reader(data, "TPMS_ATTEST")
    magic = r.u32("magic")
    st = r.u16("type")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock = ClockInfo(r.u64("clockInfo.clock"), r.u32("clockInfo.resetCount"),
                      r.u32("clockInfo.restartCount"), bool(r.u8("clockInfo.safe")))
    fw = r.u64("firmwareVersion")
    if st != TPM_ST_ATTEST_QUOTE:
        return Attest(magic, st, signer, extra, clock, fw, (), b"")
    sel = parse_pcr_selection(r)
    digest = r.tpm2b("pcrDigest")
    r.end()
    return Attest(magic, st, signer, extra, clock, fw, sel, digest)


def parse_signature(data: bytes) -> Signature:
    """TPMT_SIGNATURE (RSASSA, RSAPSS, ECDSA). Raises StructureError."""
    r = _Reader(data, "TPMT_SIGNATURE")
    alg = r.u16("sigAlg")
    if alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
        out = Signature(alg, r.u16("signature.hash"), sig=r.tpm2b("signature.sig"))
    elif alg == TPM_ALG_ECDSA:
        out = Signature(alg, r.u16("signature.hash"), r=r.tpm2b("signature.signatureR"),
                        s=r.tpm2b("signature.signatureS"))
    else:
        raise StructureError(f"TPMT_SIGNATURE: unsupported sigAlg 0x{alg:04x}")
    r.end()
    return out


def _scheme(r: _Reader, what: str) -> tuple[int, int]:
    scheme = r.u16(f"{what}.scheme")
    if scheme == TPM_ALG_NULL:
        return scheme, TPM_ALG_NULL
    hash_alg = r.u16(f"{what}.details.hashAlg")
    if scheme == TPM_ALG_ECDAA:
        r.u16(f"{what}.details.count")
    return scheme, hash_alg


def parse_public(data: bytes) -> Public:
    """TPM2B_PUBLIC of an RSA or ECC key. Raises StructureError."""
    outer = _Reader(data, "TPM2B_PUBLIC")
    area = outer.tpm2b("publicArea")
    outer.end()
    r = _Reader(area, "TPMT_PUBLIC")
    typ = r.u16("type")
    name_alg = r.u16("nameAlg")
    attrs = r.u32("objectAttributes")
    r.tpm2b("authPolicy")
    sym_alg, sym_bits = r.u16("parameters.symmetric.algorithm"), 0
    if sym_alg != TPM_ALG_NULL:
        sym_bits = r.u16("parameters.symmetric.keyBits")
        r.u16("parameters.symmetric.mode")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if typ == TPM_ALG_RSA:
        scheme, scheme_hash = _scheme(r, "parameters.scheme")
        r.u16("parameters.keyBits")
        exponent = r.u32("parameters.exponent") or 65537
        modulus = r.tpm2b("unique.rsa")
        try:
            key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        except ValueError as e:
            raise StructureError(f"TPMT_PUBLIC: bad RSA key: {e}") from None
    elif typ == TPM_ALG_ECC:
        scheme, scheme_hash = _scheme(r, "parameters.scheme")
        curve_id = r.u16("parameters.curveID")
        if r.u16("parameters.kdf.scheme") != TPM_ALG_NULL:
            r.u16("parameters.kdf.details.hashAlg")
        x, y = r.tpm2b("unique.ecc.x"), r.tpm2b("unique.ecc.y")
        curve = CURVES.get(curve_id)
        if curve is None:
            raise StructureError(f"TPMT_PUBLIC: unsupported curve 0x{curve_id:04x}")
        try:
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                curve).public_key()
        except ValueError as e:
            raise StructureError(f"TPMT_PUBLIC: bad ECC point: {e}") from None
    else:
        raise StructureError(f"TPMT_PUBLIC: unsupported key type 0x{typ:04x}")
    r.end()
    return Public(typ, name_alg, attrs, scheme, scheme_hash, key, sym_alg, sym_bits)


def object_name(public: bytes) -> bytes:
    """The TPM name of an object from its TPM2B_PUBLIC: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
    r = _Reader(public, "TPM2B_PUBLIC")
    area = r.tpm2b("publicArea")
    r.end()
    if len(area) < 4:
        raise StructureError("TPMT_PUBLIC truncated in nameAlg")
    name_alg = int.from_bytes(area[2:4], "big")
    if name_alg not in HASH_BY_ID:
        raise StructureError(f"TPMT_PUBLIC: unsupported nameAlg 0x{name_alg:04x}")
    return area[2:4] + hashlib.new(HASH_BY_ID[name_alg], area).digest()


def crypto_hash(hash_id: int) -> hashes.HashAlgorithm:
    return {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
            "sha512": hashes.SHA512()}[HASH_BY_ID[hash_id]]
