"""Quote parsing and verification without a TPM: structures built and signed in Python, then tampered with."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import QuoteVerificationError
from edgeagent.tpm import attest
from edgeagent.tpm.quote import Quote, parse_pcrblob, pcrblob, verify_quote

NONCE = b"abcdefghij0123456789"
AK_ATTRS = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18)  # fixedTPM..restricted, sign
SHA256 = 0x000B


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def rsa_public(key: rsa.RSAPrivateKey, *, attrs: int = AK_ATTRS) -> bytes:
    n = key.public_key().public_numbers().n.to_bytes(256, "big")
    area = struct.pack(">HHI", attest.TPM_ALG_RSA, SHA256, attrs) + tpm2b(b"")
    area += struct.pack(">H", attest.TPM_ALG_NULL)  # symmetric
    area += struct.pack(">HH", attest.TPM_ALG_RSASSA, SHA256) + struct.pack(">HI", 2048, 0) + tpm2b(n)
    return tpm2b(area)


def ecc_public(key: ec.EllipticCurvePrivateKey, *, attrs: int = AK_ATTRS) -> bytes:
    nums = key.public_key().public_numbers()
    area = struct.pack(">HHI", attest.TPM_ALG_ECC, SHA256, attrs) + tpm2b(b"")
    area += struct.pack(">H", attest.TPM_ALG_NULL)
    area += struct.pack(">HH", attest.TPM_ALG_ECDSA, SHA256) + struct.pack(">HH", 0x0003, attest.TPM_ALG_NULL)
    area += tpm2b(nums.x.to_bytes(32, "big")) + tpm2b(nums.y.to_bytes(32, "big"))
    return tpm2b(area)


def tpms_attest(nonce: bytes, pcrs: dict[int, bytes], *, magic: int = attest.TPM_GENERATED_VALUE,
                st_type: int = attest.TPM_ST_ATTEST_QUOTE, bank: int = SHA256) -> bytes:
    bits = bytearray(3)
    for i in pcrs:
        bits[i // 8] |= 1 << (i % 8)
    digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    out = struct.pack(">IH", magic, st_type) + tpm2b(b"\x00\x0b" + bytes(32)) + tpm2b(nonce)
    out += struct.pack(">QIIB", 1234, 1, 0, 1) + struct.pack(">Q", 0x2000)
    out += struct.pack(">IHB", 1, bank, 3) + bytes(bits) + tpm2b(digest)
    return out


def sign_rsa(key: rsa.RSAPrivateKey, msg: bytes, alg: int = attest.TPM_ALG_RSASSA) -> bytes:
    sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    return struct.pack(">HH", alg, SHA256) + tpm2b(sig)


def sign_ecc(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return struct.pack(">HH", attest.TPM_ALG_ECDSA, SHA256) + tpm2b(r.to_bytes(32, "big")) + tpm2b(
        s.to_bytes(32, "big"))


PCRS = {i: hashlib.sha256(bytes([i])).digest() for i in (0, 1, 7, 16, 23)}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ecc_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(params=["rsa", "ecc"])
def signed(request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey,
           ecc_key: ec.EllipticCurvePrivateKey) -> tuple[Quote, bytes]:
    att = tpms_attest(NONCE, PCRS)
    if request.param == "rsa":
        return Quote(att, sign_rsa(rsa_key, att), dict(PCRS)), rsa_public(rsa_key)
    return Quote(att, sign_ecc(ecc_key, att), dict(PCRS)), ecc_public(ecc_key)


def test_a_genuine_quote_verifies(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    verify_quote(quote, ak, NONCE)
    parsed = attest.parse_attest(quote.attest)
    assert parsed.extra_data == NONCE
    assert parsed.pcr_select == (attest.PcrSelection(SHA256, (0, 1, 7, 16, 23)),)


def test_wrong_nonce_fails(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    with pytest.raises(QuoteVerificationError, match="nonce"):
        verify_quote(quote, ak, b"abcdefghij0123456788")


def test_tampered_pcr_value_fails(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    values = dict(quote.pcr_values)
    values[16] = hashlib.sha256(b"evil").digest()
    with pytest.raises(QuoteVerificationError, match="PCR digest"):
        verify_quote(dataclasses.replace(quote, pcr_values=values), ak, NONCE)


def test_missing_pcr_value_fails(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    values = {i: v for i, v in quote.pcr_values.items() if i != 23}
    with pytest.raises(QuoteVerificationError, match="covers PCRs"):
        verify_quote(dataclasses.replace(quote, pcr_values=values), ak, NONCE)


@pytest.mark.parametrize("where", [-1, 10, 60])
def test_tampered_signature_fails(signed: tuple[Quote, bytes], where: int) -> None:
    quote, ak = signed
    sig = bytearray(quote.signature)
    sig[where] ^= 0x01
    with pytest.raises(QuoteVerificationError, match="signature"):
        verify_quote(dataclasses.replace(quote, signature=bytes(sig)), ak, NONCE)


def test_tampered_attest_fails_the_signature(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    att = bytearray(quote.attest)
    att[30] ^= 0x01  # inside clockInfo: the structure still parses, the signature no longer matches
    with pytest.raises(QuoteVerificationError, match="signature does not verify"):
        verify_quote(dataclasses.replace(quote, attest=bytes(att)), ak, NONCE)


def test_quote_by_another_key_fails(signed: tuple[Quote, bytes]) -> None:
    quote, ak = signed
    other = rsa_public(rsa.generate_private_key(65537, 2048)) if ak[3] == 0x01 else ecc_public(
        ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(QuoteVerificationError):
        verify_quote(quote, other, NONCE)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"magic": 0xFF544348}, "magic"),
    ({"st_type": 0x8017}, "type"),
    ({"bank": 0x0004}, "sha256 bank"),
])
def test_signed_but_wrong_structure_fails(
    rsa_key: rsa.RSAPrivateKey, kwargs: dict[str, int], message: str
) -> None:
    att = tpms_attest(NONCE, PCRS, **kwargs)
    quote = Quote(att, sign_rsa(rsa_key, att), dict(PCRS))
    with pytest.raises(QuoteVerificationError, match=message):
        verify_quote(quote, rsa_public(rsa_key), NONCE)


def test_unrestricted_key_is_not_an_ak(rsa_key: rsa.RSAPrivateKey) -> None:
    att = tpms_attest(NONCE, PCRS)
    quote = Quote(att, sign_rsa(rsa_key, att), dict(PCRS))
    with pytest.raises(QuoteVerificationError, match="restricted signing"):
        verify_quote(quote, rsa_public(rsa_key, attrs=AK_ATTRS & ~(1 << 16)), NONCE)


def test_rsa_ak_must_sign_rsassa(rsa_key: rsa.RSAPrivateKey) -> None:
    att = tpms_attest(NONCE, PCRS)
    quote = Quote(att, sign_rsa(rsa_key, att, alg=attest.TPM_ALG_RSAPSS), dict(PCRS))
    with pytest.raises(QuoteVerificationError, match="RSASSA"):
        verify_quote(quote, rsa_public(rsa_key), NONCE)


@pytest.mark.parametrize("cut", [0, 5, 20, 60])
def test_truncated_structures_fail_cleanly(signed: tuple[Quote, bytes], cut: int) -> None:
    quote, ak = signed
    with pytest.raises(QuoteVerificationError):
        verify_quote(dataclasses.replace(quote, attest=quote.attest[:cut]), ak, NONCE)
    with pytest.raises(QuoteVerificationError):
        verify_quote(dataclasses.replace(quote, signature=quote.signature[:cut]), ak, NONCE)
    with pytest.raises(QuoteVerificationError):
        verify_quote(quote, ak[:cut], NONCE)


def test_object_name_is_namealg_and_hash_of_public_area(rsa_key: rsa.RSAPrivateKey) -> None:
    pub = rsa_public(rsa_key)
    assert attest.object_name(pub) == b"\x00\x0b" + hashlib.sha256(pub[2:]).digest()


# ---------------------------------------------------------------- pcrblob / Keylime string
def test_pcrblob_layout_is_tpm2_tools_in_memory() -> None:
    values = {i: bytes([i]) * 32 for i in range(10)}
    blob = pcrblob("sha256", values)
    # TPML_PCR_SELECTION (4 + 16*8) + list count (4) + 2 TPML_DIGEST (4 + 8*66 each)
    assert len(blob) == 4 + 128 + 4 + 2 * (4 + 8 * 66)
    assert blob[:12] == struct.pack("<IHB", 1, SHA256, 3) + bytes([0xFF, 0x03, 0x00, 0x00, 0x00])
    assert struct.unpack_from("<II", blob, 132) == (2, 8)
    assert parse_pcrblob(blob) == ("sha256", values)


def test_keylime_string_round_trips(signed: tuple[Quote, bytes]) -> None:
    quote, _ = signed
    text = quote.keylime_string()
    assert text.startswith("r") and text.count(":") == 2
    assert Quote.from_keylime_string(text) == quote


@pytest.mark.parametrize("text", ["", "xAAAA:BBBB:CCCC", "r!!!:AA==:AA==", "rAA==:AA==", "rAA==:AA==:AA=="])
def test_malformed_keylime_strings_are_rejected(text: str) -> None:
    with pytest.raises(QuoteVerificationError):
        Quote.from_keylime_string(text)


def test_pcrblob_with_trailing_bytes_is_rejected() -> None:
    with pytest.raises(QuoteVerificationError, match="trailing"):
        parse_pcrblob(pcrblob("sha256", PCRS) + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_structure_errors(data: bytes) -> None:
    for parse in (attest.parse_attest, attest.parse_signature, attest.parse_public):
        with contextlib.suppress(attest.StructureError):
            parse(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=800))
def test_random_pcrblobs_only_raise_quote_errors(data: bytes) -> None:
    with contextlib.suppress(QuoteVerificationError):
        parse_pcrblob(data)
